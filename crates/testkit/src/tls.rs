//! TLS for tests: a throwaway CA, server certificates it issues for `localhost` and
//! `127.0.0.1`, a directory holding the files a Herald config points at, and clients (raw TLS,
//! HTTPS, `wss://`) that trust only that CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use herald_server::config::Config;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::test_config;
use crate::ws::Client;

/// A certificate authority that exists for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    pem: String,
}

/// A server certificate and its key, as PEM (the chain: leaf, then the CA).
#[derive(Clone)]
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
    /// The leaf, as a client sees it in the handshake.
    pub leaf_der: Vec<u8>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "Herald test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for `localhost` and `127.0.0.1`, valid for `days` from now.
    pub fn issue(&self, days: i64) -> Issued {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "herald");
        let unix_now = u64::try_from(herald_server::clock::unix_now()).unwrap();
        let now = rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(unix_now);
        params.not_before = now - std::time::Duration::from_secs(3600);
        params.not_after =
            now + std::time::Duration::from_secs(u64::try_from(days).unwrap() * 86_400);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            chain_pem: format!("{}{}", cert.pem(), self.pem),
            key_pem: key.serialize_pem(),
            leaf_der: cert.der().to_vec(),
        }
    }

    /// A client configuration that trusts this CA only.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// A directory with `cert.pem`, `key.pem` and `ca.pem`, removed on drop.
pub struct TlsDir {
    pub dir: PathBuf,
}

impl TlsDir {
    pub fn new(ca: &TestCa, first: &Issued) -> TlsDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "herald-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let tls = TlsDir { dir };
        std::fs::write(tls.ca(), ca.pem()).unwrap();
        tls.install(first);
        tls
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Puts a pair in place, each file by rename (as a renewal tool does), the key first.
    pub fn install(&self, issued: &Issued) {
        replace(&self.key(), issued.key_pem.as_bytes());
        replace(&self.cert(), issued.chain_pem.as_bytes());
    }

    /// Writes issued files somewhere else in the directory (for a script to move in later).
    pub fn stage(&self, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        let cert = self.dir.join(format!("{name}.cert.pem"));
        let key = self.dir.join(format!("{name}.key.pem"));
        std::fs::write(&cert, &issued.chain_pem).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
        (cert, key)
    }

    /// A test config serving this directory's pair, checking the files every `watch_ms`.
    pub fn config(&self, watch_ms: u64) -> Config {
        let mut config = test_config();
        config.tls.cert = Some(self.cert());
        config.tls.key = Some(self.key());
        config.tls.watch_interval_ms = watch_ms;
        config
    }
}

impl Drop for TlsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes `bytes` beside `path`, then renames over it.
pub fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A TLS connection to `addr` for the name `127.0.0.1`.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// The leaf certificate a TLS connection was served.
pub fn served_leaf(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    let (_, conn) = stream.get_ref();
    conn.peer_certificates().unwrap()[0].to_vec()
}

/// An HTTPS response: status, body, and the leaf certificate the server presented.
pub struct HttpsResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
    pub leaf: Vec<u8>,
}

/// `GET path` over HTTPS with `Connection: close`, read to the end.
pub async fn https_get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> HttpsResponse {
    let mut tls = tls_connect(addr, config).await.unwrap();
    let leaf = served_leaf(&tls);
    let request = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // A peer that closes without close_notify is an error to rustls; the bytes are all there.
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    HttpsResponse {
        status,
        head: head.to_string(),
        body: body.to_string(),
        leaf,
    }
}

/// Opens a `wss://` WebSocket to `addr` at `/v1?{query}`, trusting `config`'s roots.
pub async fn wss_client(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    query: &str,
) -> Client {
    let url = format!("wss://127.0.0.1:{}/v1?{query}", addr.port());
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(config)),
    )
    .await
    .unwrap();
    Client { ws }
}
