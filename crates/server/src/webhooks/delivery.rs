//! The delivery task of one endpoint: batches in order, one in flight at a time (so events
//! arrive in the order they happened, per channel and per peer), retried with exponential
//! backoff and jitter until `retry_for` has passed, then dropped with a metric and a log line.
//! Every attempt of a batch carries the same `webhook-id`; receivers de-duplicate events by
//! their own `id`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::Rng as _;
use tokio::time::Instant;

use super::event::batch_body;
use super::signing::sign;
use super::transport::Transport;
use super::{Endpoint, WebhookMetrics};

/// How batches are formed and retried (`[webhooks]`).
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub batch_max: usize,
    pub batch_delay: Duration,
    pub retry_for: Duration,
    pub max_backoff: Duration,
}

/// The wait before attempt `attempt + 1` (the first retry waits about a second): doubling, at
/// most `max`, and drawn between half and all of that so endpoints coming back are not hit by
/// every node at once.
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let full = Duration::from_secs(1)
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max);
    let half = full / 2;
    half + full
        .saturating_sub(half)
        .mul_f64(rand::rng().random::<f64>())
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Delivers the endpoint's events for as long as the node runs.
pub async fn run(
    endpoint: Arc<Endpoint>,
    transport: Arc<dyn Transport>,
    settings: DeliverySettings,
    metrics: WebhookMetrics,
) {
    loop {
        endpoint.outbox.wait().await;
        if endpoint.outbox.len() < settings.batch_max && !settings.batch_delay.is_zero() {
            // Let the events of the same moment share the POST.
            tokio::time::sleep(settings.batch_delay).await;
        }
        let batch = endpoint.outbox.take(settings.batch_max);
        if batch.is_empty() {
            continue;
        }
        let body = Bytes::from(batch_body(batch.iter()));
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let first_try = Instant::now();
        let mut attempt = 0u32;
        loop {
            let ts = unix_secs();
            let headers = [
                ("webhook-id", id.clone()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", sign(&endpoint.key, &id, ts, &body)),
            ];
            let started = Instant::now();
            let outcome = transport.post(&endpoint.url, &headers, body.clone()).await;
            let n = batch.len() as u64;
            match outcome {
                Ok(status) if (200..300).contains(&status) => {
                    metrics.delivered.inc_by(n);
                    metrics.latency.observe(started.elapsed().as_secs_f64());
                    break;
                }
                outcome => {
                    attempt += 1;
                    let why = match outcome {
                        Ok(status) => format!("HTTP {status}"),
                        Err(err) => err,
                    };
                    if first_try.elapsed() >= settings.retry_for {
                        metrics.failed.inc_by(n);
                        tracing::warn!(
                            url = %endpoint.url, events = n, attempts = attempt, last = %why,
                            "webhook batch dropped after its retry period"
                        );
                        break;
                    }
                    metrics.retried.inc_by(n);
                    tracing::debug!(url = %endpoint.url, attempt, %why, "webhook batch failed; retrying");
                    tokio::time::sleep(backoff(attempt, settings.max_backoff)).await;
                }
            }
        }
        endpoint.outbox.release(&batch);
    }
}
