//! The accept loop: Herald's own, instead of `axum::serve`, so that a bare TCP socket cannot
//! make the node hold it for free.
//!
//! - At accept, a source (an IPv4 address or an IPv6 /64) at `limits.max_connections_per_ip`
//!   open sockets is closed at once; the place is held until the socket closes, upgraded
//!   WebSocket sessions included (the place lives in the socket wrapper).
//! - Before a request's headers arrive, hyper's header-read timeout runs: on a new socket and on
//!   a kept-alive one after each response. Half a request line, or nothing at all, is closed
//!   after `limits.http_header_read_timeout_ms`.
//! - A connection that has not upgraded and moves no byte for `limits.http_idle_timeout_secs`
//!   is closed (a stalled body, a stuck handler).
//! - With `[tls]`, the first byte and the TLS handshake are read in the connection's own task,
//!   within `limits.http_header_read_timeout_ms` (then the request head gets its own); a socket
//!   that does not finish in time is closed (`tls_handshake_timeout`). Plain HTTP on the TLS
//!   port gets `[tls] plain_http`'s answer (see [`crate::tls`]).
//! - On shutdown the listener closes, idle HTTP connections close at once, and in-flight
//!   requests get [`IN_FLIGHT_GRACE`]. Upgraded sessions are not tracked here: they follow the
//!   `going_away` drain (`ServerState::drain_sessions`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower_service::Service;

use crate::limits::{ConnectionSlot, ConnectionSlots};
use crate::state::ServerState;
use crate::tls::{Started, Tls};

/// After shutdown begins, how long a request already being served may take to finish.
pub const IN_FLIGHT_GRACE: Duration = Duration::from_secs(1);
/// Largest request head hyper buffers (its default is ~400 KB, times every open socket).
/// Browsers send at most a few KB of cookies; a JWT in the query is about 1 KB.
const MAX_REQUEST_HEAD_BYTES: usize = 32 * 1024;
/// Pause after an accept error that is not about one connection (e.g. out of file
/// descriptors), so the loop does not spin while sockets close.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Accepts connections until `shutdown` resolves, then returns the tasks still serving HTTP
/// connections (they see the node's shutdown signal and end within [`IN_FLIGHT_GRACE`]).
/// The listener is dropped on return, so new connections are refused from then on.
pub async fn accept_until(
    listener: TcpListener,
    router: Router,
    state: Arc<ServerState>,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()>,
) -> JoinSet<()> {
    let limits = &state.config.limits;
    let slots = ConnectionSlots::new(
        limits.max_connections_per_ip,
        limits.connect_limit_exempt_loopback,
    );
    let options = Arc::new(ConnectionOptions {
        header_read_timeout: Duration::from_millis(limits.http_header_read_timeout_ms),
        idle_timeout: Duration::from_secs(limits.http_idle_timeout_secs),
        header_timeouts: state.metrics.http.header_timeouts.clone(),
        idle_timeouts: state.metrics.http.idle_timeouts.clone(),
        tls_handshake_timeouts: state.metrics.http.tls_handshake_timeouts.clone(),
        tls_handshake_errors: state.metrics.http.tls_handshake_errors.clone(),
        plain_http_on_tls: state.metrics.http.plain_http_on_tls.clone(),
    });
    let mut tasks = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => return tasks,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    // Refusing is dropping the socket: no bytes, no task, no buffer.
                    let Some(slot) = slots.try_acquire(peer.ip()) else {
                        state.metrics.http.refused_per_source.inc();
                        continue;
                    };
                    // Small frames go out at once: Nagle plus delayed ACKs would add ~40 ms.
                    let _ = tcp.set_nodelay(true);
                    let stream = CountedStream::new(tcp, slot, &state.metrics.http.open_connections);
                    tasks.spawn(serve_socket(
                        stream,
                        peer,
                        router.clone(),
                        tls.clone(),
                        state.shutdown_signal(),
                        options.clone(),
                    ));
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// What every HTTP connection of the node is held to, and where it counts its timeouts.
struct ConnectionOptions {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    header_timeouts: Counter,
    idle_timeouts: Counter,
    tls_handshake_timeouts: Counter,
    tls_handshake_errors: Counter,
    plain_http_on_tls: Counter,
}

/// Serves one accepted socket: straight to HTTP, or through the TLS handshake first. The
/// handshake is bounded by the header-read timeout and abandoned on shutdown.
async fn serve_socket<S>(
    stream: CountedStream<S>,
    peer: SocketAddr,
    router: Router,
    tls: Option<Arc<Tls>>,
    mut shutdown: watch::Receiver<bool>,
    options: Arc<ConnectionOptions>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let progress = stream.progress.clone();
    let Some(tls) = tls else {
        return serve_connection(stream, progress, peer, router, shutdown, options).await;
    };
    let started = tokio::select! {
        started = tokio::time::timeout(options.header_read_timeout, tls.start(stream)) => started,
        _ = shutdown.wait_for(|down| *down) => return,
    };
    match started {
        Ok(Ok(Started::Tls(stream))) => {
            serve_connection(*stream, progress, peer, router, shutdown, options).await
        }
        Ok(Ok(Started::Plain(stream))) => {
            options.plain_http_on_tls.inc();
            let plain = tls.plain_router();
            serve_connection(stream, progress, peer, plain, shutdown, options).await
        }
        Ok(Err(e)) => {
            options.tls_handshake_errors.inc();
            tracing::debug!(%peer, error = %e, "tls handshake failed");
        }
        Err(_) => {
            options.tls_handshake_timeouts.inc();
        }
    }
}

/// Serves one connection's HTTP/1 requests until it closes, upgrades to WebSocket, stalls, or
/// `shutdown` turns true. `progress` counts the socket's bytes (its [`CountedStream`], under
/// TLS if any). Generic over the stream so tests can serve an in-memory pipe on a paused clock.
async fn serve_connection<S>(
    stream: S,
    progress: Arc<AtomicU64>,
    peer: SocketAddr,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    options: Arc<ConnectionOptions>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut idle = IdleWatch::new(progress, options.idle_timeout);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(Body::new);
        // Handlers read the client's address with `ConnectInfo<SocketAddr>`.
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        async move { Ok::<_, Infallible>(router.call(request).await.unwrap_or_else(|e| match e {})) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    let mut connection = pin!(builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades());

    let mut give_up_at: Option<Instant> = None;
    loop {
        let grace_over = async {
            match give_up_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = connection.as_mut() => {
                // Ok also when the socket was handed to a WebSocket session.
                if let Err(e) = result {
                    if e.is_timeout() {
                        options.header_timeouts.inc();
                    }
                }
                return;
            }
            () = idle.expired() => {
                options.idle_timeouts.inc();
                return;
            }
            _ = shutdown.wait_for(|down| *down), if give_up_at.is_none() => {
                // Closes at once when no request is in progress; else after its response.
                connection.as_mut().graceful_shutdown();
                give_up_at = Some(Instant::now() + IN_FLIGHT_GRACE);
            }
            () = grace_over => return,
        }
    }
}

/// Notices a connection that moved no byte for `idle`. It looks every quarter of `idle` (at
/// least every 10 ms) rather than re-arming a timer per byte, so it fires between `idle` and
/// `idle * 5/4` after the last byte.
struct IdleWatch {
    progress: Arc<AtomicU64>,
    idle: Duration,
    check_every: Duration,
    last_progress: u64,
    last_change: Instant,
}

impl IdleWatch {
    fn new(progress: Arc<AtomicU64>, idle: Duration) -> Self {
        let last_progress = progress.load(Ordering::Relaxed);
        IdleWatch {
            progress,
            idle,
            check_every: (idle / 4).max(Duration::from_millis(10)),
            last_progress,
            last_change: Instant::now(),
        }
    }

    /// Resolves once nothing moved for `idle`. Cancel-safe: what it saw is kept in `self`, and
    /// a cancelled wait only restarts the current look.
    async fn expired(&mut self) {
        loop {
            tokio::time::sleep(self.check_every).await;
            let now = self.progress.load(Ordering::Relaxed);
            if now != self.last_progress {
                self.last_progress = now;
                self.last_change = Instant::now();
            } else if self.last_change.elapsed() >= self.idle {
                return;
            }
        }
    }
}

/// A TCP stream that holds its source's place in [`ConnectionSlots`] and the open-connections
/// gauge for as long as the socket lives (through a WebSocket upgrade too), and counts the
/// reads and writes that moved bytes, for the idle timeout. (Generic only so tests can wrap an
/// in-memory pipe.)
struct CountedStream<S = TcpStream> {
    tcp: S,
    progress: Arc<AtomicU64>,
    open: Gauge,
    _slot: ConnectionSlot,
}

impl<S> CountedStream<S> {
    fn new(tcp: S, slot: ConnectionSlot, open: &Gauge) -> Self {
        open.inc();
        CountedStream {
            tcp,
            progress: Arc::new(AtomicU64::new(0)),
            open: open.clone(),
            _slot: slot,
        }
    }

    fn moved(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }
}

impl<S> Drop for CountedStream<S> {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CountedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.moved();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.tcp).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.moved();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.moved();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::routing::post;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_moves_nothing_is_idle_exactly_after_the_idle_time() {
        let start = Instant::now();
        let mut idle = IdleWatch::new(Arc::new(AtomicU64::new(0)), secs(60));
        idle.expired().await;
        assert_eq!(start.elapsed(), secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_byte_restarts_the_idle_time_from_the_look_that_saw_it() {
        let start = Instant::now();
        let progress = Arc::new(AtomicU64::new(0));
        let mut idle = IdleWatch::new(progress.clone(), secs(60));
        tokio::spawn(async move {
            tokio::time::sleep(secs(20)).await;
            progress.fetch_add(1, Ordering::Relaxed);
        });
        // Looks every 15 s: the byte at 20 s is seen at 30 s, so idle from 30 s to 90 s.
        idle.expired().await;
        assert_eq!(start.elapsed(), secs(90));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_keeps_what_it_saw() {
        let start = Instant::now();
        let mut idle = IdleWatch::new(Arc::new(AtomicU64::new(0)), secs(60));
        // The serving loop drops the wait when another branch wins (shutdown); the silence
        // already counted still counts, only the look in progress restarts.
        assert!(tokio::time::timeout(secs(50), idle.expired())
            .await
            .is_err());
        idle.expired().await;
        assert_eq!(start.elapsed(), secs(65));
    }

    /// Serves one in-memory connection as the accept loop would; returns the client's end,
    /// the shutdown switch, the options (for their counters) and the serving task.
    fn serve(
        header_read_timeout: Duration,
        idle_timeout: Duration,
    ) -> (
        DuplexStream,
        watch::Sender<bool>,
        Arc<ConnectionOptions>,
        tokio::task::JoinHandle<()>,
    ) {
        serve_with_tls(header_read_timeout, idle_timeout, None)
    }

    fn serve_with_tls(
        header_read_timeout: Duration,
        idle_timeout: Duration,
        tls: Option<Arc<Tls>>,
    ) -> (
        DuplexStream,
        watch::Sender<bool>,
        Arc<ConnectionOptions>,
        tokio::task::JoinHandle<()>,
    ) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let slots = ConnectionSlots::new(0, false);
        let slot = slots.try_acquire([192, 0, 2, 1].into()).unwrap();
        let stream = CountedStream::new(server, slot, &Gauge::default());
        // A handler that reads the whole body, so a stalled body stalls the request.
        let router = Router::new().route("/", post(|body: String| async move { body }));
        let (down, shutdown) = watch::channel(false);
        let options = Arc::new(ConnectionOptions {
            header_read_timeout,
            idle_timeout,
            header_timeouts: Counter::default(),
            idle_timeouts: Counter::default(),
            tls_handshake_timeouts: Counter::default(),
            tls_handshake_errors: Counter::default(),
            plain_http_on_tls: Counter::default(),
        });
        let peer = SocketAddr::from(([192, 0, 2, 1], 40_000));
        let task = tokio::spawn(serve_socket(
            stream,
            peer,
            router,
            tls,
            shutdown,
            options.clone(),
        ));
        (client, down, options, task)
    }

    const STALLED_POST: &[u8] =
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nonly part of the body";

    #[tokio::test(start_paused = true)]
    async fn half_a_request_head_is_closed_exactly_at_the_header_read_timeout() {
        let start = Instant::now();
        let (mut client, _down, options, task) = serve(secs(10), secs(600));
        client.write_all(b"GET / HTTP/1.1\r\nhost:").await.unwrap();
        task.await.unwrap();
        assert_eq!(start.elapsed(), secs(10));
        assert_eq!(options.header_timeouts.get(), 1);
        assert_eq!(options.idle_timeouts.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_alive_connection_gets_a_fresh_header_read_timeout_after_each_response() {
        let start = Instant::now();
        let (mut client, _down, options, task) = serve(secs(10), secs(600));
        // The first request arrives late but within its timeout, at 5 s...
        tokio::time::advance(secs(5)).await;
        client
            .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi")
            .await
            .unwrap();
        let mut response = [0u8; 12];
        client.read_exact(&mut response).await.unwrap();
        assert_eq!(&response, b"HTTP/1.1 200");
        // ...and the wait for the next one's headers starts after the response: 5 s + 10 s.
        task.await.unwrap();
        assert_eq!(start.elapsed(), secs(15));
        assert_eq!(options.header_timeouts.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_closed_between_the_idle_time_and_a_quarter_more() {
        let start = Instant::now();
        let (mut client, _down, options, task) = serve(secs(10), secs(60));
        client.write_all(STALLED_POST).await.unwrap();
        // The bytes moved at 0 s are seen at the first look (15 s): idle from 15 s to 75 s.
        task.await.unwrap();
        assert_eq!(start.elapsed(), secs(75));
        assert_eq!(options.idle_timeouts.get(), 1);
        assert_eq!(options.header_timeouts.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn on_shutdown_a_request_in_flight_gets_the_grace_and_no_more() {
        let start = Instant::now();
        let (mut client, down, options, task) = serve(secs(10), secs(60));
        client.write_all(STALLED_POST).await.unwrap();
        tokio::time::advance(secs(3)).await;
        down.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(start.elapsed(), secs(3) + IN_FLIGHT_GRACE);
        assert_eq!(options.idle_timeouts.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn on_shutdown_a_connection_between_requests_closes_at_once() {
        let start = Instant::now();
        let (mut client, down, _options, task) = serve(secs(10), secs(60));
        client
            .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi")
            .await
            .unwrap();
        let mut response = [0u8; 12];
        client.read_exact(&mut response).await.unwrap();
        tokio::time::advance(secs(3)).await;
        down.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(start.elapsed(), secs(3));
    }

    /// TLS from a self-signed pair written to a fresh directory (removed before returning:
    /// the pair is read at load).
    fn test_tls() -> Arc<Tls> {
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "herald-accept-tls-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = crate::config::TlsConfig {
            cert: Some(dir.join("cert.pem")),
            key: Some(dir.join("key.pem")),
            ..Default::default()
        };
        std::fs::write(dir.join("cert.pem"), pair.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), pair.signing_key.serialize_pem()).unwrap();
        let tls = Tls::from_config(&config, Default::default())
            .unwrap()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        Arc::new(tls)
    }

    #[tokio::test(start_paused = true)]
    async fn a_tls_handshake_that_never_comes_is_closed_exactly_at_the_header_read_timeout() {
        let start = Instant::now();
        let (mut client, _down, options, task) =
            serve_with_tls(secs(10), secs(600), Some(test_tls()));
        // A handshake record header, then silence.
        client
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
            .await
            .unwrap();
        task.await.unwrap();
        assert_eq!(start.elapsed(), secs(10));
        assert_eq!(options.tls_handshake_timeouts.get(), 1);
        assert_eq!(options.header_timeouts.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_abandons_a_tls_handshake_in_progress() {
        let start = Instant::now();
        let (_client, down, options, task) = serve_with_tls(secs(10), secs(600), Some(test_tls()));
        tokio::time::advance(secs(3)).await;
        down.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(start.elapsed(), secs(3));
        assert_eq!(options.tls_handshake_timeouts.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_hello_that_is_not_tls_fails_the_handshake_at_once() {
        let start = Instant::now();
        let (mut client, _down, options, task) =
            serve_with_tls(secs(10), secs(600), Some(test_tls()));
        // A handshake record of the wrong version, with garbage inside.
        client
            .write_all(&[0x16, 0x7f, 0x7f, 0x00, 0x04, 1, 2, 3, 4])
            .await
            .unwrap();
        task.await.unwrap();
        assert_eq!(start.elapsed(), secs(0));
        assert_eq!(options.tls_handshake_errors.get(), 1);
    }
}
