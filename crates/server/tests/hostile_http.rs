//! The attacker with a bare TCP socket: half-open request lines, silent sockets, stalled
//! bodies and socket floods from one source cost the node a bounded time and count, others keep
//! connecting meanwhile, and shutdown does not wait for any of them. And `POST /dev/token` does
//! not hand out a connected peer's identity.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use herald_testkit::prelude::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Half a request line: the socket never finishes its headers.
const HALF_REQUEST: &[u8] = b"GET /v1?token=abc";

/// Waits until the server closes `socket` (EOF or reset), or `within` passes.
async fn closed_within(socket: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // The server may answer (e.g. 408) before it closes.
            Ok(Ok(_)) => continue,
        }
    }
}

/// Connects from a chosen loopback source address (127.0.0.0/8 is all loopback).
async fn connect_from(source: [u8; 4], server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(server).await.unwrap()
}

/// `GET /healthz` on its own socket; the status line.
async fn healthz_on(mut socket: TcpStream) -> String {
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: herald\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    response.lines().next().unwrap_or_default().to_string()
}

async fn metrics(server: &TestServer) -> String {
    reqwest::get(format!("http://{}/metrics", server.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

async fn half_open_sockets(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(HALF_REQUEST).await.unwrap();
        sockets.push(s);
    }
    sockets
}

#[tokio::test]
async fn half_open_sockets_are_closed_by_the_header_read_timeout_while_others_connect() {
    let mut config = test_config();
    config.limits.http_header_read_timeout_ms = 1_000;
    let server = TestServer::start_with(config).await;
    let opened = Instant::now();
    let mut sockets = half_open_sockets(server.addr, 300).await;

    // Meanwhile a normal client is served at once, over HTTP and WebSocket.
    let http = reqwest::Client::new();
    for _ in 0..5 {
        let started = Instant::now();
        let resp = http
            .get(format!("http://{}/healthz", server.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }
    let mut alice = server.client("alice").await;
    alice.subscribe("lobby").await;

    // Every half-open socket is closed by the timeout, none before it.
    for socket in &mut sockets {
        assert!(closed_within(socket, Duration::from_secs(5)).await);
    }
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "{:?}",
        opened.elapsed()
    );
    assert!(
        metric(
            &metrics(&server).await,
            "herald_tcp_closed_early_total{reason=\"header_read_timeout\"}"
        ) >= 300
    );
    // The session that upgraded is not subject to the header timeout.
    alice.publish("lobby", json!("still here"), "p1").await;
}

#[tokio::test]
async fn silent_and_kept_alive_idle_sockets_are_closed() {
    let mut config = test_config();
    config.limits.http_header_read_timeout_ms = 500;
    let server = TestServer::start_with(config).await;
    // Connects and says nothing.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // One request, then nothing on the kept-alive socket.
    let mut kept_alive = TcpStream::connect(server.addr).await.unwrap();
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: herald\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = kept_alive.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
    assert!(closed_within(&mut kept_alive, Duration::from_secs(3)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_stalled_request_body_is_closed_by_the_idle_timeout() {
    let mut config = test_config();
    config.limits.http_idle_timeout_secs = 1;
    config.web.dev_tokens = true;
    let server = TestServer::start_with(config).await;
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    // Headers complete (the header timeout is over), body promised but never sent in full.
    socket
        .write_all(
            b"POST /dev/token HTTP/1.1\r\nHost: herald\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"user",
        )
        .await
        .unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut socket, Duration::from_secs(4)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        metric(
            &metrics(&server).await,
            "herald_tcp_closed_early_total{reason=\"idle_timeout\"}"
        ),
        1
    );
}

#[tokio::test]
async fn shutdown_with_200_half_open_sockets_returns_promptly() {
    let mut config = test_config();
    // Neither timeout would rescue a shutdown that waited for these sockets.
    config.limits.http_header_read_timeout_ms = 60_000;
    config.limits.http_idle_timeout_secs = 60;
    config.timing.shutdown_deadline_secs = 20;
    let mut server = TestServer::start_with(config).await;
    let mut sockets = half_open_sockets(server.addr, 200).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut alice = server.client("alice").await;
    alice.subscribe("lobby").await;
    // Let the server accept every socket.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let done = server.begin_shutdown();
    // The session still gets its going_away and 1001, as before.
    let (code, _) = alice.recv_close().await;
    assert_eq!(code, 1001);
    done.await.unwrap().unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
    for socket in sockets.iter_mut().chain([&mut silent]) {
        assert!(closed_within(socket, Duration::from_secs(1)).await);
    }
}

#[tokio::test]
async fn the_per_source_socket_cap_refuses_the_extra_socket_and_spares_other_sources() {
    let mut config = test_config();
    config.limits.max_connections_per_ip = 5;
    // The loopback exemption is off, so 127.0.0.1 and 127.0.0.2 are two ordinary sources.
    config.limits.connect_limit_exempt_loopback = false;
    let server = TestServer::start_with(config).await;

    // Four silent sockets and one WebSocket session fill 127.0.0.1's five places.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from([127, 0, 0, 1], server.addr).await);
    }
    let alice = server.client("alice").await;

    // The sixth is closed at accept without a byte of response.
    let mut extra = connect_from([127, 0, 0, 1], server.addr).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // Another source is served meanwhile.
    let other = connect_from([127, 0, 0, 2], server.addr).await;
    assert_eq!(healthz_on(other).await, "HTTP/1.1 200 OK");

    // Closing the WebSocket session gives its place back.
    alice.close().await;
    let mut served = false;
    for _ in 0..50 {
        let again = connect_from([127, 0, 0, 1], server.addr).await;
        let mut again = again;
        again
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: herald\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        let _ = again.read_to_end(&mut response).await;
        if response.starts_with(b"HTTP/1.1 200") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "the session's place was not given back");
    assert!(
        metric(
            &metrics(&server).await,
            "herald_tcp_closed_early_total{reason=\"per_ip_cap\"}"
        ) >= 1
    );
}

async fn post_token(server: &TestServer, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}/dev/token", server.addr))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn dev_token_does_not_hand_out_a_connected_peers_identity() {
    let mut config = test_config();
    config.web.dev_tokens = true;
    let server = TestServer::start_with(config).await;
    let (status, victim) = post_token(&server, json!({"username": "Victim"})).await;
    assert_eq!(status, 200);
    let victim_id = victim["peerId"].as_str().unwrap().to_string();
    let victim_token = victim["token"].as_str().unwrap().to_string();
    let mut victim_ws = Client::connect(&server.token_url(&victim_token)).await;
    assert_eq!(victim_ws.recv().await["peerId"], victim_id.as_str());

    // The attacker knows the victim's peer id (presence shows it to everyone).
    let (_, own) = post_token(&server, json!({"username": "Mallory"})).await;
    let own_token = own["token"].as_str().unwrap();
    assert_ne!(own["peerId"], victim_id.as_str());
    let forged = sign(
        SK_ID,
        "not_the_secret_0123456789abcdef",
        &claims(&victim_id),
    );
    let other_key = sign(SK2_ID, SK2_SECRET, &claims(&victim_id));
    for attempt in [
        json!({"username": "Mallory", "peerId": victim_id}),
        json!({"username": "Mallory", "peerId": victim_id, "previousToken": own_token}),
        json!({"username": "Mallory", "peerId": victim_id, "previousToken": forged}),
        json!({"username": "Mallory", "peerId": victim_id, "previousToken": other_key}),
        json!({"username": "Mallory", "peerId": victim_id, "previousToken": "x.y.z"}),
    ] {
        let (status, body) = post_token(&server, attempt.clone()).await;
        assert_eq!(status, 403, "{attempt} -> {body}");
        assert_eq!(body["error"], "peer_id_not_proven");
        assert!(body.get("token").is_none());
    }
    // The victim itself keeps its id across a refresh.
    let (status, refreshed) = post_token(
        &server,
        json!({"username": "Victim", "peerId": victim_id, "previousToken": victim_token}),
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    assert_eq!(refreshed["peerId"], victim_id.as_str());
}
