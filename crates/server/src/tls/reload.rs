//! Reloading the certificate without a restart: on SIGHUP at once, and when the files' bytes
//! change, checked every `[tls] watch_interval_ms`. Reading the bytes rather than the mtime
//! catches a renewal that keeps the timestamp (a copy with `-p`, a quick rewrite within the
//! filesystem's mtime granularity); two small files every few seconds cost nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::Tls;

/// Runs until `shutdown` turns true.
pub async fn watch(tls: Arc<Tls>, mut shutdown: watch::Receiver<bool>) {
    let mut hangup = Hangup::listen();
    let every = Duration::from_millis(tls.watch_interval_ms);
    let mut tick = (tls.watch_interval_ms > 0).then(|| {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick
    });
    loop {
        let next_tick = async {
            match tick.as_mut() {
                Some(tick) => {
                    tick.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // The guard `wait_for` returns is dropped inside, so it never spans an await.
            () = async { let _ = shutdown.wait_for(|down| *down).await; } => return,
            () = hangup.recv() => {
                tracing::info!("SIGHUP: reloading the tls certificate");
                tls.reload(true).await;
            }
            () = next_tick => {
                tls.reload(false).await;
            }
        }
    }
}

/// SIGHUP, where there is such a thing. Without it (or if the handler cannot be installed)
/// the watcher still polls.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn listen() -> Hangup {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signal = match signal(SignalKind::hangup()) {
                Ok(signal) => Some(signal),
                Err(e) => {
                    tracing::warn!(error = %e, "no SIGHUP handler; the tls certificate reloads by polling only");
                    None
                }
            };
            Hangup { signal }
        }
        #[cfg(not(unix))]
        Hangup {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = self.signal.as_mut() {
            if signal.recv().await.is_some() {
                return;
            }
        }
        std::future::pending().await
    }
}
