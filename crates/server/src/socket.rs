//! A plain TCP socket shared by a session's WebSocket (tungstenite, which reads and writes the
//! welcome and control frames) and the direct writers of data frames: the fan-out, which writes
//! a frame to an idle connection's socket itself instead of waking its task, and the session's
//! batches, written as one vectored write of shared bytes instead of a copy per receiver.
//!
//! A server frame is unmasked, so its bytes are a 2–10 byte header plus the payload every
//! receiver shares: a direct write is one `writev` of the two, nothing copied.
//!
//! The one rule: the socket carries whole frames, one after another. Bytes of a frame that a
//! write left half-done go before anything else:
//! - a direct write's unwritten bytes wait in the gate's `rest`, and every writer (the
//!   session's batch, tungstenite through [`SharedTcp`]) finishes them first;
//! - when a tungstenite write is left half-done (`tungstenite_mid`), no direct write starts
//!   until tungstenite has finished its buffer (it writes its whole buffer in each call, so a
//!   complete write means a frame boundary).
//!
//! TLS connections keep tungstenite's own path: their bytes are not shareable.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use axum::extract::ws::Utf8Bytes;
use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::frames_out::FramesOut;
use crate::sync::lock;

/// Pieces handed to one `writev` (a batch is at most 64 frames: 128 pieces).
const MAX_SLICES: usize = 128;

/// The session's socket as seen by direct writers. Cloning shares it.
#[derive(Clone)]
pub struct DirectSocket {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DirectSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectSocket")
    }
}

struct Shared {
    tcp: TcpStream,
    gate: Mutex<Gate>,
    /// Counts the frames written directly, as the session counts its own.
    frames_out: FramesOut,
}

#[derive(Default)]
struct Gate {
    /// Bytes that must reach the socket before anything else: the unwritten part of direct
    /// writes (a frame cut by a short write, and the session's batch behind it).
    rest: VecDeque<Bytes>,
    /// Tungstenite's last write was short: its buffer holds the rest of a frame.
    tungstenite_mid: bool,
}

/// What a non-blocking direct write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryWrite {
    /// The whole frame is on the socket.
    Written,
    /// Part of it is; the rest waits in the gate and the session must be woken to finish it.
    Started,
    /// Nothing was written (the socket is full, or another write is half-done): queue it.
    NotNow,
}

/// The header of an unmasked, final text frame of `len` payload bytes (RFC 6455 §5.2).
pub fn text_header(len: usize) -> ([u8; 10], usize) {
    let mut header = [0u8; 10];
    header[0] = 0x81;
    if len < 126 {
        header[1] = len as u8;
        (header, 2)
    } else if let Ok(short) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&short.to_be_bytes());
        (header, 4)
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (header, 10)
    }
}

impl DirectSocket {
    /// Wraps an accepted socket: the reader/writer half for hyper and tungstenite, and the
    /// handle for direct writes.
    pub fn new(tcp: TcpStream, frames_out: FramesOut) -> (SharedTcp, DirectSocket) {
        let shared = Arc::new(Shared {
            tcp,
            gate: Mutex::new(Gate::default()),
            frames_out,
        });
        let direct = DirectSocket {
            shared: shared.clone(),
        };
        (SharedTcp { shared }, direct)
    }

    /// Writes `frame` now if the socket takes it without waiting and no other write is
    /// half-done. Never blocks; the caller holds the connection's queue lock, so frames keep
    /// their order.
    pub fn try_write(&self, frame: &Utf8Bytes) -> TryWrite {
        let shared = &*self.shared;
        let mut gate = lock(&shared.gate);
        if gate.tungstenite_mid || !gate.rest.is_empty() {
            return TryWrite::NotNow;
        }
        let (header, header_len) = text_header(frame.len());
        let slices = [
            IoSlice::new(&header[..header_len]),
            IoSlice::new(frame.as_bytes()),
        ];
        let total = header_len + frame.len();
        match shared.tcp.try_write_vectored(&slices) {
            Ok(n) if n >= total => {
                shared.frames_out.count(frame.as_str());
                TryWrite::Written
            }
            Ok(n) if n > 0 => {
                if n < header_len {
                    gate.rest
                        .push_back(Bytes::copy_from_slice(&header[n..header_len]));
                    gate.rest.push_back(Bytes::from(frame.clone()));
                } else {
                    let mut payload = Bytes::from(frame.clone());
                    payload.advance(n - header_len);
                    gate.rest.push_back(payload);
                }
                shared.frames_out.count(frame.as_str());
                TryWrite::Started
            }
            // Nothing written (full socket, or an error the session's next write will meet).
            _ => TryWrite::NotNow,
        }
    }

    /// Tungstenite holds part of a frame: flush the WebSocket before [`Self::write_frames`].
    pub fn tungstenite_mid(&self) -> bool {
        lock(&self.shared.gate).tungstenite_mid
    }

    /// Writes every frame (after any unfinished direct bytes), waiting while the socket is
    /// full. Empty frames are the queue's markers of a direct write that was cut short: they
    /// add nothing. Cancel-safe in the one way that matters: what is not yet written stays in
    /// the gate, so the next writer (the close frame, say) finishes it first.
    pub async fn write_frames(&self, frames: &[Utf8Bytes]) -> io::Result<()> {
        let shared = &*self.shared;
        {
            let mut gate = lock(&shared.gate);
            for frame in frames.iter().filter(|f| !f.is_empty()) {
                let (header, header_len) = text_header(frame.len());
                gate.rest
                    .push_back(Bytes::copy_from_slice(&header[..header_len]));
                gate.rest.push_back(Bytes::from(frame.clone()));
            }
        }
        loop {
            {
                let mut gate = lock(&shared.gate);
                if gate.tungstenite_mid {
                    return Err(io::Error::other("a websocket frame is half-written"));
                }
                if flush_rest(&mut gate, &shared.tcp)? {
                    return Ok(());
                }
            }
            shared.tcp.writable().await?;
        }
    }
}

/// Writes the gate's pending bytes. True once none are left; false when the socket is full.
fn flush_rest(gate: &mut Gate, tcp: &TcpStream) -> io::Result<bool> {
    while !gate.rest.is_empty() {
        let slices: Vec<IoSlice<'_>> = gate
            .rest
            .iter()
            .take(MAX_SLICES)
            .map(|b| IoSlice::new(b))
            .collect();
        let written = match tcp.try_write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        };
        drop(slices);
        consume(&mut gate.rest, written);
    }
    Ok(true)
}

fn consume(rest: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = rest.front_mut() else {
            return;
        };
        if front.len() <= n {
            n -= front.len();
            rest.pop_front();
        } else {
            front.advance(n);
            n = 0;
        }
    }
}

/// The socket as hyper and tungstenite see it: reads as usual; writes go after any unfinished
/// direct bytes, and a short write marks tungstenite as holding part of a frame.
pub struct SharedTcp {
    shared: Arc<Shared>,
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let tcp = &self.shared.tcp;
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            match tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let shared = &*self.shared;
        loop {
            {
                let mut gate = lock(&shared.gate);
                if flush_rest(&mut gate, &shared.tcp)? {
                    match shared.tcp.try_write(buf) {
                        Ok(n) => {
                            // Tungstenite hands over its whole buffer each time: a complete
                            // write leaves it empty, at a frame boundary.
                            gate.tungstenite_mid = n < buf.len();
                            return Poll::Ready(Ok(n));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            }
            ready!(shared.tcp.poll_write_ready(cx))?;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The socket closes when its last handle is dropped (the session's, at its end).
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn headers_take_the_shortest_length_form() {
        assert_eq!(text_header(0).0[..2], [0x81, 0]);
        assert_eq!(text_header(125), ([0x81, 125, 0, 0, 0, 0, 0, 0, 0, 0], 2));
        assert_eq!(text_header(126).0[..4], [0x81, 126, 0, 126]);
        assert_eq!(text_header(65535).0[..4], [0x81, 126, 0xff, 0xff]);
        let (long, n) = text_header(65536);
        assert_eq!(
            (n, &long[..]),
            (10, &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0][..])
        );
    }

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair: the server side as the accept loop wraps it, and the client side.
    async fn pair() -> (SharedTcp, DirectSocket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let frames_out = FramesOut::unregistered();
        let (tcp, direct) = DirectSocket::new(server, frames_out);
        (tcp, direct, client)
    }

    /// Reads unmasked frames until `count` have arrived: (opcode, payload).
    async fn read_frames(client: &mut TcpStream, count: usize) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while frames.len() < count {
            let mut head = [0u8; 2];
            client.read_exact(&mut head).await.unwrap();
            assert_eq!(head[0] & 0x80, 0x80, "final frames only");
            assert_eq!(head[1] & 0x80, 0, "server frames are unmasked");
            let len = match head[1] & 0x7f {
                126 => u64::from(client.read_u16().await.unwrap()),
                127 => client.read_u64().await.unwrap(),
                n => u64::from(n),
            };
            let mut payload = vec![0u8; len as usize];
            client.read_exact(&mut payload).await.unwrap();
            frames.push((head[0] & 0x0f, payload));
        }
        frames
    }

    fn text(payload: &str) -> Utf8Bytes {
        Utf8Bytes::from(payload)
    }

    #[tokio::test]
    async fn an_idle_socket_takes_a_whole_frame_at_once() {
        let (_tcp, direct, mut client) = pair().await;
        assert_eq!(
            direct.try_write(&text("{\"type\":\"message\"}")),
            TryWrite::Written
        );
        let frames = read_frames(&mut client, 1).await;
        assert_eq!(frames, [(1, b"{\"type\":\"message\"}".to_vec())]);
    }

    /// Fills the socket with direct writes until one is cut short, queues a batch and a
    /// control frame behind it, then reads: every frame arrives whole and in order.
    #[tokio::test]
    async fn a_cut_frame_is_finished_before_anything_else() {
        let (mut tcp, direct, mut client) = pair().await;
        let payload = "x".repeat(3000);
        let mut sent = Vec::new();
        let mut cut = false;
        for i in 0..100_000 {
            let frame = text(&format!("{i:08}{payload}"));
            match direct.try_write(&frame) {
                TryWrite::Written => sent.push(frame),
                TryWrite::Started => {
                    sent.push(frame);
                    cut = true;
                    break;
                }
                TryWrite::NotNow => break,
            }
        }
        if !cut {
            // The socket filled exactly at a frame boundary: nothing to prove here.
            return;
        }
        assert_eq!(direct.try_write(&text("late")), TryWrite::NotNow);
        let batch = [text("batch-1"), Utf8Bytes::from(""), text("batch-2")];
        let reader = tokio::spawn(async move {
            let frames = read_frames(&mut client, sent.len() + 3).await;
            (frames, sent)
        });
        direct.write_frames(&batch).await.unwrap();
        // A control frame through tungstenite's side: a ping with an empty payload.
        tcp.write_all(&[0x89, 0x00]).await.unwrap();
        let (frames, sent) = reader.await.unwrap();
        let expected: Vec<(u8, Vec<u8>)> = sent
            .iter()
            .map(|f| (1, f.as_bytes().to_vec()))
            .chain([
                (1, b"batch-1".to_vec()),
                (1, b"batch-2".to_vec()),
                (9, Vec::new()),
            ])
            .collect();
        assert_eq!(frames.len(), expected.len());
        assert!(frames == expected, "frames arrived whole and in order");
    }

    #[test]
    fn consuming_crosses_pieces() {
        let mut rest: VecDeque<Bytes> = [&b"ab"[..], b"cde", b"f"]
            .into_iter()
            .map(Bytes::from_static)
            .collect();
        consume(&mut rest, 3);
        assert_eq!(rest, [&b"de"[..], b"f"]);
        consume(&mut rest, 3);
        assert!(rest.is_empty());
    }
}
