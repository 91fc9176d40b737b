//! Presence on the Redis engine: an exact subscribe joins the channel in Redis (one script
//! that records this node's hold, publishes `joined` when the peer is new anywhere, and
//! returns the roster with its sequence number); removing the last local subscription of a
//! peer leaves, at once or after the reconnect grace.
//!
//! The path of a subscribe: `begin_subscribe` (local: buffer events, listen to the topic) →
//! wait for the bus → index the channel → `join` (script) → `finish_subscribe` (local: ack,
//! snapshot, buffered events).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::await_confirm;
use super::local::{roster_from_flat, Removal, RosterRead, SubscribeStart};
use super::node::{unavailable, Node};
use crate::conn::Conn;
use crate::engine::{Departure, EngineError, Member, SubscribeRequest};
use crate::ids::{AppId, ChannelName, PeerId};
use crate::resume::{Recovery, ResumeFrom};
use crate::sync::lock;

/// What `JOIN` returned: the join's sequence number, the roster at it (none when the node's
/// mirror was current), and the epoch of the channel's numbering.
struct JoinRead {
    seq: u64,
    roster: Option<Vec<String>>,
    epoch: String,
}

impl Node {
    /// Subscribes a connection to a concrete channel. Returns true when the subscription is new.
    pub(super) async fn subscribe_channel(
        &self,
        req: SubscribeRequest<'_>,
    ) -> Result<bool, EngineError> {
        Ok(self.subscribe_channel_from(req, None).await?.0)
    }

    /// [`Node::subscribe_channel`], resuming from a position when `from` is given (its replay
    /// takes the place of the rewind: `resume.rs`).
    pub(super) async fn subscribe_channel_from(
        &self,
        mut req: SubscribeRequest<'_>,
        from: Option<&ResumeFrom>,
    ) -> Result<(bool, Option<Recovery>), EngineError> {
        let conn = req.conn;
        let base = self
            .keys
            .channel_base(conn.app.as_str(), req.channel.as_str());
        let (_in_use, written) = self.index.use_entry(&base);
        let SubscribeStart {
            duplicate,
            confirm,
            mirror,
            losses,
        } = self
            .local
            .begin_subscribe(conn, req.channel, req.include_sender_metadata);
        if let Err(err) = await_confirm(confirm).await {
            self.local.abort_subscribe(conn, req.channel, duplicate);
            return Err(err);
        }
        let subscriber_delta = if duplicate { 0 } else { 1 };
        let joined = match self.ensure_indexed(&base, written).await {
            Ok(()) => self.join(&base, conn, subscriber_delta, mirror).await,
            Err(err) => Err(err),
        };
        let read = match joined {
            Ok(read) => read,
            Err(err) => {
                self.local.abort_subscribe(conn, req.channel, duplicate);
                self.mark_trouble();
                return Err(unavailable(err));
            }
        };
        let mut recovery = None;
        if let Some(from) = from {
            let outcome = if duplicate {
                Recovery::Failed
            } else {
                self.replay(&base, &req, from).await
            };
            if let Some((recovered, failed)) = &from.acks {
                let ack = match outcome {
                    Recovery::Recovered { .. } => recovered,
                    Recovery::Failed => failed,
                };
                req.ack = Some(ack.clone());
            }
            recovery = Some(outcome);
        } else if !duplicate {
            // The topic is subscribed: every message after this read reaches the node live.
            // A failed read costs the rewind, not the subscription (as on the memory engine).
            if let Err(err) = self.rewind(&base, &req).await {
                tracing::warn!(channel = %req.channel, error = %err, "history read for rewind failed");
            }
        }
        let (seq, roster, epoch) = (read.seq, read.roster, read.epoch);
        let finished = match &roster {
            Some(roster) => {
                let read = RosterRead::Full {
                    seq,
                    roster,
                    epoch: &epoch,
                    losses,
                };
                self.local
                    .finish_read(conn, req.channel, duplicate, req.ack.clone(), read)
            }
            None => self.local.finish_read(
                conn,
                req.channel,
                duplicate,
                req.ack.clone(),
                RosterRead::Mirror { seq },
            ),
        };
        if !finished {
            // The mirror stopped being trustworthy while the join ran: read the roster.
            let (seq, roster) = match self.roster(conn.app.as_str(), req.channel.as_str()).await {
                Ok(read) => read,
                Err(err) => {
                    self.local.abort_subscribe(conn, req.channel, duplicate);
                    self.mark_trouble();
                    return Err(unavailable(err));
                }
            };
            self.local
                .finish_subscribe(conn, req.channel, duplicate, req.ack, seq, &roster);
        }
        if !duplicate {
            self.local.hub.count_subscribed();
        }
        Ok((!duplicate, recovery))
    }

    /// Removes one local subscription to a concrete channel and settles its presence hold.
    pub(super) async fn unsubscribe_channel(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        channel: &ChannelName,
        departure: Departure,
    ) -> bool {
        let base = self.keys.channel_base(conn.app.as_str(), channel.as_str());
        let in_use = self.index.use_entry(&base);
        let Some(outcome) = self.local.remove(conn, channel, departure, self.grace) else {
            return false;
        };
        self.local.hub.count_unsubscribed();
        let adjusted: redis::RedisResult<i64> = redis::cmd("HINCRBY")
            .arg(self.keys.subscribers_key(&base))
            .arg(self.instance())
            .arg(-1)
            .query_async(&mut self.conn())
            .await;
        if adjusted.is_err() {
            self.mark_trouble();
        }
        match outcome {
            Removal::Kept => {}
            Removal::LeaveNow => self.leave(&conn.app, channel, &conn.peer_id).await,
            Removal::LeaveAfterGrace(generation) => {
                let node = self.clone();
                let (app, channel, peer) =
                    (conn.app.clone(), channel.clone(), conn.peer_id.clone());
                tokio::spawn(async move {
                    let grace = node.grace;
                    if node
                        .local
                        .wait_out_grace(grace, &app, &channel, &peer, generation)
                        .await
                    {
                        let (_in_use, _) = node.index.use_entry(&base);
                        node.leave(&app, &channel, &peer).await;
                    }
                });
            }
        }
        drop(in_use);
        true
    }

    /// The channel's roster, one entry per peer.
    pub(super) async fn channel_members(
        &self,
        app: &AppId,
        channel: &ChannelName,
    ) -> Result<Vec<Member>, EngineError> {
        let (_, flat) = self
            .roster(app.as_str(), channel.as_str())
            .await
            .map_err(unavailable)?;
        Ok(roster_from_flat(&flat, None))
    }

    /// A channel's roster (flat peer → metadata list) and its sequence number, read together.
    pub(super) async fn roster(
        &self,
        app: &str,
        channel: &str,
    ) -> redis::RedisResult<(u64, Vec<String>)> {
        self.scripts
            .roster
            .key(self.keys.channel_base(app, channel))
            .invoke_async(&mut self.conn())
            .await
    }

    /// Reads the rewind of a new subscription to a channel that keeps history, for
    /// `finish_read` to queue after the snapshot.
    async fn rewind(&self, base: &str, req: &SubscribeRequest<'_>) -> redis::RedisResult<()> {
        let Some(policy) = self
            .history_policy(req.channel.as_str())
            .filter(|p| p.rewind > 0)
        else {
            return Ok(());
        };
        let rewind = self
            .read_rewind(base, req.channel, &policy, req.include_sender_metadata)
            .await?;
        if let Some(rewind) = rewind {
            self.local.set_rewind(req.conn, req.channel, rewind);
        }
        Ok(())
    }

    async fn join(
        &self,
        base: &str,
        conn: &Conn,
        subscriber_delta: i64,
        mirror: Option<(String, u64)>,
    ) -> redis::RedisResult<JoinRead> {
        let meta = conn.peer_metadata.as_ref().map_or("", |m| m.get());
        let (epoch, seq) = mirror.unwrap_or_default();
        let spec = self
            .channel_webhook_spec(
                base,
                super::webhook_spec::JOINED | super::webhook_spec::OCCUPIED,
            )
            .await;
        let mut invocation = self.scripts.join.key(base);
        invocation
            .arg(self.publish_command())
            .arg(self.keys.topic_of_base(base))
            .arg(self.instance())
            .arg(conn.peer_id.as_str())
            .arg(meta)
            .arg(subscriber_delta)
            .arg(self.reassert_generation.load(Ordering::Acquire))
            .arg(epoch)
            .arg(seq);
        spec.apply(&mut invocation);
        let (_first, seq, roster, epoch): (i64, u64, Option<Vec<String>>, String) =
            invocation.invoke_async(&mut self.conn()).await?;
        Ok(JoinRead { seq, roster, epoch })
    }

    /// Drops this node's hold of (channel, peer), then re-checks: if the peer subscribed again
    /// locally while the script ran, its hold is restored.
    async fn leave(self: &Arc<Self>, app: &AppId, channel: &ChannelName, peer: &PeerId) {
        let base = self.keys.channel_base(app.as_str(), channel.as_str());
        let (_in_use, written) = self.index.use_entry(&base);
        let spec = self
            .channel_webhook_spec(
                &base,
                super::webhook_spec::LEFT | super::webhook_spec::VACATED,
            )
            .await;
        let mut invocation = self.scripts.leave.key(&base);
        invocation
            .arg(self.publish_command())
            .arg(self.keys.topic_of_base(&base))
            .arg(self.instance())
            .arg(peer.as_str());
        spec.apply(&mut invocation);
        let result: redis::RedisResult<i64> = invocation.invoke_async(&mut self.conn()).await;
        if result.is_err() {
            lock(&self.departed).push((base, peer.as_str().to_string()));
            self.mark_trouble();
            return;
        }
        if let Some(conn) = self.local.any_holder(app, channel, peer) {
            let rejoined = match self.ensure_indexed(&base, written).await {
                Ok(()) => self.join(&base, &conn, 0, None).await.map(|_| ()),
                Err(err) => Err(err),
            };
            if rejoined.is_err() {
                self.mark_trouble();
            }
        }
    }
}
