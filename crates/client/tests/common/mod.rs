//! Test support: a real Herald on 127.0.0.1 (restartable on the same port), token minting,
//! fast client options, stream helpers, and a scripted fake server for what Herald never does
//! (stay silent, send garbage).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::result_large_err
)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, Stream, StreamExt};
use herald_client::{ReconnectOptions, SignallingClientOptions};
use herald_protocol::claims::Claims;
use herald_protocol::{jwt, Action};
use herald_server::config::{AppConfig, Config, PublishableKeyConfig, SecretKeyConfig};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub const APP: &str = "app_client_test";
pub const SK_ID: &str = "sk_id_client_test";
pub const SK_SECRET: &str = "sk_secret_client_test_0123456789";
/// Allowed `room/*` only, publish and subscribe only.
pub const SK_NARROW_ID: &str = "sk_id_client_narrow";
pub const SK_NARROW_SECRET: &str = "sk_secret_client_narrow_0123456";
pub const PK: &str = "pk_live_client_test";

/// How long a test waits for any one expected event. Generous: it only matters on failure.
pub const WAIT: Duration = Duration::from_secs(10);

fn secret_key(id: &str, secret: &str) -> SecretKeyConfig {
    SecretKeyConfig {
        id: id.into(),
        secret: secret.into(),
        channel_patterns: vec!["**".into()],
        actions: Action::ALL.to_vec(),
        auto_inject_turn: true,
        revoked: false,
    }
}

/// One app with a full secret key, a narrow one and a publishable key.
#[allow(clippy::field_reassign_with_default)]
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.timing.shutdown_deadline_secs = 5;
    config.timing.going_away_drain_ms = 100;
    let mut narrow = secret_key(SK_NARROW_ID, SK_NARROW_SECRET);
    narrow.channel_patterns = vec!["room/*".into()];
    narrow.actions = vec![Action::Publish, Action::Subscribe];
    config.apps = vec![AppConfig {
        id: APP.into(),
        suspended: false,
        max_connections: 0,
        secret_keys: vec![secret_key(SK_ID, SK_SECRET), narrow],
        publishable_keys: vec![PublishableKeyConfig {
            id: PK.into(),
            channel_patterns: vec!["**".into()],
            actions: Action::ALL.to_vec(),
            allowed_origins: vec![],
            auto_inject_turn: true,
            revoked: false,
        }],
    }];
    config
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A JWT for `sub` valid for `ttl` seconds, with optional peer and private metadata.
pub fn token_with(
    sub: &str,
    ttl: i64,
    peer_metadata: Option<Value>,
    metadata: Option<Value>,
) -> String {
    let raw = |v: Value| serde_json::value::RawValue::from_string(v.to_string()).unwrap();
    let claims = Claims {
        sub: sub.into(),
        exp: Some(now() + ttl),
        iat: Some(now()),
        peer_metadata: peer_metadata.map(raw),
        metadata: metadata.map(raw),
        ..Claims::default()
    };
    jwt::sign(SK_ID, SK_SECRET.as_bytes(), &claims)
}

pub fn token(sub: &str) -> String {
    token_with(sub, 3600, None, None)
}

/// `{"username": name}`, the peer metadata most tests use.
pub fn meta(name: &str) -> Value {
    json!({ "username": name })
}

/// A token provider for `sub` (with `{"username": sub}` metadata) that counts its calls.
pub fn counting_provider(
    sub: &str,
    ttl: i64,
) -> (
    impl Fn() -> std::future::Ready<Result<String, std::io::Error>> + Send + Sync + 'static,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let sub = sub.to_string();
    let provider = move || {
        counter.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(token_with(&sub, ttl, Some(meta(&sub)), None)))
    };
    (provider, calls)
}

/// Backoff that retries fast, so reconnect tests take milliseconds per attempt.
pub fn fast_reconnect() -> ReconnectOptions {
    ReconnectOptions {
        initial_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(300),
        ..ReconnectOptions::default()
    }
}

/// Options for `sub` against `url`, with `{"username": sub}` metadata and fast reconnects.
pub fn options_for(url: &str, sub: &str) -> SignallingClientOptions {
    let (provider, _) = counting_provider(sub, 3600);
    SignallingClientOptions {
        reconnect: Some(fast_reconnect()),
        ..SignallingClientOptions::token_provider(provider).with_url(url)
    }
}

/// A Herald running in-process.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), herald_server::ServerError>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener)
    }

    /// Binds `addr` again (the port of a server that was shut down), retrying while the OS
    /// still holds it.
    pub async fn start_on(addr: SocketAddr) -> TestServer {
        let mut last = None;
        for _ in 0..100 {
            match TcpListener::bind(addr).await {
                Ok(listener) => return Self::serve(listener),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("could not re-bind {addr}: {last:?}");
    }

    fn serve(listener: TcpListener) -> TestServer {
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(herald_server::run(listener, test_config(), async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// The origin the SDK takes as `url`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful shutdown (`going_away`, then 1001), waiting until the port is free.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(15), handle)
                .await
                .expect("server shutdown timed out")
                .unwrap()
                .unwrap();
        }
    }

    /// Shuts down and starts a fresh Herald (empty state) on the same port.
    pub async fn restart(self) -> TestServer {
        let addr = self.addr;
        self.shutdown().await;
        Self::start_on(addr).await
    }

    /// `DELETE /v1/peers/:id` (spec §13.6): closes every connection of the peer with 4020.
    pub async fn kick(&self, peer_id: &str) -> Value {
        let response = reqwest::Client::new()
            .delete(format!("{}/v1/peers/{peer_id}", self.http()))
            .header("authorization", format!("Bearer {SK_ID}:{SK_SECRET}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The next item of `stream`, failing the test after [`WAIT`].
pub async fn next<S: Stream + Unpin>(stream: &mut S, what: &str) -> S::Item {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("stream ended while waiting for {what}"))
}

/// Skips items until one matches `pred`; returns it.
pub async fn next_matching<S: Stream + Unpin>(
    stream: &mut S,
    what: &str,
    mut pred: impl FnMut(&S::Item) -> bool,
) -> S::Item {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let item = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|| panic!("stream ended while waiting for {what}"));
        if pred(&item) {
            return item;
        }
    }
}

/// Asserts nothing arrives on `stream` for `ms` (a bounded negative check).
pub async fn expect_quiet<S: Stream + Unpin>(stream: &mut S, ms: u64, what: &str)
where
    S::Item: std::fmt::Debug,
{
    if let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(ms), stream.next()).await {
        panic!("expected no {what}, got {item:?}");
    }
}

/// Asserts `stream` has ended (within [`WAIT`]), skipping what was still queued.
pub async fn expect_end<S: Stream + Unpin>(stream: &mut S, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(None) => return,
            Ok(Some(_)) => continue,
            Err(_) => panic!("{what} did not end"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A scripted fake server
// ---------------------------------------------------------------------------------------------

/// A listener whose accepted WebSocket connections are handed to the test one by one.
pub struct FakeServer {
    pub addr: SocketAddr,
    conns: mpsc::Receiver<FakeConn>,
}

/// One accepted connection of a [`FakeServer`].
pub struct FakeConn {
    pub ws: WebSocketStream<TcpStream>,
    /// The request query (`token=…` or `key=…`).
    pub query: String,
}

impl FakeServer {
    pub async fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, conns) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut query = String::new();
                    let callback =
                        |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                            query = req.uri().query().unwrap_or_default().to_string();
                            Ok(resp)
                        };
                    if let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await {
                        let _ = tx.send(FakeConn { ws, query }).await;
                    }
                });
            }
        });
        FakeServer { addr, conns }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The next connection the client opens.
    pub async fn accept(&mut self) -> FakeConn {
        tokio::time::timeout(WAIT, self.conns.recv())
            .await
            .expect("timed out waiting for the client to connect")
            .expect("fake server stopped")
    }
}

impl FakeConn {
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_string())).await.unwrap();
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a welcome for `peer_id`.
    pub async fn welcome(&mut self, peer_id: &str) {
        self.send_json(
            json!({"type": "welcome", "peerId": peer_id, "expiresAt": null,
            "serverTime": now(), "maxMessageSize": 65536}),
        )
        .await;
    }

    /// The next text frame from the client, as JSON.
    pub async fn recv_json(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a client frame")
                .expect("client went away")
                .expect("read error");
            if let Message::Text(t) = msg {
                return serde_json::from_str(t.as_str()).unwrap();
            }
        }
    }

    /// Reads until the client's close frame; returns its code.
    pub async fn recv_close(&mut self) -> u16 {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for the client's close")
            {
                Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                Some(Ok(Message::Close(None))) => return 1005,
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return 1006,
            }
        }
    }

    /// Closes with `code`.
    pub async fn close(mut self, code: u16) {
        let _ = self
            .ws
            .close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: "fake server".into(),
            }))
            .await;
        // Let the client's echo arrive before dropping the socket.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}
