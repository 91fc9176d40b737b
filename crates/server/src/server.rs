//! Running a node: the caller binds the listener and supplies the shutdown future, so tests
//! (port 0) and `main` call the same function.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::config::{Config, ConfigError};
use crate::engine::memory::MemoryEngine;
use crate::engine::redis::RedisEngine;
use crate::engine::Engine;
use crate::http;
use crate::state::ServerState;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("server I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs Herald with the configured engine (`engine.kind`) until `shutdown` resolves, then shuts
/// down gracefully.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate()?;
    let engine: Arc<dyn Engine> = match config.engine.kind.as_str() {
        "redis" => Arc::new(RedisEngine::start(&config.engine).await.map_err(|e| {
            ConfigError::Invalid {
                field: "engine.redis_url".into(),
                reason: e.to_string(),
            }
        })?),
        _ => Arc::new(MemoryEngine::new()),
    };
    run_with_engine(listener, config, engine, shutdown).await
}

/// Runs Herald with the given engine.
///
/// Graceful shutdown: stop accepting, send `going_away` to every session (each closes with
/// 1001 after its drain period), and return once all sessions ended or the deadline passed.
pub async fn run_with_engine(
    listener: TcpListener,
    config: Config,
    engine: Arc<dyn Engine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate()?;
    let deadline_after = Duration::from_secs(config.timing.shutdown_deadline_secs);
    let state = Arc::new(ServerState::new(config, engine));
    let app = http::router(state.clone());
    let signalled = state.clone();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<Instant>();
    // Small frames go out at once: Nagle's algorithm plus delayed ACKs would add ~40 ms.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        let _ = started_tx.send(Instant::now());
        signalled.begin_shutdown();
    });
    let mut server = std::pin::pin!(server.into_future());
    let mut server_done = false;
    let started = tokio::select! {
        result = &mut server => {
            // The accept loop ended before any shutdown was requested (a listener failure).
            result?;
            server_done = true;
            state.begin_shutdown();
            Instant::now()
        }
        started = started_rx => started.unwrap_or_else(|_| Instant::now()),
    };
    tracing::info!(sessions = state.live_sessions(), "shutting down");
    let deadline = started + deadline_after;
    // Stop accepting (bounded by the deadline: hyper may wait on slow HTTP clients).
    if !server_done {
        let _ = tokio::time::timeout_at(deadline.into(), &mut server).await;
    }
    let left = state.drain_sessions(deadline).await;
    if left > 0 {
        tracing::warn!(
            sessions = left,
            "shutdown deadline reached with sessions still open"
        );
    }
    Ok(())
}
