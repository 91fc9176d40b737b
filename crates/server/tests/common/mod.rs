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
#[allow(clippy::field_reassign_with_default)]
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

// ---------------------------------------------------------------------------------------------
// Additions for the conformance, bad-input, auth, limits and lifecycle suites.
// ---------------------------------------------------------------------------------------------

/// Asserts `frame` is exactly an `error` with `code`, carrying `request_id` iff given (spec §4.3).
pub fn assert_error(frame: &Value, code: &str, request_id: Option<&str>) {
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["code"], code, "{frame}");
    match request_id {
        Some(id) => assert_eq!(frame["requestId"], id, "{frame}"),
        None => assert!(
            frame.get("requestId").is_none(),
            "unexpected requestId: {frame}"
        ),
    }
    if let Some(message) = frame.get("message") {
        assert!(message.is_string(), "{frame}");
    }
    for key in frame.as_object().unwrap().keys() {
        assert!(
            matches!(key.as_str(), "type" | "code" | "requestId" | "message"),
            "unexpected key {key}: {frame}"
        );
    }
}

/// The exact `ack` frame for `request_id`.
pub fn ack(request_id: &str) -> Value {
    json!({"type": "ack", "requestId": request_id})
}

/// An empty presence snapshot for `channel`.
pub fn empty_presence(channel: &str) -> Value {
    json!({"type": "presence", "channel": channel, "joined": [], "left": []})
}

/// Base64url without padding (RFC 7515), for hand-forged tokens.
pub fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A compact JWS from raw header and claims JSON, HMAC-SHA256-signed with `secret`. The header
/// is used verbatim (whatever `alg` it names): this is for forging and for claims of wrong types.
pub fn forge(header_json: &str, claims_json: &str, secret: &str) -> String {
    use hmac::{Hmac, Mac};
    let signing_input = format!(
        "{}.{}",
        b64url(header_json.as_bytes()),
        b64url(claims_json.as_bytes())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    let sig = mac.finalize().into_bytes();
    format!("{signing_input}.{}", b64url(&sig))
}

/// Claims JSON (as text) for `sub`, valid for an hour, with extra members spliced in.
pub fn claims_json(sub: &str, extra: &str) -> String {
    let base = format!(r#"{{"sub":"{sub}","exp":{},"iat":{}"#, now() + 3600, now());
    if extra.is_empty() {
        format!("{base}}}")
    } else {
        format!("{base},{extra}}}")
    }
}

/// The standard header for `kid`.
pub fn hs256_header(kid: &str) -> String {
    format!(r#"{{"alg":"HS256","kid":"{kid}","typ":"JWT"}}"#)
}

impl TestServer {
    /// The value of one unlabelled gauge or counter in this node's `/metrics`; panics if absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    /// Connects with a raw query string and expects the server to close before any frame:
    /// returns the close code (spec §1.3: refusals are closes after a successful upgrade).
    pub async fn refused(&self, query: &str) -> u16 {
        let mut c = Client::connect(&self.url(query)).await;
        let (code, frames) = c.recv_close().await;
        assert!(
            frames.is_empty(),
            "no frame (no welcome) before {code}: {frames:?}"
        );
        code
    }

    /// Like [`TestServer::refused`] for `?token=`.
    pub async fn refused_token(&self, token: &str) -> u16 {
        self.refused(&format!("token={token}")).await
    }

    /// Connects with a query string and returns the client and its welcome.
    pub async fn welcomed(&self, query: &str) -> (Client, Value) {
        let mut c = Client::connect(&self.url(query)).await;
        let w = c.recv().await;
        assert_eq!(w["type"], "welcome", "{w}");
        (c, w)
    }

    /// A publishable-key client and its server-assigned peer id.
    pub async fn pk_client(&self, key: &str) -> (Client, String) {
        let (c, w) = self.welcomed(&format!("key={key}")).await;
        (c, w["peerId"].as_str().unwrap().to_string())
    }

    /// A client for a token (any claims), after its welcome.
    pub async fn client_with_token(&self, token: &str) -> Client {
        self.welcomed(&format!("token={token}")).await.0
    }
}

/// A token signed with the main key for the given claims.
pub fn token_for(claims: &Claims) -> String {
    jwt::sign(SK_ID, SK_SECRET.as_bytes(), claims)
}

impl Client {
    /// Connects and returns the handshake error instead of panicking (for HTTP-level refusals).
    pub async fn try_connect(url: &str) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        tokio_tungstenite::connect_async(url)
            .await
            .map(|(ws, _)| Client { ws })
    }

    /// The next raw WebSocket message (pings included) within `within`; `None` on timeout or end.
    pub async fn next_raw(&mut self, within: Duration) -> Option<Message> {
        match tokio::time::timeout(within, self.ws.next()).await {
            Ok(Some(Ok(m))) => Some(m),
            _ => None,
        }
    }

    /// Like [`Client::recv`] with a custom timeout.
    pub async fn recv_within(&mut self, within: Duration) -> Value {
        loop {
            let msg = tokio::time::timeout(within, self.ws.next())
                .await
                .expect("timed out waiting for a frame");
            match msg {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    /// Sends a frame and waits for the exact ack.
    pub async fn expect_ack(&mut self, frame: Value, request_id: &str) {
        let reply = self.request(frame, request_id).await;
        assert_eq!(reply, ack(request_id));
    }

    /// Publishes with a requestId and checks the ack.
    pub async fn publish(&mut self, channel: &str, data: Value, request_id: &str) {
        self.expect_ack(
            json!({"type": "publish", "channel": channel, "data": data}),
            request_id,
        )
        .await;
    }

    /// Sends a direct with a requestId and checks the ack.
    pub async fn send_to(&mut self, to: &str, data: Value, request_id: &str) {
        self.expect_ack(json!({"type": "send", "to": to, "data": data}), request_id)
            .await;
    }

    /// A ping/pong round trip: proves every earlier frame of this connection was processed.
    pub async fn sync(&mut self) {
        self.send_json(json!({"type": "ping", "requestId": "sync"}))
            .await;
        assert_eq!(
            self.recv().await,
            json!({"type": "pong", "requestId": "sync"})
        );
    }

    /// Writes many text frames with a single flush (one burst on the wire).
    pub async fn send_burst(&mut self, frames: impl IntoIterator<Item = String>) {
        for f in frames {
            self.ws.feed(Message::text(f)).await.unwrap();
        }
        self.ws.flush().await.unwrap();
    }
}

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
}

/// A config with every timer and limit at the test defaults, tweaked by `f`.
pub fn config_with(f: impl FnOnce(&mut Config)) -> Config {
    let mut config = test_config();
    f(&mut config);
    config
}

impl Client {
    /// Subscribes with an explicit requestId (for channel names too long to embed in one) and
    /// returns the snapshot after checking the ack.
    pub async fn subscribe_as(&mut self, channel: &str, request_id: &str) -> Value {
        self.send_json(json!({"type": "subscribe", "channel": channel, "requestId": request_id}))
            .await;
        assert_eq!(self.recv().await, ack(request_id), "subscribe {channel}");
        let snapshot = self.recv().await;
        assert_eq!(snapshot["type"], "presence", "{snapshot}");
        snapshot
    }
}

impl RawWs {
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

pub mod cluster;
pub mod proxy;
pub mod redis;
