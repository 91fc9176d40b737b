//! The memory engine's webhook outbox kept on disk (`[history] store = "disk"`), so events
//! queued for an endpoint that is down survive a restart or a `kill -9`.
//!
//! - **Its own file**, `webhooks.redb` beside the history store's `history.redb`: redb has one
//!   writer per database, and the history store holds it for an fsync on every append under a
//!   channel's lock; sharing it would put that append behind this outbox's batch commits. Its
//!   own file also means a torn outbox is set aside without touching history.
//! - **Writes leave the engine's locks at memory speed.** An event queued for an endpoint is
//!   handed to [`Journal::put`] under the outbox's lock (which gives it a sequence number in
//!   queue order) and lands in a pending buffer; a writer thread commits the buffer as one
//!   transaction (one fsync) at most every `outbox_commit_ms`. The loss window of a `kill -9`
//!   is therefore the events produced in the last `outbox_commit_ms` plus one commit;
//!   `herald_webhook_outbox_uncommitted` is how many that is right now.
//! - **Delivered events are deleted** through the outbox's release: in the next transaction,
//!   or never written at all when they were delivered before their commit.
//! - **Start**: every stored event is read back in sequence order (which is queue order per
//!   endpoint) with its original id, and queued before anything new. A file redb cannot open
//!   as a database is renamed aside and a new one begins.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::event::{Event, EventType};
use crate::sync::lock;

/// Sequence number → endpoint key and the event (see [`encode`]).
const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events");

/// The database's file name inside `[history] path`.
pub const FILE_NAME: &str = "webhooks.redb";

/// How long a failed commit waits before it is tried again (a full disk does not spin).
const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
#[error("webhook outbox: {0}")]
pub struct OutboxError(pub String);

macro_rules! db {
    ($context:expr, $e:expr) => {
        $e.map_err(|e| OutboxError(format!("{}: {e}", $context)))
    };
}

/// What the durable outbox counts (registered with the other webhook metrics).
#[derive(Clone)]
pub struct DurableMetrics {
    pub uncommitted: Gauge,
    pub stored: Gauge,
    pub commits: Counter,
    pub errors: Counter,
    pub commit_seconds: Histogram,
    pub commit_lag: Histogram,
}

impl Default for DurableMetrics {
    fn default() -> Self {
        DurableMetrics {
            uncommitted: Gauge::default(),
            stored: Gauge::default(),
            commits: Counter::default(),
            errors: Counter::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            commit_lag: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        }
    }
}

impl DurableMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "webhook_outbox_uncommitted",
            "Memory engine, disk store: webhook events queued but not yet committed to disk (what a kill -9 now would lose)",
            self.uncommitted.clone(),
        );
        registry.register(
            "webhook_outbox_stored",
            "Memory engine, disk store: webhook events on disk waiting for delivery",
            self.stored.clone(),
        );
        registry.register(
            "webhook_outbox_commits",
            "Memory engine, disk store: transactions of the durable webhook outbox",
            self.commits.clone(),
        );
        registry.register(
            "webhook_outbox_commit_errors",
            "Memory engine, disk store: durable webhook outbox transactions that failed (retried)",
            self.errors.clone(),
        );
        registry.register(
            "webhook_outbox_commit_seconds",
            "Memory engine, disk store: one outbox transaction, fsync included",
            self.commit_seconds.clone(),
        );
        registry.register(
            "webhook_outbox_commit_lag_seconds",
            "Memory engine, disk store: per commit, how long its oldest event waited to be on disk (the loss window a kill -9 had)",
            self.commit_lag.clone(),
        );
    }
}

/// An opened outbox database whose stored events have not been handed back yet.
pub struct DurableOutbox {
    db: Database,
    commit_every: Duration,
}

/// An event read back from disk: its sequence number, its endpoint's key, the event.
pub struct Stored {
    pub seq: u64,
    pub endpoint: String,
    pub event: Event,
}

impl DurableOutbox {
    /// The outbox a node's config asks for: on the disk store (`[history] store = "disk"`,
    /// in `[history] path`) when some app has an endpoint, none otherwise.
    pub fn open_for(config: &crate::config::Config) -> Result<Option<Self>, OutboxError> {
        if config.history.store != "disk" || config.apps.iter().all(|a| a.webhooks.is_empty()) {
            return Ok(None);
        }
        let every = Duration::from_millis(config.webhooks.outbox_commit_ms);
        Self::open(Path::new(&config.history.path), every).map(Some)
    }

    /// Opens (or creates) the outbox in directory `dir`; a file that is not a usable database
    /// is set aside. Another process holding it open is an error.
    pub fn open(dir: &Path, commit_every: Duration) -> Result<Self, OutboxError> {
        let db = crate::redb_file::open_or_replace(
            &dir.join(FILE_NAME),
            "webhook outbox",
            "its undelivered events are not sent",
        )
        .map_err(OutboxError)?;
        Ok(DurableOutbox { db, commit_every })
    }

    /// Every stored event, in sequence order. An unreadable record is skipped (and deleted
    /// with the first commit, as an event of no endpoint).
    pub fn stored(&self) -> Result<Vec<Stored>, OutboxError> {
        let tx = db!("read", self.db.begin_read())?;
        let table = match tx.open_table(EVENTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(OutboxError(format!("read: {e}"))),
        };
        let mut out = Vec::new();
        for row in db!("read", table.iter())? {
            let (k, v) = db!("read", row)?;
            let seq = k.value();
            match decode(v.value()) {
                Some((endpoint, event)) => out.push(Stored {
                    seq,
                    endpoint,
                    event,
                }),
                None => {
                    tracing::warn!(seq, "webhook outbox record unreadable: skipped");
                    out.push(Stored {
                        seq,
                        endpoint: String::new(),
                        event: Event {
                            id: String::new(),
                            kind: EventType::Test,
                            channel: None,
                            json: String::new(),
                        },
                    });
                }
            }
        }
        Ok(out)
    }

    /// Starts the writer thread; `stored` is how many events are on disk, `next_seq` the
    /// first sequence number to give. The returned handle makes each endpoint's journal.
    pub fn start(self, stored: usize, next_seq: u64, metrics: DurableMetrics) -> Writer {
        metrics.stored.set(stored as i64);
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            wake: Condvar::new(),
            done: Condvar::new(),
            next_seq: AtomicU64::new(next_seq),
            metrics,
        });
        let (db, every, thread_shared) = (self.db, self.commit_every, shared.clone());
        let thread = std::thread::Builder::new()
            .name("webhook-outbox".into())
            .spawn(move || write_loop(db, thread_shared, every))
            .map_err(|e| {
                tracing::error!(error = %e, "webhook outbox writer did not start: events stay in memory only");
            })
            .ok();
        let stop = Arc::new(StopOnDrop {
            shared: shared.clone(),
            thread: Mutex::new(thread),
        });
        Writer { shared, stop }
    }
}

/// The running outbox: makes journals, forgets stored events no endpoint takes back.
pub struct Writer {
    shared: Arc<Shared>,
    stop: Arc<StopOnDrop>,
}

impl Writer {
    /// The journal of the endpoint whose key is `endpoint`.
    pub fn journal(&self, endpoint: &str) -> Journal {
        Journal {
            shared: self.shared.clone(),
            endpoint: endpoint.as_bytes().into(),
            _stop: self.stop.clone(),
        }
    }

    /// Deletes stored events that were not handed back (their endpoint is gone, or they no
    /// longer fit its queue).
    pub fn forget(&self, seqs: &[u64]) {
        self.shared.delete(seqs);
    }
}

/// One endpoint's side of the outbox: what its queue calls.
pub struct Journal {
    shared: Arc<Shared>,
    endpoint: Box<[u8]>,
    _stop: Arc<StopOnDrop>,
}

impl Journal {
    /// Records a queued event for the next commit and gives its sequence number. Called under
    /// the endpoint queue's lock, so numbers follow queue order; costs one copy of the event
    /// and a short lock, never I/O.
    pub fn put(&self, event: &Event) -> u64 {
        let seq = self.shared.next_seq.fetch_add(1, Ordering::Relaxed);
        let record = encode(&self.endpoint, event);
        let mut p = self.shared.lock();
        let wake = p.is_empty();
        if p.puts.is_empty() {
            p.oldest = Some(Instant::now());
        }
        p.puts.insert(seq, record);
        // Under the lock, so the writer's decrement for this event always comes after it.
        self.shared.metrics.uncommitted.inc();
        drop(p);
        if wake {
            self.shared.wake.notify_one();
        }
        seq
    }

    /// The events of these numbers were delivered (or given up): delete them.
    pub fn delete(&self, seqs: &[u64]) {
        self.shared.delete(seqs);
    }

    /// Waits until everything recorded before the call is committed, at most `within`; false
    /// on timeout. For tests and benchmarks: the engine never waits.
    pub fn sync(&self, within: Duration) -> bool {
        let mut p = self.shared.lock();
        let target = if p.is_empty() { p.epoch } else { p.epoch + 1 };
        let deadline = Instant::now() + within;
        while p.done < target {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            p = match self.shared.done.wait_timeout(p, left) {
                Ok((p, _)) => p,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }
}

struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer when the buffer stops being empty, or to stop.
    wake: Condvar,
    /// Wakes [`Journal::sync`] after each commit.
    done: Condvar,
    next_seq: AtomicU64,
    metrics: DurableMetrics,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        lock(&self.pending)
    }

    fn delete(&self, seqs: &[u64]) {
        let mut p = self.lock();
        let wake = p.is_empty();
        let mut cancelled = 0;
        for seq in seqs {
            // Delivered before its commit: it never touches the disk.
            if p.puts.remove(seq).is_some() {
                cancelled += 1;
            } else {
                p.deletes.push(*seq);
            }
        }
        if p.puts.is_empty() {
            p.oldest = None;
        }
        let wake = wake && !p.is_empty();
        drop(p);
        self.metrics.uncommitted.dec_by(cancelled);
        if wake {
            self.wake.notify_one();
        }
    }
}

/// The buffer the next transaction takes.
#[derive(Default)]
struct Pending {
    puts: BTreeMap<u64, Vec<u8>>,
    deletes: Vec<u64>,
    /// When the oldest of `puts` was recorded.
    oldest: Option<Instant>,
    /// Transactions taken from the buffer, and the last of them committed.
    epoch: u64,
    done: u64,
    stop: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }
}

/// Stops the writer once no journal is left, and waits for its last commit (so what was
/// queued is on disk and the file is closed when the node's webhooks are gone).
struct StopOnDrop {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: one transaction per wake, at most one per `every`.
fn write_loop(db: Database, shared: Arc<Shared>, every: Duration) {
    let mut last: Option<Instant> = None;
    loop {
        let stopping = {
            let mut p = shared.lock();
            while p.is_empty() && !p.stop {
                p = match shared.wake.wait(p) {
                    Ok(p) => p,
                    Err(poisoned) => poisoned.into_inner(),
                };
            }
            if p.is_empty() {
                return;
            }
            p.stop
        };
        // Group commit: what arrives while the last commit's interval runs joins this one.
        if let Some(wait) = last
            .map(|l| l + every)
            .and_then(|t| t.checked_duration_since(Instant::now()))
        {
            if !stopping {
                std::thread::sleep(wait);
            }
        }
        let started = Instant::now();
        last = Some(started);
        let (puts, deletes, oldest, epoch) = {
            let mut p = shared.lock();
            p.epoch += 1;
            (
                std::mem::take(&mut p.puts),
                std::mem::take(&mut p.deletes),
                p.oldest.take(),
                p.epoch,
            )
        };
        match commit(&db, &puts, &deletes) {
            Ok(removed) => {
                let m = &shared.metrics;
                m.commits.inc();
                m.commit_seconds.observe(started.elapsed().as_secs_f64());
                if let Some(oldest) = oldest {
                    m.commit_lag.observe(oldest.elapsed().as_secs_f64());
                }
                m.uncommitted.dec_by(puts.len() as i64);
                m.stored.inc_by(puts.len() as i64 - removed as i64);
                shared.lock().done = epoch;
                shared.done.notify_all();
            }
            Err(e) => {
                shared.metrics.errors.inc();
                let mut p = shared.lock();
                if p.stop {
                    tracing::error!(error = %e, events = puts.len(), "webhook outbox's last commit failed: these events are not kept");
                    return;
                }
                tracing::warn!(error = %e, events = puts.len(), "webhook outbox commit failed; retrying");
                // Back in the buffer; deletes that arrived meanwhile cancel their puts.
                let mut puts = puts;
                let mut cancelled = 0;
                p.deletes.retain(|seq| {
                    let gone = puts.remove(seq).is_some();
                    cancelled += i64::from(gone);
                    !gone
                });
                p.puts.append(&mut puts);
                p.deletes.extend(deletes);
                p.oldest = oldest.or(p.oldest);
                drop(p);
                shared.metrics.uncommitted.dec_by(cancelled);
                std::thread::sleep(RETRY_AFTER);
            }
        }
    }
}

/// One transaction: the new events in, the delivered ones out. Returns how many were removed.
fn commit(
    db: &Database,
    puts: &BTreeMap<u64, Vec<u8>>,
    deletes: &[u64],
) -> Result<usize, OutboxError> {
    let mut tx = db!("commit", db.begin_write())?;
    db!("commit", tx.set_durability(Durability::Immediate))?;
    let mut removed = 0;
    {
        let mut table = db!("commit", tx.open_table(EVENTS))?;
        for (seq, record) in puts {
            db!("commit", table.insert(*seq, record.as_slice()))?;
        }
        for seq in deletes {
            removed += usize::from(db!("commit", table.remove(*seq))?.is_some());
        }
    }
    db!("commit", tx.commit())?;
    Ok(removed)
}

/// The kinds as stored (one byte: the index here).
const KINDS: [EventType; 8] = [
    EventType::PeerOnline,
    EventType::PeerOffline,
    EventType::PresenceJoined,
    EventType::PresenceLeft,
    EventType::ChannelOccupied,
    EventType::ChannelVacated,
    EventType::MessagePublished,
    EventType::Test,
];

/// Endpoint key (u32 LE length, bytes), kind (one byte), id (u32 LE length, bytes), channel
/// (u32 LE length or `u32::MAX` for none, bytes), then the event's JSON to the end.
fn encode(endpoint: &[u8], event: &Event) -> Vec<u8> {
    let channel = event.channel.as_deref().map(str::as_bytes);
    let mut out = Vec::with_capacity(
        13 + endpoint.len() + event.id.len() + channel.map_or(0, <[u8]>::len) + event.json.len(),
    );
    out.extend_from_slice(&(endpoint.len() as u32).to_le_bytes());
    out.extend_from_slice(endpoint);
    out.push(KINDS.iter().position(|k| *k == event.kind).unwrap_or(7) as u8);
    out.extend_from_slice(&(event.id.len() as u32).to_le_bytes());
    out.extend_from_slice(event.id.as_bytes());
    match channel {
        Some(c) => {
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(c);
        }
        None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
    out.extend_from_slice(event.json.as_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<(String, Event)> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (bytes.get(..n)?, bytes.get(n..)?);
        *bytes = rest;
        Some(head)
    }
    fn u32_at(bytes: &mut &[u8]) -> Option<u32> {
        Some(u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?))
    }
    fn string(bytes: &[u8]) -> Option<String> {
        String::from_utf8(bytes.to_vec()).ok()
    }
    let mut rest = bytes;
    let n = u32_at(&mut rest)? as usize;
    let endpoint = string(take(&mut rest, n)?)?;
    let kind = *KINDS.get(*take(&mut rest, 1)?.first()? as usize)?;
    let n = u32_at(&mut rest)? as usize;
    let id = string(take(&mut rest, n)?)?;
    let channel = match u32_at(&mut rest)? {
        u32::MAX => None,
        n => Some(string(take(&mut rest, n as usize)?)?),
    };
    let json = string(rest)?;
    Some((
        endpoint,
        Event {
            id,
            kind,
            channel,
            json,
        },
    ))
}

#[cfg(test)]
#[path = "durable_tests.rs"]
mod tests;
