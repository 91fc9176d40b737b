//! Lossless reconnect on the Redis engine (`docs/resume.md`): a dropped stable peer's confirmed
//! positions and its direct inbox live in Redis, next to its route hash (`resume_scripts.rs`),
//! so the peer can resume on any node, and a node that dies after parking loses nothing.
//!
//! - **Park.** When a JWT connection drops, one script takes it out of the route and, unless
//!   the peer is connected elsewhere, keeps its positions and opens its inbox for the window.
//! - **Take.** A resubscribe takes the channel's position in one `HGET`+`HDEL` script: only
//!   one subscribe, on whichever node, consumes it.
//! - **Replay.** Read from the channel's stream after the topic is subscribed and handed to
//!   the subscribe like a rewind (`local/history.rs` joins it to the live messages with no
//!   gap and no duplicate), all or nothing.
//! - **Directs.** A direct to a peer with no route goes to its inbox when it is parked; the
//!   peer's next registration counts its route and takes the inbox in one script, so a direct
//!   is either held or routed, and held ones are queued first, right behind the `welcome`.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use herald_protocol::{encode, Position};
use tokio::time::Instant;

use super::local::{position_of, Rewind};
use super::node::{unavailable, Node};
use super::resume_lazy::{self as lazy, LazyPositions};
use super::resume_scripts::{decode_since, encode_since, SCRIPTS};
use super::run_bounded;
use super::webhook_spec::{OFFLINE, ONLINE};
use super::wire::Event;
use crate::conn::{Conn, Frame};
use crate::engine::hub::{channel_key, MessageFrames};
use crate::engine::{Direct, EngineError, SubscribeRequest};
use crate::history::message_id;
use crate::ids::{AppId, ChannelName, ConnId, PeerId};
use crate::resume::book::{BookStats, Queued};
use crate::resume::{Recovery, ResumeFrom, ResumeSettings, Since};
use crate::sync::lock;

/// A stable peer id (a JWT's `sub`) can come back; a publishable key's is fresh per connection.
fn is_stable(conn: &Conn) -> bool {
    conn.kind == "token"
}

/// The node's side of resume: settings, and what it must remember between calls.
pub(super) struct Resume {
    settings: ResumeSettings,
    /// Confirmed positions of live connections, written lazily (`resume_lazy.rs`).
    pub(super) lazy: Arc<LazyPositions>,
    /// Connections whose route count `park` took back, so their disconnect does not again.
    parked: Mutex<HashSet<ConnId>>,
    /// When this node parked peers in the last window (for the gauge).
    parked_at: Mutex<VecDeque<Instant>>,
    directs_expired: AtomicU64,
}

impl Resume {
    pub(super) fn new(settings: ResumeSettings) -> Resume {
        Resume {
            settings,
            lazy: Arc::default(),
            parked: Mutex::new(HashSet::new()),
            parked_at: Mutex::new(VecDeque::new()),
            directs_expired: AtomicU64::new(0),
        }
    }

    /// The task that writes confirmed positions to Redis, for as long as the node runs.
    pub(super) fn flush_task(&self, node: Arc<Node>) -> impl std::future::Future<Output = ()> {
        lazy::flush(node, self.lazy.clone(), self.settings.window)
    }

    /// A deliberate close: what the connection wrote lazily goes (it must not resume).
    pub(super) async fn forget_lazy(&self, node: &Node, conn: &Conn) {
        self.lazy.forget(node, conn).await;
    }

    /// A watermark pong confirmed these positions: written to Redis with the next batch.
    pub(super) fn confirmed(&self, conn: &Conn, positions: Vec<(ChannelName, Since)>) {
        if self.applies(conn) {
            self.lazy.confirmed(conn, positions);
        }
    }

    /// Whether this connection's peer can be parked and resumed.
    pub(super) fn applies(&self, conn: &Conn) -> bool {
        self.settings.enabled() && is_stable(conn)
    }

    fn count_expired(&self, n: u64) {
        if n > 0 {
            self.directs_expired.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Registers a stable peer's connection: counts it in the route and takes its inbox in
    /// one script, then queues the held directs (behind the `welcome`, which follows).
    pub(super) async fn register(&self, node: &Node, conn: &Arc<Conn>) {
        let base = node
            .keys
            .route_base(conn.app.as_str(), conn.peer_id.as_str());
        let (_in_use, written) = node.index.use_entry(&base);
        node.local.hub.peers.register(conn);
        let result = match node.ensure_indexed(&base, written).await {
            Ok(()) => {
                let mut call = SCRIPTS.register.key(&base);
                call.arg(node.instance())
                    .arg(conn.peer_id.as_str())
                    .arg(node.grace.as_millis() as u64);
                let spec = node
                    .route_webhook_spec(conn.app.as_str(), &base, ONLINE | OFFLINE)
                    .await;
                spec.apply(&mut call);
                call.invoke_async::<Vec<String>>(&mut node.conn()).await
            }
            Err(err) => Err(err),
        };
        match result {
            Ok(reply) => {
                let mut reply = reply.into_iter();
                let expired = reply.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                self.count_expired(expired);
                for frame in reply {
                    conn.deliver(Frame::from(frame));
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "route and inbox of a reconnecting peer not read");
                node.mark_trouble();
            }
        }
    }

    /// A stable peer's connection dropped: out of the route, and parked unless it is
    /// connected elsewhere. Written to Redis at once, so the node may die right after.
    pub(super) async fn park(
        &self,
        node: &Node,
        conn: &Arc<Conn>,
        positions: Vec<(ChannelName, Since)>,
    ) {
        let base = node
            .keys
            .route_base(conn.app.as_str(), conn.peer_id.as_str());
        let (_in_use, _) = node.index.use_entry(&base);
        node.local.hub.peers.unregister(conn);
        // The park script drops what this instance wrote lazily.
        self.lazy.end(conn);
        let mut call = SCRIPTS.park.key(&base);
        call.arg(node.instance())
            .arg(self.settings.window.as_millis() as u64)
            .arg(conn.peer_id.as_str())
            .arg(node.grace.as_millis() as u64);
        for (channel, since) in &positions {
            let (offset, epoch) = encode_since(since);
            call.arg(channel.as_str()).arg(offset).arg(epoch);
        }
        let spec = node
            .route_webhook_spec(conn.app.as_str(), &base, ONLINE | OFFLINE)
            .await;
        spec.apply(&mut call);
        match call.invoke_async::<i64>(&mut node.conn()).await {
            Ok(parked) => {
                lock(&self.parked).insert(conn.id);
                if parked == 1 {
                    lock(&self.parked_at).push_back(Instant::now());
                }
            }
            Err(err) => {
                // The disconnect that follows takes the route back; the peer is not parked.
                tracing::warn!(error = %err, "parking a dropped peer failed");
                node.mark_trouble();
            }
        }
    }

    /// True (once) when `park` already took this connection out of the route.
    pub(super) fn was_parked(&self, conn: &Conn) -> bool {
        lock(&self.parked).remove(&conn.id)
    }

    pub(super) async fn take(
        &self,
        node: &Node,
        app: &AppId,
        peer: &PeerId,
        channel: &ChannelName,
    ) -> Option<Since> {
        if !self.settings.enabled() {
            return None;
        }
        let base = node.keys.route_base(app.as_str(), peer.as_str());
        let taken: Option<String> = SCRIPTS
            .take
            .key(&base)
            .arg(channel.as_str())
            .invoke_async(&mut node.conn())
            .await
            .ok()?;
        match taken {
            Some(taken) => decode_since(&taken),
            // Not parked: perhaps its node died before it could park it.
            None => lazy::take(node, app, peer, channel).await,
        }
    }

    /// A direct that found no route: held when the peer is parked, re-sent when a connection
    /// registered meanwhile.
    pub(super) async fn queue_direct(
        &self,
        node: &Node,
        d: Direct<'_>,
    ) -> Result<Queued, EngineError> {
        if !self.settings.enabled() {
            return Ok(Queued::NotParked);
        }
        let base = node.keys.route_base(d.app.as_str(), d.to.as_str());
        let frame = encode::direct(d.from.as_str(), d.data, d.from_metadata);
        let mut outcome = self.queue_once(node, &base, &frame).await?;
        if outcome == 0 && lazy::park_orphan(node, &base, self.settings.window).await {
            outcome = self.queue_once(node, &base, &frame).await?;
        }
        Ok(match outcome {
            -1 => match node.send_direct(d).await? {
                0 => Queued::NotParked,
                n => Queued::Live(n),
            },
            1 => Queued::Queued,
            -2 => Queued::Full,
            _ => Queued::NotParked,
        })
    }

    /// One run of the queue script; returns its outcome.
    async fn queue_once(&self, node: &Node, base: &str, frame: &str) -> Result<i64, EngineError> {
        let (outcome, expired): (i64, u64) = SCRIPTS
            .queue
            .key(base)
            .arg(frame)
            .arg(self.settings.inbox_max_messages)
            .arg(self.settings.inbox_max_bytes)
            .arg(self.settings.inbox_ttl.as_millis() as u64)
            .invoke_async(&mut node.conn())
            .await
            .map_err(unavailable)?;
        self.count_expired(expired);
        Ok(outcome)
    }

    /// Each history channel's last position delivered here (read under its lock). A channel
    /// that delivered nothing since this node started listening to it is at the stream's
    /// head, read from Redis (a message still on its way over pub/sub at that instant would
    /// be counted as read: `docs/resume.md`).
    pub(super) async fn positions(
        &self,
        node: &Node,
        app: &AppId,
        channels: &[ChannelName],
    ) -> Vec<(ChannelName, Since)> {
        let mut known = Vec::new();
        let mut unknown = Vec::new();
        for channel in channels {
            if node.history_policy(channel.as_str()).is_none() {
                continue;
            }
            match node.local.cursor(&channel_key(app, channel)) {
                Some(Some((epoch, offset))) => known.push((
                    channel.clone(),
                    Since {
                        epoch: Some(epoch),
                        offset,
                    },
                )),
                Some(None) => unknown.push(channel.clone()),
                None => {}
            }
        }
        let heads = run_bounded(
            unknown
                .into_iter()
                .map(|c| async move {
                    let head = node.history_head(app, &c).await;
                    (c, head)
                })
                .collect(),
        )
        .await;
        for (channel, head) in heads {
            let Ok(head) = head else { continue };
            match node.local.cursor(&channel_key(app, &channel)) {
                Some(Some((epoch, offset))) => known.push((
                    channel,
                    Since {
                        epoch: Some(epoch),
                        offset,
                    },
                )),
                Some(None) => known.push((channel, head)),
                None => {}
            }
        }
        known
    }

    pub(super) fn stats(&self) -> BookStats {
        let now = Instant::now();
        let mut parked_at = lock(&self.parked_at);
        while parked_at
            .front()
            .is_some_and(|at| *at + self.settings.window <= now)
        {
            parked_at.pop_front();
        }
        BookStats {
            parked_peers: parked_at.len(),
            inbox_directs: 0,
            directs_expired: self.directs_expired.load(Ordering::Relaxed),
        }
    }
}

impl Node {
    /// The channel's history head from Redis: its last offset, or "no history yet".
    async fn history_head(&self, app: &AppId, channel: &ChannelName) -> redis::RedisResult<Since> {
        let base = self.keys.channel_base(app.as_str(), channel.as_str());
        let (epoch, offset): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(format!("{base}:hpos"))
            .arg("epoch")
            .arg("offset")
            .query_async(&mut self.conn())
            .await?;
        Ok(match epoch.filter(|e| !e.is_empty()) {
            Some(epoch) => Since {
                epoch: Some(Arc::from(epoch)),
                offset: offset.unwrap_or(0),
            },
            None => Since {
                epoch: None,
                offset: 0,
            },
        })
    }

    /// A resuming subscribe's replay: every retained message after `from.since`, read after
    /// the topic is subscribed and handed to the subscribe as its rewind, or nothing (the
    /// epoch changed, retention passed the position, the gap is longer than allowed, or Redis
    /// did not answer).
    pub(super) async fn replay(
        &self,
        base: &str,
        req: &SubscribeRequest<'_>,
        from: &ResumeFrom,
    ) -> Recovery {
        let Some(policy) = self.history_policy(req.channel.as_str()) else {
            return Recovery::Failed;
        };
        let since = &from.since;
        let read: redis::RedisResult<Vec<String>> = SCRIPTS
            .read
            .key(base)
            .arg(since.offset)
            .arg(from.max_replay)
            .arg(policy.max_age.as_millis() as u64)
            .invoke_async(&mut self.conn())
            .await;
        let read = match read {
            Ok(read) => read,
            Err(err) => {
                tracing::warn!(channel = %req.channel, error = %err, "history read for a resume failed");
                return Recovery::Failed;
            }
        };
        let mut read = read.into_iter();
        let epoch = read.next().unwrap_or_default();
        if epoch.is_empty() {
            // No history now: a position from before any history has nothing to miss; one in
            // an epoch may have had messages after it that expired since.
            return if since.epoch.is_none() {
                Recovery::Recovered { replayed: 0 }
            } else {
                Recovery::Failed
            };
        }
        if since.epoch.as_deref().is_some_and(|e| e != epoch) {
            return Recovery::Failed;
        }
        let last: u64 = read.next().and_then(|l| l.parse().ok()).unwrap_or(0);
        let epoch: Arc<str> = Arc::from(epoch);
        let missing = last.saturating_sub(since.offset);
        if missing > from.max_replay as u64 {
            return Recovery::Failed;
        }
        let mut frames = Vec::new();
        // The head and the entries were read in one script: entries past the head cannot be.
        for (expected, text) in (since.offset + 1..=last).zip(read) {
            let Ok(event) = serde_json::from_str::<Event<'_>>(&text) else {
                return Recovery::Failed;
            };
            let Some((e, offset, ts)) = position_of(&event) else {
                return Recovery::Failed;
            };
            if *e != *epoch || offset != expected {
                return Recovery::Failed;
            }
            let id = message_id(e, offset);
            let position = Position {
                id: &id,
                offset,
                epoch: e,
                ts,
            };
            frames.push(
                MessageFrames::new(
                    req.channel.as_str(),
                    event.from.as_deref().unwrap_or_default(),
                    event.data.unwrap_or(serde_json::value::RawValue::NULL),
                    event.metadata(),
                )
                .with_position(Some(position))
                .get(req.include_sender_metadata),
            );
        }
        if frames.len() as u64 != missing {
            return Recovery::Failed;
        }
        let replayed = frames.len();
        let rewind = Rewind {
            epoch,
            last,
            frames,
        };
        self.local.set_rewind(req.conn, req.channel, rewind);
        Recovery::Recovered { replayed }
    }
}
