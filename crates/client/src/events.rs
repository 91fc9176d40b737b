//! Fan-out of inbound events to any number of application streams.
//!
//! Each call to a stream method (`presence()`, `messages()`, …) gets its own bounded queue. The
//! connection task never waits for an application: a queue that is full drops the event for
//! that stream only, counts it in [`EventStream::dropped`] and logs a warning. Blocking instead
//! would let one forgotten stream stall acks, pings and every other stream of the client (and
//! eventually get the socket closed by the server as a slow consumer).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::mpsc;

/// Locks a mutex, recovering from poisoning: a panicking application callback on another
/// thread must not wedge the client.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A stream of events of one kind. It ends when the client (or peer) that produced it is
/// disposed, after the events already queued have been read.
///
/// Poll it with `futures_util::StreamExt::next` or [`EventStream::recv`]. Every stream must be
/// read: one that falls more than its capacity behind loses events (see
/// [`EventStream::dropped`]); the others are not affected.
#[derive(Debug)]
pub struct EventStream<T> {
    rx: mpsc::Receiver<T>,
    dropped: Arc<AtomicU64>,
}

impl<T> EventStream<T> {
    /// The next event, or `None` once the stream has ended.
    pub async fn recv(&mut self) -> Option<T> {
        self.rx.recv().await
    }

    /// An event already queued, without waiting; `None` when there is none right now.
    pub fn try_recv(&mut self) -> Option<T> {
        self.rx.try_recv().ok()
    }

    /// How many events this stream lost because its queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl<T> Stream for EventStream<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.rx.poll_recv(cx)
    }
}

struct Subscriber<T> {
    tx: mpsc::Sender<T>,
    dropped: Arc<AtomicU64>,
}

struct Registry<T> {
    subscribers: Vec<Subscriber<T>>,
    /// Set by `close`: later subscriptions get a stream that has already ended.
    closed: bool,
}

/// The subscriber list of one event kind.
pub(crate) struct Subscribers<T> {
    /// For the warning log only.
    kind: &'static str,
    capacity: usize,
    registry: Mutex<Registry<T>>,
}

impl<T: Clone> Subscribers<T> {
    pub(crate) fn new(kind: &'static str, capacity: usize) -> Self {
        Subscribers {
            kind,
            capacity: capacity.max(1),
            registry: Mutex::new(Registry {
                subscribers: Vec::new(),
                closed: false,
            }),
        }
    }

    /// A new stream that sees every event emitted from now on.
    pub(crate) fn subscribe(&self) -> EventStream<T> {
        let (tx, rx) = mpsc::channel(self.capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut registry = lock(&self.registry);
        if !registry.closed {
            registry.subscribers.push(Subscriber {
                tx,
                dropped: dropped.clone(),
            });
        }
        EventStream { rx, dropped }
    }

    /// Offers `event` to every live stream without waiting. Streams whose receiver is gone are
    /// forgotten.
    pub(crate) fn emit(&self, event: T) {
        let mut registry = lock(&self.registry);
        registry
            .subscribers
            .retain(|s| match s.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let lost = s.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(
                        kind = self.kind,
                        lost,
                        "an event stream is not being read; dropping an event for it"
                    );
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
    }

    /// Ends every stream (after its queued events) and refuses new ones.
    pub(crate) fn close(&self) {
        let mut registry = lock(&self.registry);
        registry.closed = true;
        registry.subscribers.clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn fan_out_drop_and_close() {
        let subs = Subscribers::new("test", 2);
        let mut a = subs.subscribe();
        let mut b = subs.subscribe();
        for i in 0..3 {
            subs.emit(i);
        }
        assert_eq!(a.next().await, Some(0));
        assert_eq!(a.next().await, Some(1));
        assert_eq!(a.dropped(), 1, "the third event did not fit");
        assert_eq!(b.try_recv(), Some(0));
        subs.close();
        assert_eq!(a.next().await, None);
        assert_eq!(b.recv().await, Some(1));
        assert_eq!(b.recv().await, None);
        let mut late = subs.subscribe();
        assert_eq!(
            late.recv().await,
            None,
            "a stream taken after close has ended"
        );
    }

    #[tokio::test]
    async fn dropped_streams_are_forgotten() {
        let subs = Subscribers::new("test", 4);
        let a = subs.subscribe();
        drop(a);
        subs.emit(1);
        assert!(lock(&subs.registry).subscribers.is_empty());
    }
}
