//! Lossless reconnect on the memory engine: the positions the session's watermark reads, and
//! the sweep of the resume book. The book itself is `resume/book.rs`; the replay runs in
//! `roster.rs`'s subscribe through `hub::replay`.

use std::sync::Arc;
use std::time::Duration;

use super::roster::Rosters;
use crate::conn::Conn;
use crate::engine::hub::{channel_key, replay};
use crate::ids::{AppId, ChannelName};
use crate::resume::book::ResumeBook;
use crate::resume::Since;

/// How often windows that ended are dropped from the book when nothing else touches it.
const SWEEP_PERIOD: Duration = Duration::from_secs(5);

/// A stable peer id (from a JWT) can come back; a publishable key's peer id is fresh per
/// connection and never does.
pub(super) fn is_stable(conn: &Conn) -> bool {
    conn.kind == "token"
}

/// Each history channel's current position, read under its lock.
pub(super) fn positions(
    state: &Rosters,
    app: &AppId,
    channels: &[ChannelName],
) -> Vec<(ChannelName, Since)> {
    let store = &*state.history.store;
    channels
        .iter()
        .filter(|c| state.history.policy_for(c.as_str()).is_some())
        .filter_map(|c| {
            let key = channel_key(app, c);
            let since = state
                .hub
                .channels
                .with(&key, |_| replay::current(store, &key))??;
            Some((c.clone(), since))
        })
        .collect()
}

/// Sweeps the book every few seconds for as long as it lives (outside a runtime: never; every
/// call on the book sweeps its own shard anyway).
pub(super) fn spawn_sweep(book: &Arc<ResumeBook>) {
    if !book.settings().enabled() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let book = Arc::downgrade(book);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match book.upgrade() {
                Some(book) => book.sweep(),
                None => return,
            }
        }
    });
}
