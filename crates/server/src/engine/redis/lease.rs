//! The node's lease and the reaping of dead nodes. Every node instance renews a lease in
//! Redis; a maintenance task does that on a timer, and also re-asserts local state after
//! trouble, re-syncs rosters after a bus reconnect, prunes the index and claims instances whose
//! lease lapsed, cleaning what their indexes list (each `left` published exactly once).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::node::{new_instance, Node};
use super::run_bounded;
use crate::sync::lock;

/// Index entries are pruned every this many maintenance rounds.
const PRUNE_EVERY: u64 = 4;

/// How often a node renews its lease, reaps, re-asserts and re-syncs.
pub(super) fn maintenance_period(lease_ms: u64) -> Duration {
    Duration::from_millis((lease_ms / 4).clamp(250, 2_000))
}

/// Successful lease renewals without a gap. A node reaps others only once its streak is a
/// whole lease long: leases lapse during a Redis outage or failover even on live nodes, and
/// they must get the chance to renew before anyone declares them dead.
#[derive(Default)]
struct RenewalStreak {
    /// (first, last) renewal of the current streak.
    span: Option<(Instant, Instant)>,
}

impl RenewalStreak {
    /// Records a successful renewal; a gap of more than `max_gap` since the last one (a
    /// renewal that hung in a failover and then succeeded, a stalled round) starts a new
    /// streak. Returns the streak's length.
    fn renewed(&mut self, max_gap: Duration) -> Duration {
        let now = Instant::now();
        let first = match self.span {
            Some((first, last)) if now - last <= max_gap => first,
            _ => now,
        };
        self.span = Some((first, now));
        now - first
    }

    fn broken(&mut self) {
        self.span = None;
    }
}

/// Lease renewal, reaping of dead nodes, re-assertion after trouble, index pruning.
pub(super) async fn maintenance(inner: Arc<Node>) {
    let period = maintenance_period(inner.lease_ms);
    let mut tick = tokio::time::interval(period);
    let mut round: u64 = 0;
    let mut streak = RenewalStreak::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = inner.wake_maintenance.notified() => {}
        }
        round += 1;
        let mut ok = inner.maintain(&mut streak).await;
        if ok && round.is_multiple_of(PRUNE_EVERY) {
            ok = inner.prune_index().await.is_ok();
        }
        inner.redis_ok.store(ok, Ordering::Release);
    }
}

impl Node {
    /// Takes this node to a new instance id: the old one was reaped, so its state is gone and
    /// its peers were announced gone; the re-assert that follows announces them again.
    fn reincarnate(&self) {
        let fresh = new_instance(&self.id);
        tracing::warn!(node = %self.id, instance = %fresh, "this node was reaped; re-incarnating");
        *lock(&self.instance) = fresh;
        self.index.forget_writes();
        // Sequence numbers may restart as the channels are rebuilt.
        self.local.reset_sequences();
        self.mark_trouble();
    }

    async fn renew(&self) -> redis::RedisResult<i64> {
        self.scripts
            .renew
            .key(self.keys.cluster_base())
            .arg(self.instance())
            .arg(self.lease_ms)
            .invoke_async(&mut self.conn())
            .await
    }

    async fn maintain(&self, streak: &mut RenewalStreak) -> bool {
        let renewed = match self.renew().await {
            Ok(-1) => {
                self.reincarnate();
                self.renew().await
            }
            other => other,
        };
        match renewed {
            Ok(1) => {}
            Ok(_) => {
                self.lease_lapsed();
                self.mark_trouble();
            }
            Err(err) => {
                tracing::debug!(error = %err, "lease renewal failed");
                streak.broken();
                self.mark_trouble();
                return false;
            }
        }
        let renewing_for = streak.renewed(2 * maintenance_period(self.lease_ms));
        if self.bus_up.load(Ordering::Acquire) && self.needs_reassert.swap(false, Ordering::AcqRel)
        {
            if let Err(err) = self.reassert().await {
                tracing::warn!(error = %err, "re-assert failed; will retry");
                self.mark_trouble();
                return false;
            }
            tracing::info!(node = %self.id, "local presence and routes re-asserted");
        }
        // In the re-sync window: before its start only who joined is told (see `bus_connected`).
        let now = Instant::now();
        let window = *lock(&self.resync_window);
        let resync = window
            .filter(|(_, until)| now < *until)
            .map(|(from, _)| from <= now);
        if let Some(with_leaves) = resync {
            if self.bus_up.load(Ordering::Acquire) && !self.needs_reassert.load(Ordering::Acquire) {
                if let Err(err) = self.resync(with_leaves).await {
                    tracing::debug!(error = %err, "roster re-sync failed");
                    return false;
                }
            }
        }
        if self.store.is_cluster() {
            if let Err(err) = self.refresh_pattern_apps().await {
                tracing::debug!(error = %err, "wildcard interest refresh failed");
                return false;
            }
        }
        if renewing_for < Duration::from_millis(self.lease_ms) {
            return true;
        }
        match self.reap().await {
            Ok(()) => true,
            Err(err) => {
                tracing::debug!(error = %err, "reaping failed");
                false
            }
        }
    }

    /// Claims instances whose lease lapsed and cleans what their indexes list.
    async fn reap(&self) -> redis::RedisResult<()> {
        let linger = self.lease_ms.max(5_000) * 2;
        let claimed: Vec<String> = self
            .scripts
            .claim_dead
            .key(self.keys.cluster_base())
            .arg(self.instance())
            .arg(linger)
            .invoke_async(&mut self.conn())
            .await?;
        let Some((now, dead)) = claimed.split_first() else {
            return Ok(());
        };
        for instance in dead {
            self.reap_instance(instance).await?;
        }
        if !dead.is_empty() {
            // Instances whose linger is over, each cleaned at least once just now.
            let _: i64 = redis::cmd("ZREMRANGEBYSCORE")
                .arg(self.keys.reaping_key())
                .arg("-inf")
                .arg(now)
                .query_async(&mut self.conn())
                .await?;
        }
        Ok(())
    }

    async fn reap_instance(&self, instance: &str) -> redis::RedisResult<()> {
        let index_key = self.keys.index_key(instance);
        let entries: Vec<String> = redis::cmd("HKEYS")
            .arg(&index_key)
            .query_async(&mut self.conn())
            .await?;
        let mut left = 0;
        let calls: Vec<_> = entries
            .into_iter()
            .map(|base| {
                let index_key = index_key.clone();
                async move {
                    let mut conn = self.conn();
                    let n: i64 = if self.keys.is_channel_base(&base) {
                        let spec = self
                            .channel_webhook_spec(
                                &base,
                                super::webhook_spec::LEFT | super::webhook_spec::VACATED,
                            )
                            .await;
                        let mut invocation = self.scripts.reap_channel.key(&base);
                        invocation
                            .arg(self.publish_command())
                            .arg(self.keys.topic_of_base(&base))
                            .arg(instance);
                        spec.apply(&mut invocation);
                        invocation.invoke_async(&mut conn).await?
                    } else {
                        let (app, peer) = self.keys.parse_base(&base).unwrap_or_default();
                        let spec = self
                            .route_webhook_spec(app, &base, super::webhook_spec::OFFLINE)
                            .await;
                        let mut invocation = self
                            .scripts
                            .route_reap
                            .key(self.keys.route_key_of_base(&base));
                        invocation.arg(instance).arg(peer);
                        spec.apply(&mut invocation);
                        let _: i64 = invocation.invoke_async(&mut conn).await?;
                        0
                    };
                    let _: i64 = redis::cmd("HDEL")
                        .arg(index_key)
                        .arg(&base)
                        .query_async(&mut conn)
                        .await?;
                    Ok::<i64, redis::RedisError>(n)
                }
            })
            .collect();
        let results = run_bounded(calls).await;
        for result in results {
            left += result?;
        }
        if left > 0 {
            tracing::warn!(dead = %instance, left, "reaped a node instance whose lease expired");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_period_is_a_quarter_lease_within_bounds() {
        assert_eq!(maintenance_period(400), Duration::from_millis(250));
        assert_eq!(maintenance_period(4_000), Duration::from_millis(1_000));
        assert_eq!(maintenance_period(60_000), Duration::from_millis(2_000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_streak_grows_with_regular_renewals_and_restarts_after_a_gap() {
        let gap = Duration::from_millis(500);
        let mut streak = RenewalStreak::default();
        assert_eq!(streak.renewed(gap), Duration::ZERO);
        for _ in 0..4 {
            tokio::time::advance(Duration::from_millis(250)).await;
            streak.renewed(gap);
        }
        tokio::time::advance(Duration::from_millis(500)).await;
        // Exactly `max_gap` since the last renewal still continues the streak.
        assert_eq!(streak.renewed(gap), Duration::from_millis(1_500));
        // One more than that starts over: a node must renew a whole lease before it reaps.
        tokio::time::advance(Duration::from_millis(501)).await;
        assert_eq!(streak.renewed(gap), Duration::ZERO);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(streak.renewed(gap), Duration::from_millis(100));
        streak.broken();
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(streak.renewed(gap), Duration::ZERO);
    }
}
