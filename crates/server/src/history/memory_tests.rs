#![allow(clippy::unwrap_used)]

use std::time::Duration;

use proptest::prelude::*;
use serde_json::value::RawValue;

use super::*;
use crate::ids::{AppId, ChannelName, PeerId};

fn key(channel: &str) -> HistoryKey {
    (AppId::new("app"), ChannelName::new(channel))
}

fn policy(max_messages: usize, max_age_secs: u64) -> Policy {
    Policy {
        max_messages,
        max_age: Duration::from_secs(max_age_secs),
        rewind: 0,
    }
}

fn raw(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_string()).unwrap()
}

fn append(store: &MemoryStore, channel: &str, policy: &Policy, n: u64) -> Appended {
    let data = raw(&format!("{{\"n\":{n}}}"));
    let from = PeerId::new("alice");
    store
        .append(
            &key(channel),
            policy,
            NewMessage {
                from: &from,
                from_metadata: None,
                data: &data,
            },
        )
        .unwrap()
}

fn offsets(retained: &Retained) -> Vec<u64> {
    retained.messages.iter().map(|m| m.offset).collect()
}

#[test]
fn offsets_grow_by_one_within_one_epoch_and_count_trims_the_oldest() {
    let store = MemoryStore::new(1 << 30);
    let p = policy(3, 3600);
    let first = append(&store, "room", &p, 1);
    assert_eq!(first.offset, 1);
    for n in 2..=5 {
        let a = append(&store, "room", &p, n);
        assert_eq!((a.offset, &a.epoch), (n, &first.epoch));
    }
    let latest = store.latest(&key("room"), 10).unwrap();
    assert_eq!(offsets(&latest), vec![3, 4, 5]);
    assert_eq!(latest.epoch.as_deref(), Some(&*first.epoch));
    assert_eq!(latest.messages[2].data.get(), "{\"n\":5}");
    assert_eq!(offsets(&store.latest(&key("room"), 2).unwrap()), vec![4, 5]);
    // Another channel has its own offsets and epoch.
    let other = append(&store, "other", &p, 1);
    assert_eq!(other.offset, 1);
    assert_ne!(other.epoch, first.epoch);
    assert_eq!(store.usage().1, 4);
}

#[tokio::test(start_paused = true)]
async fn age_trims_on_the_paused_clock_and_an_emptied_channel_starts_a_new_epoch() {
    let store = MemoryStore::new(1 << 30);
    let p = policy(100, 10);
    let first = append(&store, "room", &p, 1);
    tokio::time::advance(Duration::from_secs(6)).await;
    append(&store, "room", &p, 2);
    tokio::time::advance(Duration::from_millis(3999)).await;
    assert_eq!(
        offsets(&store.latest(&key("room"), 10).unwrap()),
        vec![1, 2]
    );
    // Message 1 is now exactly 10 s old: gone; message 2 is 4 s younger.
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(offsets(&store.latest(&key("room"), 10).unwrap()), vec![2]);
    tokio::time::advance(Duration::from_secs(6)).await;
    let page = store
        .page(
            &key("room"),
            &PageQuery {
                limit: 10,
                before: None,
                after: None,
            },
        )
        .unwrap();
    assert!(page.retained.messages.is_empty() && page.retained.epoch.is_none());
    let again = append(&store, "room", &p, 3);
    assert_eq!(again.offset, 1);
    assert_ne!(again.epoch, first.epoch);
}

#[tokio::test(start_paused = true)]
async fn expire_gives_back_the_memory_of_channels_nobody_touches() {
    let store = MemoryStore::new(1 << 30);
    for c in 0..10 {
        append(&store, &format!("quiet-{c}"), &policy(100, 5), 1);
    }
    append(&store, "kept", &policy(100, 3600), 1);
    tokio::time::advance(Duration::from_secs(5)).await;
    store.expire();
    let (bytes, live) = store.usage();
    assert_eq!(live, 1);
    let one = store.latest(&key("kept"), 1).unwrap();
    assert_eq!(bytes, entry_cost(&one.messages[0]));
}

#[test]
fn the_byte_cap_drops_the_oldest_entries_of_any_channel_first() {
    let sample = {
        let s = MemoryStore::new(1 << 30);
        append(&s, "a", &policy(10, 3600), 1);
        s.usage().0
    };
    // Room for exactly four entries of this size; channels of two ages (two mark queues),
    // so "oldest first" is decided across them.
    let store = MemoryStore::new(4 * sample as u64);
    let (p, q) = (policy(100, 3600), policy(100, 7200));
    append(&store, "a", &p, 1); // oldest
    append(&store, "b", &q, 1);
    append(&store, "a", &p, 2);
    append(&store, "b", &q, 2);
    assert_eq!(store.usage(), (4 * sample, 4));
    append(&store, "c", &q, 1); // evicts a/1
    assert_eq!(offsets(&store.latest(&key("a"), 10).unwrap()), vec![2]);
    append(&store, "c", &q, 2); // evicts b/1
    assert_eq!(offsets(&store.latest(&key("b"), 10).unwrap()), vec![2]);
    append(&store, "c", &p, 3); // evicts a/2: channel a is empty
    assert!(store.latest(&key("a"), 10).unwrap().epoch.is_none());
    assert_eq!(store.usage(), (4 * sample, 4));
}

#[test]
fn stale_marks_stay_bounded_when_one_channel_trims_by_count() {
    let store = MemoryStore::new(1 << 30);
    append(&store, "quiet", &policy(10, 3600), 1);
    let busy = policy(5, 3600);
    for n in 0..10_000 {
        append(&store, "busy", &busy, n);
    }
    assert_eq!(store.usage().1, 6);
    assert!(store.marks() <= 2 * 6 + 65, "{}", store.marks());
}

/// Pages backwards from `before` (or the newest) until `has_more` is false, within `after`.
fn page_back(
    store: &MemoryStore,
    limit: usize,
    mut before: Option<u64>,
    after: Option<u64>,
) -> Vec<u64> {
    let mut seen = Vec::new();
    loop {
        let page = store
            .page(
                &key("room"),
                &PageQuery {
                    limit,
                    before,
                    after,
                },
            )
            .unwrap();
        let got = offsets(&page.retained);
        assert!(got.len() <= limit);
        assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "{got:?}");
        seen.splice(0..0, got.iter().copied());
        if !page.has_more {
            return seen;
        }
        before = got.first().copied();
        assert!(before.is_some(), "has_more with an empty page");
    }
}

#[test]
fn paging_back_covers_every_retained_message_exactly_once() {
    let store = MemoryStore::new(1 << 30);
    let p = policy(250, 3600);
    for n in 1..=400 {
        append(&store, "room", &p, n);
    }
    let all: Vec<u64> = (151..=400).collect();
    for limit in [1, 7, 100, 250, 1000] {
        assert_eq!(page_back(&store, limit, None, None), all, "limit {limit}");
    }
    assert_eq!(
        page_back(&store, 30, None, Some(390)),
        (391..=400).collect::<Vec<_>>()
    );
}

proptest! {
    /// Any page equals the same selection over a plain Vec of what the store should retain.
    #[test]
    fn pages_match_a_vec_reference(
        total in 0u64..120,
        max_messages in 1usize..60,
        limit in 1usize..40,
        before in proptest::option::of(0u64..130),
        after in proptest::option::of(0u64..130),
    ) {
        let store = MemoryStore::new(1 << 30);
        let p = policy(max_messages, 3600);
        for n in 1..=total {
            append(&store, "room", &p, n);
        }
        let retained: Vec<u64> = (1..=total).skip((total as usize).saturating_sub(max_messages)).collect();
        let window: Vec<u64> = retained
            .iter()
            .copied()
            .filter(|o| before.is_none_or(|b| *o < b) && after.is_none_or(|a| *o > a))
            .collect();
        let want: Vec<u64> = window.iter().rev().take(limit).rev().copied().collect();
        let page = store.page(&key("room"), &PageQuery { limit, before, after }).unwrap();
        prop_assert_eq!(offsets(&page.retained), want.clone());
        prop_assert_eq!(page.has_more, window.len() > want.len());
        for m in &page.retained.messages {
            prop_assert_eq!(m.data.get(), format!("{{\"n\":{}}}", m.offset));
        }
        prop_assert_eq!(page_back(&store, limit, before, after), window);
    }
}

#[tokio::test(start_paused = true)]
async fn an_append_anywhere_expires_what_is_too_old_everywhere() {
    let store = MemoryStore::new(1 << 30);
    for c in 0..10 {
        append(&store, &format!("quiet-{c}"), &policy(100, 5), 1);
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    append(&store, "busy", &policy(100, 3600), 1);
    assert_eq!(store.usage().1, 1);
    assert_eq!(store.marks(), 1);
}
