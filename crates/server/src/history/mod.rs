//! Channel history: the recent messages of channels that `[[history.channels]]` names, for
//! rewind on subscribe and REST paging.
//!
//! A store keeps, per channel, a run of consecutive offsets (`1, 2, 3, …` within one epoch)
//! and trims it from the oldest end only, so "the messages after offset n" is always a
//! contiguous range. The engine appends under the channel's lock and fans the message out
//! under the same lock, and a subscribe reads its rewind under that lock too: so the rewind and
//! the live messages meet with no gap and no duplicate.
//!
//! [`HistoryStore`] is synchronous because it is called under a channel's (std) lock: the
//! memory store ([`memory::MemoryStore`]) and the disk store ([`disk::DiskStore`], the memory
//! store made durable) implement it.

pub mod disk;
pub mod memory;

use std::sync::Arc;
use std::time::Duration;

use herald_protocol::glob::Pattern;
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::config::HistoryConfig;
use crate::ids::{AppId, ChannelName, PeerId};

/// A channel of an app.
pub type HistoryKey = (AppId, ChannelName);

/// The largest page REST answers.
pub const MAX_PAGE: usize = 1000;

/// What one channel keeps: its `[[history.channels]]` group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub max_messages: usize,
    pub max_age: Duration,
    pub rewind: usize,
}

/// The `[[history.channels]]` groups, compiled; the first group that matches applies.
#[derive(Default)]
pub struct HistoryRules {
    groups: Vec<(Vec<Pattern>, Policy)>,
}

impl HistoryRules {
    pub fn new(config: &HistoryConfig) -> Self {
        HistoryRules {
            groups: config
                .channels
                .iter()
                .map(|g| {
                    let policy = Policy {
                        max_messages: g.max_messages,
                        max_age: Duration::from_secs(g.max_age_secs),
                        rewind: g.rewind,
                    };
                    (
                        g.patterns.iter().map(|p| Pattern::parse(p)).collect(),
                        policy,
                    )
                })
                .collect(),
        }
    }

    /// The policy of a concrete channel, or `None` when it keeps no history. Free when no
    /// group is configured.
    pub fn policy_for(&self, channel: &str) -> Option<&Policy> {
        self.groups
            .iter()
            .find(|(patterns, _)| patterns.iter().any(|p| p.matches(channel)))
            .map(|(_, policy)| policy)
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// A message to append.
pub struct NewMessage<'a> {
    pub from: &'a PeerId,
    pub from_metadata: Option<&'a RawValue>,
    pub data: &'a RawValue,
}

/// One retained message.
#[derive(Debug)]
pub struct StoredMessage {
    pub offset: u64,
    /// Server time of the publish, Unix milliseconds.
    pub ts: i64,
    /// When it was appended, on tokio's clock (age retention).
    pub at: Instant,
    pub from: PeerId,
    pub from_metadata: Option<Box<RawValue>>,
    pub data: Box<RawValue>,
}

impl StoredMessage {
    /// Its id: unique because epochs are random per channel history and offsets unique
    /// within one, and stable for as long as the message is retained.
    pub fn id(&self, epoch: &str) -> String {
        message_id(epoch, self.offset)
    }
}

/// The id of the message at `offset` in `epoch`.
pub fn message_id(epoch: &str, offset: u64) -> String {
    format!("{epoch}-{offset}")
}

/// Where an appended message landed.
#[derive(Debug, Clone)]
pub struct Appended {
    pub epoch: Arc<str>,
    pub offset: u64,
    pub ts: i64,
}

/// Retained messages of one channel, oldest first; `epoch` is `None` when nothing is retained.
#[derive(Debug, Default)]
pub struct Retained {
    pub epoch: Option<Arc<str>>,
    pub messages: Vec<Arc<StoredMessage>>,
}

/// Which page to read: the newest `limit` retained messages with offsets strictly between
/// `after` and `before` (each bound optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageQuery {
    pub limit: usize,
    pub before: Option<u64>,
    pub after: Option<u64>,
}

/// A page, oldest first. `has_more`: older retained messages within the query's bounds exist
/// before the page (ask again with `before` = the page's first offset).
#[derive(Debug, Default)]
pub struct Page {
    pub retained: Retained,
    pub has_more: bool,
}

/// A store's failure (none can fail in memory; a disk or network store will).
#[derive(Debug, Clone, thiserror::Error)]
#[error("history store: {0}")]
pub struct HistoryError(pub String);

/// Where history is kept. Called under channel locks: every method is short and never blocks
/// on the network.
pub trait HistoryStore: Send + Sync + 'static {
    /// Appends a message, trims the channel to `policy` and the store to its own bounds, and
    /// returns the message's position. The next offset of the channel is the last plus one
    /// unless the channel's history was lost, which starts a new epoch at offset 1.
    fn append(
        &self,
        key: &HistoryKey,
        policy: &Policy,
        message: NewMessage<'_>,
    ) -> Result<Appended, HistoryError>;

    /// The most recent `n` retained messages, oldest first.
    fn latest(&self, key: &HistoryKey, n: usize) -> Result<Retained, HistoryError>;

    /// One page (see [`PageQuery`]).
    fn page(&self, key: &HistoryKey, query: &PageQuery) -> Result<Page, HistoryError>;

    /// Drops what has outlived its channel's `max_age` (reads never return such entries; this
    /// gives their memory back).
    fn expire(&self);
}

/// A node's history: which channels keep it, and where.
#[derive(Clone)]
pub struct History {
    pub rules: Arc<HistoryRules>,
    pub store: Arc<dyn HistoryStore>,
}

impl Default for History {
    /// No channel keeps history.
    fn default() -> Self {
        History {
            rules: Arc::new(HistoryRules::default()),
            store: Arc::new(memory::MemoryStore::new(0)),
        }
    }
}

impl History {
    /// The memory store under the configured rules (whatever `store` says: see [`History::open`]).
    pub fn from_config(config: &HistoryConfig) -> Self {
        History {
            rules: Arc::new(HistoryRules::new(config)),
            store: Arc::new(memory::MemoryStore::new(config.max_memory_bytes)),
        }
    }

    /// The configured store (`[history] store`) under the configured rules: the disk store
    /// opens its database and restores what it retains, which can fail.
    pub fn open(config: &HistoryConfig) -> Result<Self, HistoryError> {
        if config.store != "disk" {
            return Ok(Self::from_config(config));
        }
        let rules = HistoryRules::new(config);
        let store = disk::DiskStore::open(
            std::path::Path::new(&config.path),
            config.max_memory_bytes,
            &rules,
        )?;
        Ok(History {
            rules: Arc::new(rules),
            store: Arc::new(store),
        })
    }

    /// The policy of a concrete channel, if it keeps history.
    pub fn policy_for(&self, channel: &str) -> Option<&Policy> {
        if self.rules.is_empty() {
            return None;
        }
        self.rules.policy_for(channel)
    }

    /// Gives expired entries' memory back every `period`, for as long as the store lives.
    /// Does nothing without rules, or outside a tokio runtime.
    pub fn spawn_expiry(&self, period: Duration) {
        if self.rules.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = Arc::downgrade(&self.store);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match store.upgrade() {
                    Some(store) => store.expire(),
                    None => return,
                }
            }
        });
    }
}
