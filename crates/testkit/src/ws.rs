//! A WebSocket client for tests, over tungstenite: JSON frames in and out, close codes, and the
//! request/ack and subscribe exchanges most tests repeat.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::frames::ack;

/// A WebSocket client that reads JSON frames.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How long a read waits for the next frame before the test fails.
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

    /// Connects to `origin` (`ws://host:port`) as peer `sub` with a JWT signed by `kid`/`secret`
    /// (valid for ten minutes) and checks the welcome.
    pub async fn connect_jwt(origin: &str, kid: &str, secret: &str, sub: &str) -> Client {
        let claims = herald_protocol::claims::Claims {
            sub: sub.into(),
            exp: Some(crate::tokens::now() + 600),
            ..Default::default()
        };
        let token = crate::tokens::sign(kid, secret, &claims);
        let mut client = Client::connect(&format!("{origin}/v1?token={token}")).await;
        let welcome = client.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client
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

    /// The next text frame within `within`, or `None` when the socket closes, ends or stays
    /// silent that long (for tests that wait on a deadline of their own).
    pub async fn next_frame_within(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(t.as_str()).ok(),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {}
                Ok(Some(Ok(Message::Binary(_)))) => {}
                _ => return None,
            }
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
