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
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower_service::Service;

use crate::limits::{ConnectionSlot, ConnectionSlots};
use crate::state::ServerState;

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
                    tasks.spawn(serve_connection(
                        stream,
                        peer,
                        router.clone(),
                        state.clone(),
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

struct ConnectionOptions {
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

/// Serves one connection's HTTP/1 requests until it closes, upgrades to WebSocket, stalls, or
/// the node shuts down.
async fn serve_connection(
    stream: CountedStream,
    peer: SocketAddr,
    router: Router,
    state: Arc<ServerState>,
    options: Arc<ConnectionOptions>,
) {
    let progress = stream.progress.clone();
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

    let mut shutdown = state.shutdown_signal();
    let idle = options.idle_timeout;
    let check_every = (idle / 4).max(Duration::from_millis(10));
    let mut last_progress = progress.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
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
                        state.metrics.http.header_timeouts.inc();
                    }
                }
                return;
            }
            () = tokio::time::sleep(check_every) => {
                let now = progress.load(Ordering::Relaxed);
                if now != last_progress {
                    last_progress = now;
                    last_change = Instant::now();
                } else if last_change.elapsed() >= idle {
                    state.metrics.http.idle_timeouts.inc();
                    return;
                }
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

/// A TCP stream that holds its source's place in [`ConnectionSlots`] and the open-connections
/// gauge for as long as the socket lives (through a WebSocket upgrade too), and counts the
/// reads and writes that moved bytes, for the idle timeout.
struct CountedStream {
    tcp: TcpStream,
    progress: Arc<AtomicU64>,
    open: Gauge,
    _slot: ConnectionSlot,
}

impl CountedStream {
    fn new(tcp: TcpStream, slot: ConnectionSlot, open: &Gauge) -> Self {
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

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl AsyncRead for CountedStream {
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

impl AsyncWrite for CountedStream {
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
