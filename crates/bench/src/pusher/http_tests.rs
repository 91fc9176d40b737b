//! The events-API client against small loopback HTTP servers: one that closes after every
//! response (as Sockudo 5.2 does) and one that keeps connections open.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// What the test server saw: the channel of every request in the order requests were read,
/// and how many connections carried them.
#[derive(Default)]
struct Seen {
    channels: Vec<String>,
    connections: usize,
}

/// Serves `POST`s, answering 200 with `connection: close` (and closing) when `close`, else
/// keeping the connection. Returns its address and what it saw.
async fn server(close: bool) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, close, record.clone()));
        }
    });
    (addr, seen)
}

async fn serve(mut stream: TcpStream, close: bool, seen: Arc<Mutex<Seen>>) {
    let mut buf = Vec::new();
    let mut counted = false;
    loop {
        // One request: the head, then Content-Length bytes of body.
        let (head_end, len) = loop {
            if let Some(at) = memmem::find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= at + 4 + len {
                    break (at + 4, len);
                }
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
        buf.drain(..head_end + len);
        let channel = body
            .split("\"channel\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_string();
        {
            let mut seen = seen.lock().expect("seen");
            seen.channels.push(channel);
            if !counted {
                seen.connections += 1;
                counted = true;
            }
        }
        let response: &[u8] = if close {
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}"
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
        };
        if stream.write_all(response).await.is_err() || close {
            return;
        }
    }
}

/// Queues `n` publishes to channels `c0..c<n>`, flushes, and collects `n` statuses.
async fn publish(writer: &mut HttpWriter, reader: &mut HttpReader, n: usize) -> Vec<u16> {
    for i in 0..n {
        writer.queue_event(&format!("c{i}"), "message", br#"{"t":1}"#, None);
    }
    writer.flush().await.expect("flush");
    let mut statuses = Vec::new();
    while statuses.len() < n {
        let batch = reader.next_batch().await.expect("batch");
        assert!(!batch.is_empty(), "lanes ended early");
        statuses.extend(batch);
    }
    statuses
}

fn channels(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("c{i}")).collect()
}

#[tokio::test]
async fn one_connection_per_request_when_the_server_closes_and_order_is_kept() {
    let (addr, seen) = server(true).await;
    let (mut reader, mut writer) = http_connect(addr).await.expect("connect");
    let statuses = publish(&mut writer, &mut reader, 50).await;
    assert_eq!(statuses, vec![200; 50]);
    let seen = seen.lock().expect("seen");
    assert_eq!(seen.channels, channels(50), "one lane sends in queue order");
    assert_eq!(seen.connections, 50, "each connection carried one request");
    assert_eq!(reader.connect_failures(), 0);
}

#[tokio::test]
async fn keeps_one_connection_when_the_server_keeps_it() {
    let (addr, seen) = server(false).await;
    let (mut reader, mut writer) = http_connect(addr).await.expect("connect");
    let statuses = publish(&mut writer, &mut reader, 50).await;
    assert_eq!(statuses, vec![200; 50]);
    let seen = seen.lock().expect("seen");
    assert_eq!(seen.channels, channels(50));
    assert_eq!(seen.connections, 1);
    assert_eq!(
        reader.connections(),
        1,
        "no spare is opened for a keep-alive server"
    );
}

#[tokio::test]
async fn lanes_answer_everything() {
    let (addr, seen) = server(true).await;
    let (mut reader, mut writer) = http_connect_lanes(addr, 4).await.expect("connect");
    let statuses = publish(&mut writer, &mut reader, 200).await;
    assert_eq!(statuses, vec![200; 200]);
    let mut got = seen.lock().expect("seen").channels.clone();
    got.sort();
    let mut want = channels(200);
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn counts_connect_failures_and_reports_unsent_requests() {
    // A server that answers one request, then is gone: the listener closes with it.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        serve(stream, true, Arc::new(Mutex::new(Seen::default()))).await;
    });
    let (mut reader, mut writer) = http_connect(addr).await.expect("connect");
    let first = publish(&mut writer, &mut reader, 1).await;
    assert_eq!(first, vec![200]);
    accepted.await.expect("server task");
    let rest = publish(&mut writer, &mut reader, 2).await;
    assert_eq!(rest, vec![NOT_SENT; 2]);
    assert!(
        reader.connect_failures() >= u64::from(CONNECT_ATTEMPTS),
        "{} connect failures",
        reader.connect_failures()
    );
}

#[tokio::test]
async fn next_batch_ends_when_the_writer_is_dropped() {
    let (addr, _seen) = server(true).await;
    let (mut reader, writer) = http_connect(addr).await.expect("connect");
    drop(writer);
    assert!(reader.next_batch().await.expect("batch").is_empty());
}

#[test]
fn parses_responses() {
    let two = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\nHTTP/1.1 200";
    let first = parse_response(two).expect("first response");
    assert_eq!(
        first,
        Response {
            status: 200,
            len: 40,
            close: false
        }
    );
    let second = parse_response(&two[first.len..]).expect("second response");
    assert_eq!((second.status, second.close), (401, true));
    assert!(parse_response(&two[first.len + second.len..]).is_none());
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
    assert_eq!(
        parse_response(chunked),
        Some(Response {
            status: 200,
            len: chunked.len(),
            close: false
        })
    );
    let old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
    assert!(parse_response(old).expect("1.0").close);
    let old_kept = b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n";
    assert!(!parse_response(old_kept).expect("1.0 keep-alive").close);
}
