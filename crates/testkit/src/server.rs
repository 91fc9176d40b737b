//! A real Herald running in-process on an ephemeral loopback port, and the ways a test connects
//! to it.

use std::net::SocketAddr;
use std::time::Duration;

use herald_server::config::Config;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::test_config;
use crate::tokens::{token, token_with_meta};
use crate::ws::Client;

/// A Herald running in-process; dropping it starts a graceful shutdown.
pub struct TestServer {
    pub addr: SocketAddr,
    /// `[tls]` is on: the URLs below are `wss://` and `https://`.
    pub tls: bool,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), herald_server::ServerError>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(test_config()).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, config)
    }

    /// Runs Herald on a socket the test bound itself (for example the port of a server that
    /// was shut down, to restart on it).
    pub fn serve(listener: TcpListener, config: Config) -> TestServer {
        let addr = listener.local_addr().unwrap();
        let tls = config.tls.enabled();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(herald_server::run(listener, config, async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            tls,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// The origin the SDKs take as `url`.
    pub fn origin(&self) -> String {
        format!("{}://{}", if self.tls { "wss" } else { "ws" }, self.addr)
    }

    /// The base of the REST and HTTP endpoints.
    pub fn http(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    pub fn url(&self, query: &str) -> String {
        format!("{}/v1?{}", self.origin(), query)
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

    /// A client for a token (any claims), after its welcome.
    pub async fn client_with_token(&self, token: &str) -> Client {
        self.welcomed(&format!("token={token}")).await.0
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

    /// Publishes `data` on `channel` through REST as "server", with the app's secret key;
    /// panics unless it answers 200.
    pub async fn rest_publish(&self, channel: &str, data: Value) {
        let resp = reqwest::Client::new()
            .post(format!(
                "{}/v1/channels/{}/publish",
                self.http(),
                channel.replace('/', "%2F")
            ))
            .header("authorization", crate::config::SK_AUTH)
            .json(&serde_json::json!({"data": data, "from": "server"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
    }

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

    /// Triggers graceful shutdown (`going_away`, then 1001) and waits for `run` to return, so
    /// the port is free afterwards.
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
