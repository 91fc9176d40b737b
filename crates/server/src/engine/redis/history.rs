//! Channel history on the Redis engine: a stream per channel that a `[[history.channels]]`
//! group names (`P{c:ck}:hist`, with its position hash `:hpos`; `keys.rs`), written by the
//! publish script itself (`PUBLISH_KEPT`), so the offset a message gets and the order in which
//! every node receives the channel's messages are one and the same. The node decides which
//! channels keep history and passes the group's limits to the script; other channels publish
//! exactly as before.
//!
//! - **Rewind.** A subscribe reads the stream's tail after its topic is subscribed and before
//!   it finishes; `local/history.rs` joins it to the live messages with no gap and no
//!   duplicate.
//! - **Repair.** A node that sees an offset jump on a channel's messages fetches the missing
//!   range from the stream before it delivers the newer message (at most [`MAX_REPAIR`]
//!   messages; what the stream no longer holds is counted and skipped).
//! - **Reads.** REST history reads the stream by offset (`HISTORY_READ`).
//! - **Loss.** When Redis loses the position hash, the next publish starts a new epoch.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use herald_protocol::Position;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::local::{position_of, Gap, Rewind};
use super::node::Node;
use super::wire::Event;
use crate::conn::Frame;
use crate::engine::hub::MessageFrames;
use crate::history::{message_id, Page, PageQuery, Policy, Retained, StoredMessage};
use crate::ids::{ChannelName, PeerId};

/// Most messages one gap repair fetches.
pub(super) const MAX_REPAIR: u64 = 1000;

/// An epoch for a channel whose history starts: 48 random bits in hex, as the memory store
/// draws them (the script keeps the current one while the history lives).
pub(super) fn new_epoch() -> String {
    let bits: u64 = rand::random();
    format!("{:012x}", bits & 0xffff_ffff_ffff)
}

/// What `HISTORY_READ` returned.
pub(super) struct Read {
    /// `None` when the channel has no history in Redis.
    pub epoch: Option<String>,
    pub has_more: bool,
    /// Stored `message` events, newest first.
    pub events: Vec<String>,
}

impl Node {
    /// The history group of a concrete channel, if it keeps history.
    pub(super) fn history_policy(&self, channel: &str) -> Option<Policy> {
        if self.history.is_empty() {
            return None;
        }
        self.history.policy_for(channel).copied()
    }

    /// Reads the newest `query.limit` entries between its exclusive bounds.
    pub(super) async fn read_history(
        &self,
        base: &str,
        query: &PageQuery,
        policy: &Policy,
    ) -> redis::RedisResult<Read> {
        let bound = |b: Option<u64>| b.map_or(String::new(), |b| b.to_string());
        let mut reply: Vec<String> = self
            .scripts
            .history_read
            .key(base)
            .arg(query.limit)
            .arg(bound(query.before))
            .arg(bound(query.after))
            .arg(policy.max_age.as_millis() as u64)
            .invoke_async(&mut self.conn())
            .await?;
        let events = reply.split_off(2.min(reply.len()));
        let mut head = reply.into_iter();
        let epoch = head.next().filter(|e| !e.is_empty());
        let has_more = head.next().as_deref() == Some("1");
        Ok(Read {
            epoch,
            has_more,
            events,
        })
    }

    /// A page of REST history.
    pub(super) async fn history_page(
        &self,
        base: &str,
        query: &PageQuery,
        policy: &Policy,
    ) -> redis::RedisResult<Page> {
        let read = self.read_history(base, query, policy).await?;
        let now = Instant::now();
        let messages = read
            .events
            .iter()
            .rev()
            .filter_map(|text| stored(text, now))
            .map(Arc::new)
            .collect();
        Ok(Page {
            retained: Retained {
                epoch: read.epoch.map(Arc::from),
                messages,
            },
            has_more: read.has_more,
        })
    }

    /// The rewind of a new subscriber: up to `policy.rewind` newest messages, encoded for it.
    /// `None` when the channel retains nothing.
    pub(super) async fn read_rewind(
        &self,
        base: &str,
        channel: &ChannelName,
        policy: &Policy,
        include_sender_metadata: bool,
    ) -> redis::RedisResult<Option<Rewind>> {
        let query = PageQuery {
            limit: policy.rewind,
            before: None,
            after: None,
        };
        let read = self.read_history(base, &query, policy).await?;
        let Some(epoch) = read.epoch else {
            return Ok(None);
        };
        let mut frames = Vec::with_capacity(read.events.len());
        let mut last = None;
        for text in read.events.iter().rev() {
            let Ok(event) = serde_json::from_str::<Event<'_>>(text) else {
                continue;
            };
            let Some((e, offset, ts)) = position_of(&event).filter(|(e, ..)| *e == epoch) else {
                continue;
            };
            let id = message_id(e, offset);
            let position = Position {
                id: &id,
                offset,
                epoch: e,
                ts,
            };
            frames.push(encode(
                channel.as_str(),
                &event,
                position,
                include_sender_metadata,
            ));
            last = Some(offset);
        }
        Ok(last.map(|last| Rewind {
            epoch: Arc::from(epoch),
            last,
            frames,
        }))
    }

    /// Fetches the messages a gap lost from the stream and delivers them in order. Whatever
    /// the stream no longer holds (trimmed, or Redis is unreachable) is counted as lost.
    pub(super) async fn repair(&self, gap: &Gap) {
        let missing = gap.to - gap.from + 1;
        let mut repaired = 0;
        if let Some(policy) = self.history_policy(gap.channel.as_str()) {
            let base = self
                .keys
                .channel_base(gap.app.as_str(), gap.channel.as_str());
            let query = PageQuery {
                limit: missing.min(MAX_REPAIR) as usize,
                before: Some(gap.to + 1),
                after: Some(gap.from - 1),
            };
            match self.read_history(&base, &query, &policy).await {
                Ok(read) if read.epoch.as_deref() == Some(&*gap.epoch) => {
                    for text in read.events.iter().rev() {
                        let Ok(event) = serde_json::from_str::<Event<'_>>(text) else {
                            continue;
                        };
                        self.local.on_channel_event_at(
                            gap.app.as_str(),
                            gap.channel.as_str(),
                            &event,
                            &self.id,
                            false,
                        );
                        repaired += 1;
                    }
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "history read for a gap repair failed"),
            }
        }
        self.history_repaired.fetch_add(repaired, Ordering::Relaxed);
        if repaired < missing {
            self.history_lost
                .fetch_add(missing - repaired, Ordering::Relaxed);
            tracing::warn!(
                channel = %gap.channel,
                lost = missing - repaired,
                "messages lost on the bus are no longer in the channel's history"
            );
        }
    }
}

/// A stored event as REST shows it.
fn stored(text: &str, now: Instant) -> Option<StoredMessage> {
    let event: Event<'_> = serde_json::from_str(text).ok()?;
    let (_, offset, ts) = position_of(&event)?;
    Some(StoredMessage {
        offset,
        ts,
        at: now,
        from: PeerId::new(event.from.as_deref().unwrap_or_default()),
        from_metadata: event.metadata().map(RawValue::to_owned),
        data: event.data.unwrap_or(RawValue::NULL).to_owned(),
    })
}

/// One rewind frame for a subscriber.
fn encode(channel: &str, event: &Event<'_>, position: Position<'_>, with_meta: bool) -> Frame {
    MessageFrames::new(
        channel,
        event.from.as_deref().unwrap_or_default(),
        event.data.unwrap_or(RawValue::NULL),
        event.metadata(),
    )
    .with_position(Some(position))
    .get(with_meta)
}
