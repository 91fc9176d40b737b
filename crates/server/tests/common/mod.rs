//! Shared test support: start a real Herald on 127.0.0.1:0, mint tokens, and drive it with a
//! raw WebSocket client.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_protocol::claims::Claims;
use herald_protocol::{jwt, Action};
use herald_server::config::{AppConfig, Config, PublishableKeyConfig, SecretKeyConfig};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const APP: &str = "app_test";
pub const SK_ID: &str = "sk_id_test";
pub const SK_SECRET: &str = "sk_secret_test_0123456789abcdef";
/// A second, rotated-in secret key of the same app.
pub const SK2_ID: &str = "sk_id_test_2";
pub const SK2_SECRET: &str = "sk_secret_test2_0123456789abcdef";
/// A secret key limited to `room/*` and publish+subscribe.
pub const SK_NARROW_ID: &str = "sk_id_narrow";
pub const SK_NARROW_SECRET: &str = "sk_secret_narrow_0123456789abcdef";
/// Publishable key with every action and any origin.
pub const PK: &str = "pk_live_test";
/// Publishable key restricted to one origin.
pub const PK_ORIGIN: &str = "pk_live_origin";
pub const ALLOWED_ORIGIN: &str = "https://app.example.com";
/// Publishable key with the dashboard defaults (no `send`), limited to `public/**`.
pub const PK_DEFAULTS: &str = "pk_live_defaults";
pub const REVOKED_PK: &str = "pk_live_revoked";

pub const OTHER_APP: &str = "app_other";
pub const OTHER_SK_ID: &str = "sk_id_other";
pub const OTHER_SK_SECRET: &str = "sk_secret_other_0123456789abcdef";

pub const SUSPENDED_SK_ID: &str = "sk_id_suspended";
pub const SUSPENDED_SK_SECRET: &str = "sk_secret_suspended_0123456789ab";

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

fn publishable_key(id: &str) -> PublishableKeyConfig {
    PublishableKeyConfig {
        id: id.into(),
        channel_patterns: vec!["**".into()],
        actions: Action::ALL.to_vec(),
        allowed_origins: vec![],
        auto_inject_turn: true,
        revoked: false,
    }
}

/// The configuration every test starts from: three apps and a variety of keys.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.timing.shutdown_deadline_secs = 5;
    config.timing.going_away_drain_ms = 100;
    let mut narrow = secret_key(SK_NARROW_ID, SK_NARROW_SECRET);
    narrow.channel_patterns = vec!["room/*".into()];
    narrow.actions = vec![Action::Publish, Action::Subscribe];
    let mut origin = publishable_key(PK_ORIGIN);
    origin.allowed_origins = vec![ALLOWED_ORIGIN.into()];
    let mut defaults = publishable_key(PK_DEFAULTS);
    defaults.actions = vec![Action::Subscribe, Action::Publish, Action::Presence];
    defaults.channel_patterns = vec!["public/**".into()];
    let mut revoked = publishable_key(REVOKED_PK);
    revoked.revoked = true;
    config.apps = vec![
        AppConfig {
            id: APP.into(),
            suspended: false,
            max_connections: 0,
            secret_keys: vec![
                secret_key(SK_ID, SK_SECRET),
                secret_key(SK2_ID, SK2_SECRET),
                narrow,
            ],
            publishable_keys: vec![publishable_key(PK), origin, defaults, revoked],
        },
        AppConfig {
            id: OTHER_APP.into(),
            suspended: false,
            max_connections: 0,
            secret_keys: vec![secret_key(OTHER_SK_ID, OTHER_SK_SECRET)],
            publishable_keys: vec![],
        },
        AppConfig {
            id: "app_suspended".into(),
            suspended: true,
            max_connections: 0,
            secret_keys: vec![secret_key(SUSPENDED_SK_ID, SUSPENDED_SK_SECRET)],
            publishable_keys: vec![],
        },
    ];
    config
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims for `sub` valid for an hour.
pub fn claims(sub: &str) -> Claims {
    Claims {
        sub: sub.into(),
        exp: Some(now() + 3600),
        iat: Some(now()),
        ..Claims::default()
    }
}

pub fn raw(json: &str) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(json.to_string()).unwrap()
}

/// A token signed with the main test key.
pub fn token(sub: &str) -> String {
    jwt::sign(SK_ID, SK_SECRET.as_bytes(), &claims(sub))
}

/// A token with `peerMetadata`.
pub fn token_with_meta(sub: &str, peer_metadata: &str) -> String {
    let mut c = claims(sub);
    c.peer_metadata = Some(raw(peer_metadata));
    jwt::sign(SK_ID, SK_SECRET.as_bytes(), &c)
}

pub fn sign(kid: &str, secret: &str, claims: &Claims) -> String {
    jwt::sign(kid, secret.as_bytes(), claims)
}

/// A Herald running in-process on an ephemeral port.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), herald_server::ServerError>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(test_config()).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(herald_server::run(listener, config, async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// The origin the SDKs take as `url`.
    pub fn origin(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/v1?{}", self.addr, query)
    }

    pub fn token_url(&self, token: &str) -> String {
        self.url(&format!("token={token}"))
    }

    /// Connects with a JWT for `sub` and reads the welcome.
    pub async fn client(&self, sub: &str) -> Client {
        let mut c = Client::connect(&self.token_url(&token(sub))).await;
        let w = c.recv().await;
        assert_eq!(w["type"], "welcome", "{w}");
        c
    }

    /// Like [`TestServer::client`] with `peerMetadata`.
    pub async fn client_with_meta(&self, sub: &str, meta: &str) -> Client {
        let mut c = Client::connect(&self.token_url(&token_with_meta(sub, meta))).await;
        let w = c.recv().await;
        assert_eq!(w["type"], "welcome", "{w}");
        c
    }

    /// Triggers graceful shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(15), handle)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }

    /// Starts the shutdown without waiting.
    pub fn begin_shutdown(&mut self) -> JoinHandle<Result<(), herald_server::ServerError>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.take().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A raw WebSocket client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// What a read produced.
#[derive(Debug)]
pub enum Event {
    Frame(Value),
    Close(u16, String),
    /// The socket ended without a close frame.
    Ended,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Client { ws }
    }

    /// Connects with extra request headers (e.g. `Origin`).
    pub async fn connect_with_headers(url: &str, headers: &[(&str, &str)]) -> Client {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().unwrap();
        for (k, v) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        Client { ws }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).await.unwrap();
    }

    /// Next frame, close, or end (protocol pings and pongs are skipped).
    pub async fn next_event(&mut self) -> Event {
        loop {
            let msg = tokio::time::timeout(RECV_TIMEOUT, self.ws.next())
                .await
                .expect("timed out waiting for a frame");
            match msg {
                None | Some(Err(_)) => return Event::Ended,
                Some(Ok(Message::Text(t))) => {
                    return Event::Frame(serde_json::from_str(t.as_str()).unwrap())
                }
                Some(Ok(Message::Close(Some(f)))) => {
                    return Event::Close(u16::from(f.code), f.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => return Event::Close(1005, String::new()),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next text frame as JSON; panics on close.
    pub async fn recv(&mut self) -> Value {
        match self.next_event().await {
            Event::Frame(v) => v,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next frame's raw text (for byte-exact checks).
    pub async fn recv_text(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(RECV_TIMEOUT, self.ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Message::Text(t) = msg {
                return t.as_str().to_string();
            }
        }
    }

    /// Reads frames until a close arrives; returns the close code and the frames seen before.
    pub async fn recv_close(&mut self) -> (u16, Vec<Value>) {
        let mut seen = Vec::new();
        loop {
            match self.next_event().await {
                Event::Frame(v) => seen.push(v),
                Event::Close(code, _) => return (code, seen),
                Event::Ended => return (1006, seen),
            }
        }
    }

    /// Asserts nothing arrives for `ms` milliseconds.
    pub async fn expect_silence(&mut self, ms: u64) {
        match tokio::time::timeout(Duration::from_millis(ms), self.ws.next()).await {
            Err(_) => {}
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(other) => panic!("expected silence, got {other:?}"),
        }
    }

    /// Sends a request with a requestId and returns the next frame.
    pub async fn request(&mut self, mut frame: Value, request_id: &str) -> Value {
        frame["requestId"] = json!(request_id);
        self.send_json(frame).await;
        self.recv().await
    }

    /// Subscribes and returns (ack, snapshot).
    pub async fn subscribe(&mut self, channel: &str) -> (Value, Value) {
        self.subscribe_opts(channel, false).await
    }

    pub async fn subscribe_opts(
        &mut self,
        channel: &str,
        include_sender_metadata: bool,
    ) -> (Value, Value) {
        let rid = format!("sub-{channel}");
        let mut frame = json!({"type": "subscribe", "channel": channel, "requestId": rid});
        if include_sender_metadata {
            frame["includeSenderMetadata"] = json!(true);
        }
        self.send_json(frame).await;
        let ack = self.recv().await;
        assert_eq!(
            ack,
            json!({"type": "ack", "requestId": rid}),
            "subscribe {channel}"
        );
        let snapshot = self.recv().await;
        assert_eq!(snapshot["type"], "presence", "{snapshot}");
        (ack, snapshot)
    }

    /// Closes the socket normally.
    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: WsCloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
    }
}

/// Peer ids in a presence array.
pub fn peer_ids(entries: &Value) -> Vec<String> {
    let mut ids: Vec<String> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["peerId"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}
