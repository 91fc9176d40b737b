//! Node-wide shared state: configuration, keys, the engine, counters and the shutdown signal.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::auth::{App, KeyStore};
use crate::config::Config;
use crate::conn::{NodeOutbound, QueueLimits};
use crate::engine::Engine;
use crate::limits::ConnectLimiter;
use crate::metrics::Metrics;
use crate::webhooks::Webhooks;

pub struct ServerState {
    pub config: Config,
    pub keys: KeyStore,
    pub engine: Arc<dyn Engine>,
    pub connect_limiter: ConnectLimiter,
    pub metrics: Metrics,
    /// Outbound bytes held for all connections, against `limits.node_outbound_bytes`.
    pub outbound: Arc<NodeOutbound>,
    /// When this node started (uptime in the admin view).
    pub started: Instant,
    /// Live WebSocket sessions on this node (the node-wide 4010 quota, and shutdown's drain).
    sessions: AtomicUsize,
    sessions_changed: Notify,
    /// Flips to `true` once, when graceful shutdown begins.
    shutdown: watch::Sender<bool>,
    /// The webhook endpoints, when some app has any (the REST test event uses them).
    pub webhooks: Option<Arc<Webhooks>>,
}

impl ServerState {
    pub fn new(config: Config, engine: Arc<dyn Engine>) -> Self {
        let keys = KeyStore::from_config(&config);
        let connect_limiter = ConnectLimiter::new(
            config.limits.connect_attempts_per_ip,
            Duration::from_secs(config.limits.connect_window_secs),
            config.limits.connect_limit_exempt_loopback,
            config.limits.connect_limiter_max_entries,
        );
        let metrics = Metrics::new();
        let outbound = Arc::new(NodeOutbound::new(
            config.limits.node_outbound_bytes,
            metrics.outbound_queued_bytes.clone(),
            metrics.outbound_shed.clone(),
        ));
        ServerState {
            config,
            keys,
            engine,
            connect_limiter,
            metrics,
            outbound,
            started: Instant::now(),
            sessions: AtomicUsize::new(0),
            sessions_changed: Notify::new(),
            shutdown: watch::channel(false).0,
            webhooks: None,
        }
    }

    /// Admits a session against the node and app quotas. The returned guard releases both slots
    /// when dropped, however the session ends. `None` means close with 4010.
    pub fn admit(self: &Arc<Self>, app: &Arc<App>) -> Option<SessionGuard> {
        let node_max = self.config.limits.max_connections;
        let node_now = self.sessions.fetch_add(1, Ordering::AcqRel) + 1;
        let app_now = app.connections.fetch_add(1, Ordering::AcqRel) + 1;
        // Built before the check, so a refused slot is released too.
        let guard = SessionGuard {
            state: self.clone(),
            app: app.clone(),
        };
        let over = (node_max > 0 && node_now > node_max)
            || (app.max_connections > 0 && app_now > app.max_connections);
        if over {
            return None;
        }
        // Only admitted sessions count towards the peak (`peakConcurrent`).
        app.peak_connections.fetch_max(app_now, Ordering::AcqRel);
        Some(guard)
    }

    /// The outbound limits of one new connection on this node.
    pub fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            frames: self.config.limits.outbound_queue_frames,
            bytes: self.config.limits.outbound_queue_bytes,
            node: self.outbound.clone(),
        }
    }

    pub fn live_sessions(&self) -> usize {
        self.sessions.load(Ordering::Acquire)
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Waits until every session has ended or the deadline passes; returns the sessions left.
    pub async fn drain_sessions(&self, deadline: Instant) -> usize {
        loop {
            let notified = self.sessions_changed.notified();
            let left = self.live_sessions();
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                return self.live_sessions();
            }
        }
    }
}

/// Holds one node slot and one app slot for a live session.
pub struct SessionGuard {
    state: Arc<ServerState>,
    app: Arc<App>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.app.connections.fetch_sub(1, Ordering::AcqRel);
        self.state.sessions.fetch_sub(1, Ordering::AcqRel);
        self.state.sessions_changed.notify_waiters();
    }
}
