#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::value::RawValue;

use super::*;
use crate::config::{HistoryChannels, HistoryConfig};

/// A fresh directory, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "herald-disk-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rules(max_messages: usize, max_age_secs: u64) -> HistoryRules {
    HistoryRules::new(&HistoryConfig {
        channels: vec![HistoryChannels {
            patterns: vec!["**".into()],
            max_messages,
            max_age_secs,
            rewind: 0,
        }],
        ..HistoryConfig::default()
    })
}

fn policy(max_messages: usize, max_age_secs: u64) -> Policy {
    *rules(max_messages, max_age_secs).policy_for("any").unwrap()
}

fn key(channel: &str) -> HistoryKey {
    (AppId::new("app"), ChannelName::new(channel))
}

fn open(dir: &Dir, max_messages: usize) -> DiskStore {
    DiskStore::open(&dir.0, 1 << 30, &rules(max_messages, 3600)).unwrap()
}

fn append(store: &DiskStore, channel: &str, policy: &Policy, n: u64) -> Appended {
    let data = RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap();
    let meta = RawValue::from_string("{\"name\":\"Al\"}".into()).unwrap();
    let from = PeerId::new("alice");
    store
        .append(
            &key(channel),
            policy,
            NewMessage {
                from: &from,
                from_metadata: n.is_multiple_of(2).then_some(&*meta),
                data: &data,
            },
        )
        .unwrap()
}

fn offsets(retained: &Retained) -> Vec<u64> {
    retained.messages.iter().map(|m| m.offset).collect()
}

fn all(store: &DiskStore, channel: &str) -> Retained {
    store.latest(&key(channel), usize::MAX).unwrap()
}

#[test]
fn a_reopened_store_has_the_same_messages_epoch_and_next_offset() {
    let dir = Dir::new("reopen");
    let p = policy(3, 3600);
    let (first, ts) = {
        let store = open(&dir, 3);
        let first = append(&store, "room", &p, 1);
        for n in 2..=5 {
            assert_eq!(append(&store, "room", &p, n).offset, n);
        }
        append(&store, "other", &p, 1);
        (first, all(&store, "room").messages[2].ts)
    };
    let store = open(&dir, 3);
    let room = all(&store, "room");
    assert_eq!(room.epoch.as_deref(), Some(&*first.epoch));
    assert_eq!(offsets(&room), vec![3, 4, 5]);
    let m4 = &room.messages[1];
    assert_eq!((m4.from.as_str(), m4.data.get()), ("alice", "{\"n\":4}"));
    assert_eq!(
        m4.from_metadata.as_ref().unwrap().get(),
        "{\"name\":\"Al\"}"
    );
    assert!(room.messages[0].from_metadata.is_none());
    assert_eq!(room.messages[2].ts, ts);
    assert_eq!(offsets(&all(&store, "other")), vec![1]);
    let next = append(&store, "room", &p, 6);
    assert_eq!((next.offset, &next.epoch), (6, &first.epoch));
}

#[test]
fn count_retention_deletes_from_disk_so_a_larger_limit_brings_nothing_back() {
    let dir = Dir::new("count");
    {
        let store = open(&dir, 5);
        for n in 1..=50 {
            append(&store, "room", &policy(5, 3600), n);
        }
    }
    // Reopened with room for 100: only what was retained is on disk.
    let store = open(&dir, 100);
    assert_eq!(offsets(&all(&store, "room")), (46..=50).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn age_trims_on_the_paused_clock_and_the_sweep_deletes_it_from_disk() {
    let dir = Dir::new("age");
    let p = policy(100, 10);
    let store = DiskStore::open(&dir.0, 1 << 30, &rules(100, 10)).unwrap();
    let first = append(&store, "room", &p, 1);
    tokio::time::advance(Duration::from_secs(6)).await;
    append(&store, "room", &p, 2);
    append(&store, "quiet", &p, 1);
    tokio::time::advance(Duration::from_millis(3999)).await;
    assert_eq!(offsets(&all(&store, "room")), vec![1, 2]);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(offsets(&all(&store, "room")), vec![2]);
    store.expire();
    tokio::time::advance(Duration::from_secs(6)).await;
    store.expire();
    assert!(all(&store, "room").epoch.is_none());
    let again = append(&store, "room", &p, 3);
    assert_eq!(again.offset, 1);
    assert_ne!(again.epoch, first.epoch);
    drop(store);
    // Wall time has not moved, so only the sweep can have removed "quiet" and room's epoch 1.
    let store = DiskStore::open(&dir.0, 1 << 30, &rules(100, 10)).unwrap();
    assert!(all(&store, "quiet").epoch.is_none());
    let room = all(&store, "room");
    assert_eq!((offsets(&room), room.epoch), (vec![1], Some(again.epoch)));
}

#[test]
fn the_byte_cap_evicts_across_channels_and_the_sweep_follows_it() {
    let dir = Dir::new("cap");
    let sample = {
        let d = Dir::new("cap-sample");
        let s = open(&d, 10);
        append(&s, "a", &policy(10, 3600), 1);
        s.memory().usage().0
    };
    let p = policy(100, 3600);
    {
        let store = DiskStore::open(&dir.0, 3 * sample as u64, &rules(100, 3600)).unwrap();
        append(&store, "a", &p, 1);
        append(&store, "b", &p, 1);
        append(&store, "b", &p, 3);
        append(&store, "c", &p, 1); // evicts a/1
        assert!(all(&store, "a").epoch.is_none());
        store.expire();
    }
    let store = DiskStore::open(&dir.0, 1 << 30, &rules(100, 3600)).unwrap();
    assert!(all(&store, "a").epoch.is_none());
    assert_eq!(offsets(&all(&store, "b")), vec![1, 2]);
    assert_eq!(offsets(&all(&store, "c")), vec![1]);
}

#[test]
fn paging_back_after_a_restart_covers_every_retained_message_exactly_once() {
    let dir = Dir::new("paging");
    {
        let store = open(&dir, 250);
        for n in 1..=400 {
            append(&store, "room", &policy(250, 3600), n);
        }
    }
    let store = open(&dir, 250);
    for limit in [1, 7, 100, 250, 1000] {
        let (mut seen, mut before) = (Vec::new(), None);
        loop {
            let page = store
                .page(
                    &key("room"),
                    &PageQuery {
                        limit,
                        before,
                        after: None,
                    },
                )
                .unwrap();
            let got = offsets(&page.retained);
            assert!(got.len() <= limit);
            seen.splice(0..0, got.iter().copied());
            if !page.has_more {
                break;
            }
            before = got.first().copied();
        }
        assert_eq!(seen, (151..=400).collect::<Vec<_>>(), "limit {limit}");
    }
}

#[test]
fn an_unreadable_database_is_set_aside_and_history_starts_a_new_epoch() {
    let dir = Dir::new("corrupt");
    let p = policy(10, 3600);
    let first = {
        let store = open(&dir, 10);
        append(&store, "room", &p, 1)
    };
    let file = dir.0.join(FILE_NAME);
    std::fs::write(&file, vec![0xA5u8; 8192]).unwrap();
    let store = open(&dir, 10);
    assert!(all(&store, "room").epoch.is_none());
    let again = append(&store, "room", &p, 2);
    assert_eq!(again.offset, 1);
    assert_ne!(again.epoch, first.epoch);
    let aside = std::fs::read_dir(&dir.0)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("unusable"))
        .count();
    assert_eq!(aside, 1);
}

#[test]
fn a_database_held_open_is_an_error_not_a_reset() {
    let dir = Dir::new("held");
    let store = open(&dir, 10);
    append(&store, "room", &policy(10, 3600), 1);
    assert!(DiskStore::open(&dir.0, 1 << 30, &rules(10, 3600)).is_err());
    assert_eq!(offsets(&all(&store, "room")), vec![1]);
}

#[test]
fn channels_no_group_keeps_are_not_restored() {
    let dir = Dir::new("rules");
    {
        let store = open(&dir, 10);
        append(&store, "room", &policy(10, 3600), 1);
    }
    let none = HistoryRules::new(&HistoryConfig {
        channels: vec![HistoryChannels {
            patterns: vec!["lobby".into()],
            max_messages: 10,
            max_age_secs: 3600,
            rewind: 0,
        }],
        ..HistoryConfig::default()
    });
    let store = DiskStore::open(&dir.0, 1 << 30, &none).unwrap();
    assert!(all(&store, "room").epoch.is_none());
}
