//! A hand-rolled WebSocket client over a plain TCP stream, for what tungstenite refuses to do:
//! invalid UTF-8 in text frames, hand-built fragments, and never answering pings.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpStream;

use crate::ws::RECV_TIMEOUT;

/// A hand-rolled WebSocket client over a plain TCP stream, for what tungstenite refuses to do:
/// invalid UTF-8 in text frames, hand-built fragments, and never answering pings.
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// One frame as read by [`RawWs`].
#[derive(Debug)]
pub enum RawFrame {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// Close code (1005 when the frame had none).
    Close(u16),
}

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xa;

impl RawWs {
    /// Performs the HTTP upgrade for `/v1?{query}` and asserts `101 Switching Protocols`.
    pub async fn connect(addr: SocketAddr, query: &str) -> RawWs {
        let (raw, head) = RawWs::connect_with_headers(addr, query, &[]).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        raw
    }

    /// Writes one masked frame (clients must mask, RFC 6455 §5.3).
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8], fin: bool) {
        use tokio::io::AsyncWriteExt;
        let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
        let len = payload.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else if len <= 0xffff {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(OP_TEXT, text.as_bytes(), true).await;
    }

    async fn fill(&mut self, want: usize, within: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        while self.buf.len() < want {
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout(within, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                Ok(_) => return false,
                Err(_) => panic!("timed out reading a raw frame"),
            }
        }
        true
    }

    /// The next frame, or `None` when the TCP stream ended (EOF or reset).
    pub async fn read_frame_within(&mut self, within: Duration) -> Option<RawFrame> {
        if !self.fill(2, within).await {
            return None;
        }
        let opcode = self.buf[0] & 0x0f;
        assert_eq!(self.buf[1] & 0x80, 0, "server frames must not be masked");
        let (len, header) = match self.buf[1] & 0x7f {
            126 => {
                if !self.fill(4, within).await {
                    return None;
                }
                (
                    usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                    4,
                )
            }
            127 => {
                if !self.fill(10, within).await {
                    return None;
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n => (usize::from(n), 2),
        };
        if !self.fill(header + len, within).await {
            return None;
        }
        let payload: Vec<u8> = self.buf[header..header + len].to_vec();
        self.buf.drain(..header + len);
        Some(match opcode {
            OP_TEXT => RawFrame::Text(String::from_utf8(payload).unwrap()),
            OP_BINARY => RawFrame::Binary(payload),
            OP_PING => RawFrame::Ping(payload),
            OP_PONG => RawFrame::Pong(payload),
            OP_CLOSE if payload.len() >= 2 => {
                RawFrame::Close(u16::from_be_bytes([payload[0], payload[1]]))
            }
            OP_CLOSE => RawFrame::Close(1005),
            other => panic!("unexpected opcode {other}"),
        })
    }

    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        self.read_frame_within(RECV_TIMEOUT).await
    }

    /// The next text frame as JSON (pings are skipped and not answered).
    pub async fn recv_json(&mut self) -> Value {
        loop {
            match self.read_frame().await {
                Some(RawFrame::Text(t)) => return serde_json::from_str(&t).unwrap(),
                Some(RawFrame::Ping(_) | RawFrame::Pong(_)) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Reads until a close frame (its code) or the end of the stream (`None`), skipping text.
    pub async fn recv_close(&mut self) -> Option<u16> {
        loop {
            match self.read_frame().await? {
                RawFrame::Close(code) => return Some(code),
                _ => continue,
            }
        }
    }

    /// Like [`RawWs::connect`] with extra request header lines (e.g. offered extensions); also
    /// returns the response head.
    pub async fn connect_with_headers(
        addr: SocketAddr,
        query: &str,
        extra_headers: &[(&str, &str)],
    ) -> (RawWs, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut request = format!(
            "GET /v1?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n"
        );
        for (name, value) in extra_headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let header_end = loop {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(RECV_TIMEOUT, stream.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "server closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
        let buf = buf.split_off(header_end);
        (RawWs { stream, buf }, head)
    }
}
