//! One endpoint's queue of events waiting to be delivered, bounded in bytes (the batch in
//! flight included). A full queue refuses new events (counted by the caller): a slow or dead
//! endpoint costs a bounded amount of memory and never slows messaging.

use std::collections::VecDeque;
use std::sync::Mutex;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use super::event::Event;
use crate::sync::lock;

/// Called with each batch the outbox is done with (a durable outbox acknowledges it).
pub type ReleaseHook = Box<dyn Fn(&[Event]) + Send + Sync>;

pub struct Outbox {
    queue: Mutex<Queue>,
    /// Set once by an engine that feeds the outbox from durable storage.
    on_release: std::sync::OnceLock<ReleaseHook>,
    ready: Notify,
    max_bytes: usize,
    /// The node's gauge of bytes waiting for every endpoint.
    gauge: Gauge,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<Event>,
    /// Bytes of the queued events and of the batch in flight.
    bytes: usize,
}

impl Outbox {
    pub fn new(max_bytes: usize, gauge: Gauge) -> Outbox {
        Outbox {
            queue: Mutex::default(),
            on_release: std::sync::OnceLock::new(),
            ready: Notify::new(),
            max_bytes,
            gauge,
        }
    }

    /// Queues an event; false when it does not fit.
    pub fn push(&self, event: Event) -> bool {
        let cost = event.cost();
        {
            let mut q = lock(&self.queue);
            if q.bytes + cost > self.max_bytes {
                return false;
            }
            q.bytes += cost;
            q.events.push_back(event);
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
        q.events.drain(..n).collect()
    }

    /// A batch is done with (delivered or given up): its bytes are free again.
    pub fn release(&self, batch: &[Event]) {
        let cost: usize = batch.iter().map(Event::cost).sum();
        let mut q = lock(&self.queue);
        q.bytes = q.bytes.saturating_sub(cost);
        drop(q);
        self.gauge.dec_by(cost as i64);
        if let Some(hook) = self.on_release.get() {
            hook(batch);
        }
    }

    /// Sets what to call with each released batch (once; later calls are ignored).
    pub fn on_release(&self, hook: ReleaseHook) {
        let _ = self.on_release.set(hook);
    }
}
