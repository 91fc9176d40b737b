//! Running a node: the caller binds the listener and supplies the shutdown future, so tests
//! (port 0) and `main` call the same function.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::accept;
use crate::config::{Config, ConfigError};
use crate::engine::memory::{MemoryEngine, MemorySettings};
use crate::engine::redis::{RedisEngine, RedisSettings};
use crate::engine::Engine;
use crate::history::History;
use crate::http;
use crate::metrics::TlsMetrics;
use crate::state::ServerState;
use crate::tls::{self, Tls, TlsError};
use crate::webhooks::durable::DurableOutbox;
use crate::webhooks::transport::HttpTransport;
use crate::webhooks::{WebhookMetrics, Webhooks};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("server I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
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
        "redis" => Arc::new(
            RedisEngine::start_with(&config.engine, &RedisSettings::from_config(&config))
                .await
                .map_err(|e| ConfigError::Invalid {
                    field: "engine.redis_url".into(),
                    reason: e.to_string(),
                })?,
        ),
        _ => {
            let mut settings = MemorySettings::from_config(&config);
            // `store = "disk"` opens (and restores) its database here, before anything listens.
            settings.history =
                History::open(&config.history).map_err(|e| ConfigError::Invalid {
                    field: "history.path".into(),
                    reason: e.to_string(),
                })?;
            // Its webhook outbox too, in its own file beside the history database.
            settings.webhook_outbox =
                DurableOutbox::open_for(&config).map_err(|e| ConfigError::Invalid {
                    field: "history.path".into(),
                    reason: e.to_string(),
                })?;
            Arc::new(MemoryEngine::with_settings(settings))
        }
    };
    run_with_engine(listener, config, engine, shutdown).await
}

/// Runs Herald with the given engine.
///
/// Graceful shutdown: stop accepting, close idle HTTP connections (in-flight requests get
/// [`accept::IN_FLIGHT_GRACE`]), send `going_away` to every session (each closes with 1001
/// after its drain period), and return once all of that ended or the deadline passed.
pub async fn run_with_engine(
    listener: TcpListener,
    config: Config,
    engine: Arc<dyn Engine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate()?;
    let webhooks = start_webhooks(&config)?;
    let deadline_after = Duration::from_secs(config.timing.shutdown_deadline_secs);
    let tls_metrics = TlsMetrics::default();
    let tls = Tls::from_config(&config.tls, tls_metrics.clone())?.map(Arc::new);
    let mut state = ServerState::new(config, engine);
    if tls.is_some() {
        state.metrics.register_tls(tls_metrics);
    }
    if let Some((webhooks, metrics)) = webhooks {
        state.metrics.register_webhooks(&metrics);
        state.engine.attach_webhooks(webhooks.clone());
        state.webhooks = Some(webhooks);
    }
    let state = Arc::new(state);
    let watcher = tls
        .clone()
        .map(|tls| tokio::spawn(tls::reload::watch(tls, state.shutdown_signal())));
    let app = http::router(state.clone());
    let mut connections = accept::accept_until(listener, app, state.clone(), tls, shutdown).await;
    let started = Instant::now();
    state.begin_shutdown();
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    tracing::info!(
        sessions = state.live_sessions(),
        http_connections = connections.len(),
        "shutting down"
    );
    let deadline = started + deadline_after;
    let http_closed = async {
        let all_ended = async { while connections.join_next().await.is_some() {} };
        let _ = tokio::time::timeout_at(deadline.into(), all_ended).await;
        // Past the deadline, whatever is left is cut off.
        connections.abort_all();
    };
    let ((), left) = tokio::join!(http_closed, state.drain_sessions(deadline));
    if left > 0 {
        tracing::warn!(
            sessions = left,
            "shutdown deadline reached with sessions still open"
        );
    }
    let _ = tokio::time::timeout_at(deadline.into(), state.engine.shutdown()).await;
    Ok(())
}

/// The webhook endpoints of every app, each with its delivery task, when some app has any.
fn start_webhooks(config: &Config) -> Result<Option<(Arc<Webhooks>, WebhookMetrics)>, ServerError> {
    if config.apps.iter().all(|app| app.webhooks.is_empty()) {
        return Ok(None);
    }
    let transport = HttpTransport::new(Duration::from_millis(config.webhooks.timeout_ms)).map_err(
        |reason| {
            ServerError::Config(ConfigError::Invalid {
                field: "webhooks".into(),
                reason,
            })
        },
    )?;
    let metrics = WebhookMetrics::default();
    let webhooks = Webhooks::start(config, Arc::new(transport), metrics.clone());
    Ok(Some((Arc::new(webhooks), metrics)))
}
