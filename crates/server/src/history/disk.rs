//! The disk store (`[history] store = "disk"`): the memory store made durable, for a single
//! node whose history must survive a restart or a `kill -9`.
//!
//! - **Reads** (rewind under a channel's lock, REST pages) are served by a [`MemoryStore`]
//!   holding exactly what is retained, so they never touch the disk. Retention (count, age,
//!   the node-wide `max_memory_bytes`) is the memory store's; the disk follows it.
//! - **Appends** go to the memory store (which gives the offset) and then into one redb write
//!   transaction committed with `Durability::Immediate` (one `fsync`) before `append` returns:
//!   the engine fans a message out and the publisher gets its position only after that, so a
//!   message anyone has seen is on disk, and an id is never given to two messages. The same
//!   transaction deletes the channel's entries that count retention dropped (or all of them
//!   when the channel started a new epoch).
//! - **Entries dropped elsewhere** (by age, or by the byte cap from another channel) are
//!   deleted by [`HistoryStore::expire`] every 5 s: one transaction that compares every
//!   channel on disk with the memory store. Until then they sit on disk but are never read.
//! - **Start**: every entry is read back in append order and restored with its epoch and
//!   offset, so nothing lost means the same epoch. A database redb cannot open as one (torn,
//!   garbage, unknown format) is renamed aside and a new one begins: its channels start new
//!   epochs. A database another process holds open is an error, not a reset.
//!
//! One mutex (`writer`) serialises appends, so the disk receives offsets in the order memory
//! gave them; it is held for the commit, which is the cost of durability (see ARCHITECTURE.md).
//! The sweep runs on the expiry tick's task and holds it too, for one short transaction.
//!
//! A commit that fails (a full disk) fails the append: the engine still delivers the message,
//! without a position, but the memory store keeps it, so until retention drops it readers see
//! an entry that a restart will not bring back (and whose offset the restarted node reuses).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::memory::MemoryStore;
use super::{
    Appended, HistoryError, HistoryKey, HistoryRules, HistoryStore, NewMessage, Page, PageQuery,
    Policy, Retained, StoredMessage,
};
use crate::clock::unix_now_ms;
use crate::ids::{AppId, ChannelName, PeerId};
use crate::sync::lock;

/// (app, channel, offset) → the encoded message.
const MESSAGES: TableDefinition<'_, (&str, &str, u64), &[u8]> = TableDefinition::new("messages");
/// (app, channel) → the epoch of what `MESSAGES` holds for it.
const EPOCHS: TableDefinition<'_, (&str, &str), &str> = TableDefinition::new("epochs");

/// The database's file name inside `[history] path`.
pub const FILE_NAME: &str = "history.redb";

/// A redb result as the store's, with what was being done.
macro_rules! db {
    ($context:expr, $e:expr) => {
        $e.map_err(|e| HistoryError(format!("{}: {e}", $context)))
    };
}

/// See the module's doc.
pub struct DiskStore {
    memory: MemoryStore,
    db: Database,
    /// Serialises appends and the expiry sweep (see the module's doc).
    writer: Mutex<()>,
}

impl DiskStore {
    /// Opens (or creates) the store in directory `dir` and restores what it retains under
    /// `rules`; `max_bytes` caps it as `max_memory_bytes` caps the memory store.
    pub fn open(dir: &Path, max_bytes: u64, rules: &HistoryRules) -> Result<Self, HistoryError> {
        let db = crate::redb_file::open_or_replace(
            &dir.join(FILE_NAME),
            "history database",
            "history starts anew",
        )
        .map_err(HistoryError)?;
        let store = DiskStore {
            memory: MemoryStore::new(max_bytes),
            db,
            writer: Mutex::new(()),
        };
        store.restore(rules)?;
        Ok(store)
    }

    /// The memory store that serves reads (its usage is the store's).
    pub fn memory(&self) -> &MemoryStore {
        &self.memory
    }

    /// Reads every entry back and hands it to the memory store in append order.
    fn restore(&self, rules: &HistoryRules) -> Result<(), HistoryError> {
        let mut entries = Vec::new();
        let tx = db!("read", self.db.begin_read())?;
        let (epochs, messages) = match (tx.open_table(EPOCHS), tx.open_table(MESSAGES)) {
            (Ok(e), Ok(m)) => (e, m),
            // A new database has no tables yet.
            _ => return Ok(()),
        };
        let now_ms = unix_now_ms();
        let now = Instant::now();
        for row in db!("read", epochs.iter())? {
            let (k, epoch) = db!("read", row)?;
            let (app, channel) = k.value();
            let Some(policy) = rules.policy_for(channel) else {
                continue; // no longer kept: the next sweep deletes it
            };
            let key: HistoryKey = (AppId::new(app), ChannelName::new(channel));
            let epoch: Arc<str> = Arc::from(epoch.value());
            // Append order across channels is wall time, made monotonic per channel so a
            // clock step back cannot reorder one channel's offsets.
            let mut order = i64::MIN;
            for row in db!(
                "read",
                messages.range((app, channel, 0)..=(app, channel, u64::MAX))
            )? {
                let (k, v) = db!("read", row)?;
                let offset = k.value().2;
                let Some(mut message) = decode(offset, v.value()) else {
                    tracing::warn!(
                        channel,
                        offset,
                        "history entry unreadable: rest of the channel dropped"
                    );
                    break;
                };
                let age = Duration::from_millis(now_ms.saturating_sub(message.ts).max(0) as u64);
                if age >= policy.max_age {
                    continue;
                }
                message.at = now.checked_sub(age).unwrap_or(now);
                order = order.max(message.ts);
                entries.push((order, key.clone(), *policy, epoch.clone(), message));
            }
        }
        entries.sort_by_key(|a| a.0);
        for (_, key, policy, epoch, message) in entries {
            self.memory.restore(&key, &policy, &epoch, message);
        }
        Ok(())
    }

    /// Deletes from disk what the memory store no longer retains: channels it dropped (or
    /// restarted in a new epoch) entirely, the others below their first offset.
    fn sweep(&self) -> Result<(), HistoryError> {
        let _writer = lock(&self.writer);
        let mut tx = db!("sweep", self.db.begin_write())?;
        db!("sweep", tx.set_durability(Durability::Immediate))?;
        let mut changed = false;
        {
            let mut epochs = db!("sweep", tx.open_table(EPOCHS))?;
            let mut messages = db!("sweep", tx.open_table(MESSAGES))?;
            let mut gone = Vec::new();
            for row in db!("sweep", epochs.iter())? {
                let (k, epoch) = db!("sweep", row)?;
                let (app, channel) = k.value();
                let key: HistoryKey = (AppId::new(app), ChannelName::new(channel));
                let below = match self.memory.span(&key) {
                    Some((e, first)) if *e == *epoch.value() => first,
                    _ => {
                        gone.push((app.to_owned(), channel.to_owned()));
                        u64::MAX
                    }
                };
                let range = (app, channel, 0)..(app, channel, below);
                if db!("sweep", messages.range(range.clone()))?
                    .next()
                    .is_some()
                {
                    db!("sweep", messages.retain_in(range, |_, _| false))?;
                    changed = true;
                }
            }
            for (app, channel) in &gone {
                let (app, channel) = (app.as_str(), channel.as_str());
                db!(
                    "sweep",
                    messages.retain_in((app, channel, 0)..=(app, channel, u64::MAX), |_, _| false)
                )?;
                db!("sweep", epochs.remove((app, channel)))?;
                changed = true;
            }
        }
        if changed {
            db!("sweep", tx.commit())
        } else {
            db!("sweep", tx.abort())
        }
    }
}

/// `ts` (8 bytes LE), `from` (u32 LE length, bytes), `fromMetadata` (u32 LE length or
/// `u32::MAX` for none, bytes), then `data` to the end.
fn encode(ts: i64, message: &NewMessage<'_>) -> Vec<u8> {
    let from = message.from.as_str().as_bytes();
    let meta = message.from_metadata.map(|m| m.get().as_bytes());
    let data = message.data.get().as_bytes();
    let mut out = Vec::with_capacity(16 + from.len() + meta.map_or(0, <[u8]>::len) + data.len());
    out.extend_from_slice(&ts.to_le_bytes());
    out.extend_from_slice(&(from.len() as u32).to_le_bytes());
    out.extend_from_slice(from);
    match meta {
        Some(meta) => {
            out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
            out.extend_from_slice(meta);
        }
        None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
    out.extend_from_slice(data);
    out
}

fn decode(offset: u64, bytes: &[u8]) -> Option<StoredMessage> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (bytes.get(..n)?, bytes.get(n..)?);
        *bytes = rest;
        Some(head)
    }
    fn u32_at(bytes: &mut &[u8]) -> Option<u32> {
        Some(u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?))
    }
    fn json(bytes: &[u8]) -> Option<Box<RawValue>> {
        RawValue::from_string(String::from_utf8(bytes.to_vec()).ok()?).ok()
    }
    let mut rest = bytes;
    let ts = i64::from_le_bytes(take(&mut rest, 8)?.try_into().ok()?);
    let from_len = u32_at(&mut rest)? as usize;
    let from = std::str::from_utf8(take(&mut rest, from_len)?).ok()?;
    let from_metadata = match u32_at(&mut rest)? {
        u32::MAX => None,
        n => Some(json(take(&mut rest, n as usize)?)?),
    };
    Some(StoredMessage {
        offset,
        ts,
        at: Instant::now(),
        from: PeerId::new(from),
        from_metadata,
        data: json(rest)?,
    })
}

impl HistoryStore for DiskStore {
    fn append(
        &self,
        key: &HistoryKey,
        policy: &Policy,
        message: NewMessage<'_>,
    ) -> Result<Appended, HistoryError> {
        let _writer = lock(&self.writer);
        // The record's `ts` is patched in once the memory store has chosen it.
        let mut record = encode(0, &message);
        let appended = self.memory.append(key, policy, message)?;
        record[..8].copy_from_slice(&appended.ts.to_le_bytes());
        let (app, channel) = (key.0.as_str(), key.1.as_str());
        let mut tx = db!("append", self.db.begin_write())?;
        db!("append", tx.set_durability(Durability::Immediate))?;
        {
            let mut epochs = db!("append", tx.open_table(EPOCHS))?;
            let mut messages = db!("append", tx.open_table(MESSAGES))?;
            let same_epoch = db!("append", epochs.get((app, channel)))?
                .is_some_and(|e| *e.value() == *appended.epoch);
            let below = if same_epoch {
                match self.memory.span(key) {
                    Some((epoch, first)) if epoch == appended.epoch => first,
                    _ => appended.offset,
                }
            } else {
                db!("append", epochs.insert((app, channel), &*appended.epoch))?;
                u64::MAX
            };
            db!(
                "append",
                messages.retain_in((app, channel, 0)..(app, channel, below), |_, _| false)
            )?;
            db!(
                "append",
                messages.insert((app, channel, appended.offset), record.as_slice())
            )?;
        }
        db!("append", tx.commit())?;
        Ok(appended)
    }

    fn latest(&self, key: &HistoryKey, n: usize) -> Result<Retained, HistoryError> {
        self.memory.latest(key, n)
    }

    fn page(&self, key: &HistoryKey, query: &PageQuery) -> Result<Page, HistoryError> {
        self.memory.page(key, query)
    }

    fn expire(&self) {
        self.memory.expire();
        if let Err(e) = self.sweep() {
            tracing::warn!(error = %e, "history sweep failed");
        }
    }
}

#[cfg(test)]
#[path = "disk_tests.rs"]
mod tests;
