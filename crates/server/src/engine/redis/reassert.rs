//! Making Redis agree with this node again after trouble (a failed operation, a bus
//! reconnect, a lapsed lease): re-assertion writes the node's holds, routes and wildcard
//! interest back; a roster re-sync tells local subscribers what they missed while deltas could
//! not flow.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::lease::maintenance_period;
use super::local::ChannelHolds;
use super::node::Node;
use super::{run_bounded, run_pipe};
use crate::sync::lock;

impl Node {
    /// Makes Redis agree with local state: index entries first, then every channel this node
    /// holds or may have held, then routes and wildcard interest.
    pub(super) async fn reassert(&self) -> redis::RedisResult<()> {
        let instance = self.instance();
        let index_key = self.keys.index_key(&instance);
        self.index.forget_writes();
        let departed: Vec<(String, String)> = std::mem::take(&mut *lock(&self.departed));
        let result = self.reassert_state(&instance, &index_key, &departed).await;
        if result.is_err() {
            lock(&self.departed).extend(departed);
        }
        result
    }

    async fn reassert_state(
        &self,
        instance: &str,
        index_key: &str,
        departed: &[(String, String)],
    ) -> redis::RedisResult<()> {
        let generation = self.reassert_generation.fetch_add(1, Ordering::AcqRel) + 1;
        let snapshot = self.local.snapshot_for_reassert();
        let indexed: Vec<String> = redis::cmd("HKEYS")
            .arg(index_key)
            .query_async(&mut self.conn())
            .await?;
        let mut departed_by_channel: HashMap<&str, Vec<&str>> = HashMap::new();
        for (base, peer) in departed {
            departed_by_channel
                .entry(base.as_str())
                .or_default()
                .push(peer.as_str());
        }
        // Index first: whatever is held below must be findable by a reaper. (One key, so one
        // slot: a pipeline is fine even on a cluster.)
        let mut bases: Vec<&str> = snapshot
            .channels
            .keys()
            .chain(snapshot.routes.keys())
            .map(String::as_str)
            .collect();
        bases.extend(departed_by_channel.keys().copied());
        let mut pipe = redis::pipe();
        for base in &bases {
            pipe.cmd("HINCRBY")
                .arg(index_key)
                .arg(*base)
                .arg(1)
                .ignore();
        }
        run_pipe(&pipe, &mut self.conn()).await?;
        self.index.mark_written(bases.iter().copied());
        let mut channels: HashSet<&str> = snapshot.channels.keys().map(String::as_str).collect();
        channels.extend(departed_by_channel.keys().copied());
        channels.extend(
            indexed
                .iter()
                .filter(|b| self.keys.is_channel_base(b))
                .map(String::as_str),
        );
        let empty = ChannelHolds::default();
        // Webhook specs first: on a Redis Cluster, building one may register its slot.
        let mut specs = std::collections::HashMap::new();
        for base in &channels {
            let mask = super::webhook_spec::JOINED
                | super::webhook_spec::OCCUPIED
                | super::webhook_spec::LEFT
                | super::webhook_spec::VACATED;
            specs.insert(*base, self.channel_webhook_spec(base, mask).await);
        }
        // Each invocation is built up front and owns its arguments.
        let invocations: Vec<redis::ScriptInvocation<'_>> = channels
            .into_iter()
            .map(|base| {
                let state = snapshot.channels.get(base).unwrap_or(&empty);
                let gone = departed_by_channel.get(base).cloned().unwrap_or_default();
                let mut inv = self.scripts.reassert_channel.key(base);
                inv.arg(self.publish_command())
                    .arg(self.keys.topic_of_base(base))
                    .arg(instance)
                    .arg(state.subscribers)
                    .arg(generation)
                    .arg(state.holds.len());
                for (peer, meta) in &state.holds {
                    inv.arg(peer).arg(meta);
                }
                inv.arg(gone.len());
                for peer in gone {
                    inv.arg(peer);
                }
                if let Some(spec) = specs.get(base) {
                    spec.apply(&mut inv);
                } else {
                    inv.arg("");
                }
                inv
            })
            .collect();
        let calls: Vec<_> = invocations
            .into_iter()
            .map(|inv| {
                let mut conn = self.conn();
                async move { inv.invoke_async::<i64>(&mut conn).await }
            })
            .collect();
        let results = run_bounded(calls).await;
        for result in results {
            result?;
        }
        // Routes and wildcard interest live in many slots: one command each, pipelined by
        // the multiplexed connection.
        let mut commands = Vec::new();
        for (base, count) in &snapshot.routes {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(self.keys.route_key_of_base(base))
                .arg(instance)
                .arg(*count);
            commands.push(cmd);
        }
        for base in indexed.iter().filter(|b| !self.keys.is_channel_base(b)) {
            if !snapshot.routes.contains_key(base) {
                let mut cmd = redis::cmd("HDEL");
                cmd.arg(self.keys.route_key_of_base(base)).arg(instance);
                commands.push(cmd);
            }
        }
        if self.store.is_cluster() {
            let patterns = self.keys.patterns_key();
            for app in self.local.pattern_apps() {
                let mut cmd = redis::cmd("SADD");
                cmd.arg(&patterns)
                    .arg(self.keys.pattern_interest_entry(&app, instance));
                commands.push(cmd);
            }
        }
        let calls: Vec<_> = commands
            .into_iter()
            .map(|cmd| {
                let mut conn = self.conn();
                async move { cmd.query_async::<()>(&mut conn).await }
            })
            .collect();
        run_bounded(calls).await.into_iter().collect()
    }

    /// Starts the re-sync window after the bus (re)connected. Re-syncs that only tell who
    /// joined run at once (a node that reconnects later than others missed their joins); those
    /// that also tell who left wait until the other nodes have re-asserted.
    pub(crate) fn bus_connected(&self) {
        self.local.reset_sequences();
        let settle = 2 * maintenance_period(self.lease_ms);
        let from = self.resync_not_before(Instant::now() + settle);
        let until = from + self.resync_span();
        *lock(&self.resync_window) = Some((from, until));
        self.mark_trouble();
        self.wake_maintenance.notify_one();
    }

    /// The lease was gone without a reap: Redis lost its data (or was away a whole lease).
    /// Every node re-asserts its peers, each announcing those Redis lacked, so subscribers
    /// learn who is there without a re-sync. A re-sync is still needed for peers that left
    /// while nobody could record it (their node died meanwhile), but it waits a whole lease:
    /// by then every live node has renewed, and so re-asserted; earlier, a roster missing a
    /// peer may only mean its node has not got to it yet, and a `left` for a peer that stayed
    /// is worse than a late one for a peer that went.
    pub(super) fn lease_lapsed(&self) {
        let now = Instant::now();
        *lock(&self.lease_lapsed) = Some(now);
        let mut window = lock(&self.resync_window);
        if let Some((from, until)) = *window {
            if until > now {
                let from = self.resync_not_before(from);
                *window = Some((from, until.max(from + self.resync_span())));
            }
        }
    }

    /// The earliest a re-sync may run, given that it wanted to at `earliest`.
    fn resync_not_before(&self, earliest: Instant) -> Instant {
        let lease = Duration::from_millis(self.lease_ms);
        lock(&self.lease_lapsed).map_or(earliest, |lapsed| earliest.max(lapsed + lease))
    }

    /// How long re-syncs go on after a reconnect.
    fn resync_span(&self) -> Duration {
        Duration::from_millis(self.lease_ms.max(5_000) * 3)
    }

    /// The bus shed pushes and has caught up since: deltas may be lost, so local rosters are
    /// re-synced with Redis for a couple of maintenance rounds, starting now (or once a lapsed
    /// lease's wait is over). (No re-assert: Redis lost nothing; only this node's view did.)
    pub(crate) fn bus_gap(&self) {
        let now = self.resync_not_before(Instant::now());
        let until = now + 2 * maintenance_period(self.lease_ms);
        {
            let mut window = lock(&self.resync_window);
            *window = Some(match *window {
                Some((from, end)) if end > now => (from, end.max(until)),
                _ => (now, until),
            });
        }
        self.wake_maintenance.notify_one();
    }

    /// Reads every locally subscribed channel's roster (with its sequence number, atomically)
    /// and lets local subscribers catch up on what they missed (who left too, with
    /// `with_leaves`).
    pub(super) async fn resync(&self, with_leaves: bool) -> redis::RedisResult<()> {
        let channels = self.local.subscribed_channels();
        let calls: Vec<_> = channels
            .into_iter()
            .map(|key| async move {
                // A channel busy with a subscribe or a newer delta is read again shortly, not a
                // maintenance round later: subscribers are waiting for what they missed.
                for _ in 0..RESYNC_TRIES {
                    let (seq, roster) = self.roster(key.0.as_str(), key.1.as_str()).await?;
                    if !with_leaves {
                        self.local.resync_joined(&key, &roster);
                        break;
                    }
                    if self.local.resync(&key, &roster, seq) {
                        break;
                    }
                    tokio::time::sleep(RESYNC_RETRY).await;
                }
                Ok::<(), redis::RedisError>(())
            })
            .collect();
        run_bounded(calls).await.into_iter().collect()
    }
}

/// How often a channel's re-sync is tried within one maintenance round, and how long apart.
const RESYNC_TRIES: usize = 8;
const RESYNC_RETRY: Duration = Duration::from_millis(50);
