//! One endpoint's queue of events waiting to be delivered, bounded in bytes (the batch in
//! flight included). A full queue refuses new events (counted by the caller): a slow or dead
//! endpoint costs a bounded amount of memory and never slows messaging.
//!
//! With a [`Journal`] (the memory engine on the disk store, `durable.rs`) each queued event is
//! also recorded for the disk, numbered under this queue's lock so the numbers follow queue
//! order, and deleted when its batch is released.

use std::collections::VecDeque;
use std::sync::Mutex;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use super::durable::Journal;
use super::event::Event;
use crate::sync::lock;

/// Called with each batch the outbox is done with (a durable outbox acknowledges it).
pub type ReleaseHook = Box<dyn Fn(&[Event]) + Send + Sync>;

pub struct Outbox {
    queue: Mutex<Queue>,
    /// Set once by an engine that feeds the outbox from durable storage.
    on_release: std::sync::OnceLock<ReleaseHook>,
    /// Set once, before the first event, when the outbox is kept on disk.
    journal: std::sync::OnceLock<Journal>,
    ready: Notify,
    max_bytes: usize,
    /// The node's gauge of bytes waiting for every endpoint.
    gauge: Gauge,
}

#[derive(Default)]
struct Queue {
    /// Each event with its journal number, when it has one.
    events: VecDeque<(Event, Option<u64>)>,
    /// The journal numbers of the batch in flight, in order.
    in_flight: VecDeque<Option<u64>>,
    /// Bytes of the queued events and of the batch in flight.
    bytes: usize,
}

impl Outbox {
    pub fn new(max_bytes: usize, gauge: Gauge) -> Outbox {
        Outbox {
            queue: Mutex::default(),
            on_release: std::sync::OnceLock::new(),
            journal: std::sync::OnceLock::new(),
            ready: Notify::new(),
            max_bytes,
            gauge,
        }
    }

    /// Queues an event; false when it does not fit.
    pub fn push(&self, event: Event) -> bool {
        self.enqueue(event, None)
    }

    /// Queues an event read back from the journal with its number (at start, before any new
    /// event); false when it does not fit.
    pub fn restore(&self, event: Event, seq: u64) -> bool {
        self.enqueue(event, Some(seq))
    }

    /// Records every event queued from now on in `journal` (once; later calls are ignored).
    pub fn set_journal(&self, journal: Journal) {
        let _ = self.journal.set(journal);
    }

    fn enqueue(&self, event: Event, restored: Option<u64>) -> bool {
        let cost = event.cost();
        {
            let mut q = lock(&self.queue);
            if q.bytes + cost > self.max_bytes {
                return false;
            }
            q.bytes += cost;
            let seq = restored.or_else(|| self.journal.get().map(|j| j.put(&event)));
            q.events.push_back((event, seq));
        }
        self.gauge.inc_by(cost as i64);
        self.ready.notify_one();
        true
    }

    /// Events waiting (the batch in flight excluded).
    pub fn len(&self) -> usize {
        lock(&self.queue).events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until an event is queued.
    pub async fn wait(&self) {
        loop {
            let notified = self.ready.notified();
            if !self.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Takes up to `max` events, oldest first; their bytes stay counted until
    /// [`Outbox::release`].
    pub fn take(&self, max: usize) -> Vec<Event> {
        let mut q = lock(&self.queue);
        let n = q.events.len().min(max);
        let q = &mut *q;
        let mut batch = Vec::with_capacity(n);
        for (event, seq) in q.events.drain(..n) {
            q.in_flight.push_back(seq);
            batch.push(event);
        }
        batch
    }

    /// A batch is done with (delivered or given up): its bytes are free again.
    pub fn release(&self, batch: &[Event]) {
        let cost: usize = batch.iter().map(Event::cost).sum();
        let mut q = lock(&self.queue);
        q.bytes = q.bytes.saturating_sub(cost);
        let n = batch.len().min(q.in_flight.len());
        let seqs: Vec<u64> = q.in_flight.drain(..n).flatten().collect();
        drop(q);
        self.gauge.dec_by(cost as i64);
        if let (Some(journal), false) = (self.journal.get(), seqs.is_empty()) {
            journal.delete(&seqs);
        }
        if let Some(hook) = self.on_release.get() {
            hook(batch);
        }
    }

    /// Sets what to call with each released batch (once; later calls are ignored).
    pub fn on_release(&self, hook: ReleaseHook) {
        let _ = self.on_release.set(hook);
    }
}
