//! TLS on the listener (`[tls]`): `https://` and `wss://` on the one port, with rustls.
//!
//! - Policy: TLS 1.3 and 1.2 only; AEAD suites with forward secrecy only (AES-GCM and
//!   ChaCha20-Poly1305, ECDHE key exchange), which is every suite rustls offers; ALPN
//!   `http/1.1`, the only HTTP Herald serves.
//! - The handshake runs in the connection's own task (`accept.rs`), under the header-read
//!   timeout, so a socket that never finishes it costs the accept loop nothing.
//! - The certificate sits behind [`CertStore`]: a reload swaps it for the handshakes that come
//!   after, while connections already up keep the session keys they negotiated.
//! - A first byte that cannot start a TLS record is plain HTTP: it gets one answer
//!   (`[tls] plain_http`) instead of a TLS alert the client cannot show anyone.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use rustls::crypto::{ring, CryptoProvider};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::clock::unix_now;
use crate::config::{PlainHttp, TlsConfig};
use crate::metrics::TlsMetrics;

mod load;
pub mod reload;
pub mod validity;

pub use self::load::TlsError;
use self::load::{Loaded, PemPair};

/// The first byte of every TLS record that can open a connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// TLS for one listener: the acceptor over a swappable certificate, and what answers plain HTTP.
pub struct Tls {
    acceptor: TlsAcceptor,
    store: Arc<CertStore>,
    provider: Arc<CryptoProvider>,
    cert_path: PathBuf,
    key_path: PathBuf,
    plain: Router,
    metrics: TlsMetrics,
    /// The files' bytes as last read, so the watcher tries a pair once, not every tick.
    seen: std::sync::Mutex<PemPair>,
    pub(crate) watch_interval_ms: u64,
}

/// What a new socket turned out to be.
pub enum Started<S> {
    Tls(Box<TlsStream<Prefixed<S>>>),
    /// Plain HTTP on the TLS port: serve it [`Tls::plain_router`].
    Plain(Prefixed<S>),
}

impl Tls {
    /// Loads the configured pair, or `None` when TLS is off. A pair that does not load stops
    /// the node from starting: serving plain text where TLS was asked for would be worse.
    pub fn from_config(config: &TlsConfig, metrics: TlsMetrics) -> Result<Option<Tls>, TlsError> {
        let (Some(cert_path), Some(key_path)) = (&config.cert, &config.key) else {
            return Ok(None);
        };
        let provider = Arc::new(provider());
        let pair = PemPair::read_blocking(cert_path, key_path)?;
        let loaded = load::parse(&pair, cert_path, key_path, &provider)?;
        let store = Arc::new(CertStore {
            current: RwLock::new(loaded.key.clone()),
        });
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::BadPem {
                path: cert_path.clone(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            store,
            provider,
            cert_path: cert_path.clone(),
            key_path: key_path.clone(),
            plain: plain_router(config.plain_http),
            metrics,
            seen: std::sync::Mutex::new(pair),
            watch_interval_ms: config.watch_interval_ms,
        };
        tls.installed(&loaded, "tls certificate loaded");
        Ok(Some(tls))
    }

    /// Reads the first byte, then performs the handshake if it starts a TLS record. The caller
    /// bounds the whole of it with a timeout.
    pub async fn start<S>(&self, mut stream: S) -> io::Result<Started<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let first = stream.read_u8().await?;
        let stream = Prefixed {
            first: Some(first),
            inner: stream,
        };
        if first != TLS_HANDSHAKE_RECORD {
            return Ok(Started::Plain(stream));
        }
        let tls = self.acceptor.accept(stream).await?;
        Ok(Started::Tls(Box::new(tls)))
    }

    /// The service for plain-HTTP requests on this listener.
    pub fn plain_router(&self) -> Router {
        self.plain.clone()
    }

    /// Reads both files and, when they changed since the last read (or `force`, for SIGHUP),
    /// loads them. On any error the certificate in service stays, and the error is logged and
    /// counted. Returns whether a new certificate went into service.
    pub async fn reload(&self, force: bool) -> bool {
        let pair = match PemPair::read(&self.cert_path, &self.key_path).await {
            Ok(pair) => pair,
            Err(e) => {
                self.failed(&e);
                return false;
            }
        };
        {
            let mut seen = crate::sync::lock(&self.seen);
            if !force && *seen == pair {
                return false;
            }
            *seen = pair.clone();
        }
        match load::parse(&pair, &self.cert_path, &self.key_path, &self.provider) {
            Ok(loaded) => {
                *self
                    .store
                    .current
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = loaded.key.clone();
                self.metrics.reloads_ok.inc();
                self.installed(&loaded, "tls certificate reloaded");
                true
            }
            Err(e) => {
                self.failed(&e);
                false
            }
        }
    }

    fn installed(&self, loaded: &Loaded, what: &'static str) {
        self.metrics.set_not_after(loaded.not_after);
        let expires_in = loaded.not_after - unix_now();
        tracing::info!(
            cert = %self.cert_path.display(),
            chain = loaded.chain_len,
            not_after = %validity::format_utc(loaded.not_after),
            expires_in_days = expires_in / 86_400,
            "{what}"
        );
        if expires_in <= 0 {
            tracing::warn!(cert = %self.cert_path.display(), "the tls certificate has expired");
        }
    }

    fn failed(&self, e: &TlsError) {
        self.metrics.reloads_failed.inc();
        tracing::error!(error = %e, "tls reload failed; the certificate in service stays");
    }
}

/// The crypto provider: ring, with its full suite list, which is AEAD-with-ECDHE only.
fn provider() -> CryptoProvider {
    ring::default_provider()
}

/// The certificate handshakes get, swapped whole on reload.
#[derive(Debug)]
struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Some(current.clone())
    }
}

/// A stream whose first byte was already read (to tell TLS from plain HTTP): it hands that
/// byte back before reading on.
pub struct Prefixed<S> {
    first: Option<u8>,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(byte) = this.first {
            if buf.remaining() > 0 {
                buf.put_slice(&[byte]);
                this.first = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Every plain-HTTP request on the TLS port gets the same answer, then the connection closes.
fn plain_router(mode: PlainHttp) -> Router {
    Router::new().fallback(move |headers: HeaderMap, uri: Uri| async move {
        plain_answer(mode, &headers, &uri)
    })
}

fn plain_answer(mode: PlainHttp, headers: &HeaderMap, uri: &Uri) -> Response {
    let close = || [(header::CONNECTION, "close")];
    let refuse = || {
        (
            StatusCode::BAD_REQUEST,
            close(),
            "this port speaks TLS: use https:// or wss://\n",
        )
            .into_response()
    };
    if mode == PlainHttp::Refuse {
        return refuse();
    }
    // The client's own Host, checked to be an authority so the Location stays one URL.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<axum::http::uri::Authority>().ok());
    let Some(host) = host else {
        return refuse();
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{path}");
    (
        StatusCode::PERMANENT_REDIRECT,
        close(),
        [(header::LOCATION, location)],
    )
        .into_response()
}
