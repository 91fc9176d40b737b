//! Bounded waits on event streams (the SDK's subscriptions, presence and message streams): the
//! next item, the next matching one, silence, and the end.

use std::time::Duration;

use futures_util::{Stream, StreamExt};

/// How long a test waits for any one expected event. Generous: it only matters on failure.
pub const WAIT: Duration = Duration::from_secs(10);

/// The next item of `stream`, failing the test after [`WAIT`].
pub async fn next<S: Stream + Unpin>(stream: &mut S, what: &str) -> S::Item {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("stream ended while waiting for {what}"))
}

/// Skips items until one matches `pred`; returns it.
pub async fn next_matching<S: Stream + Unpin>(
    stream: &mut S,
    what: &str,
    mut pred: impl FnMut(&S::Item) -> bool,
) -> S::Item {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let item = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|| panic!("stream ended while waiting for {what}"));
        if pred(&item) {
            return item;
        }
    }
}

/// Asserts nothing arrives on `stream` for `ms` (a bounded negative check).
pub async fn expect_quiet<S: Stream + Unpin>(stream: &mut S, ms: u64, what: &str)
where
    S::Item: std::fmt::Debug,
{
    if let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(ms), stream.next()).await {
        panic!("expected no {what}, got {item:?}");
    }
}

/// Asserts `stream` has ended (within [`WAIT`]), skipping what was still queued.
pub async fn expect_end<S: Stream + Unpin>(stream: &mut S, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(None) => return,
            Ok(Some(_)) => continue,
            Err(_) => panic!("{what} did not end"),
        }
    }
}
