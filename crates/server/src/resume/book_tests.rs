#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use super::*;

fn settings() -> ResumeSettings {
    ResumeSettings {
        window: Duration::from_secs(30),
        inbox_ttl: Duration::from_secs(10),
        inbox_max_messages: 3,
        inbox_max_bytes: 100,
        max_replay: 1000,
        confirm_after: Duration::from_secs(1),
    }
}

fn ids() -> (AppId, PeerId, ChannelName) {
    (
        AppId::new("app".to_string()),
        PeerId::new("alice".to_string()),
        ChannelName::new("room".to_string()),
    )
}

fn since(offset: u64) -> Since {
    Since {
        epoch: Some(Arc::from("e")),
        offset,
    }
}

fn frame(text: &str) -> Frame {
    Frame::from(text.to_string())
}

fn drain(book: &ResumeBook, app: &AppId, peer: &PeerId) -> Vec<String> {
    let mut got = Vec::new();
    book.reconnect(app, peer, || {}, |f| got.push(f.as_str().to_string()));
    got
}

#[tokio::test(start_paused = true)]
async fn a_position_is_taken_once_within_the_window_and_gone_after_it() {
    let (app, peer, room) = ids();
    let book = ResumeBook::new(settings());
    book.park(&app, &peer, vec![(room.clone(), since(7))], || false);
    assert_eq!(book.take(&app, &peer, &room), Some(since(7)));
    assert_eq!(book.take(&app, &peer, &room), None, "taken once");

    book.park(&app, &peer, vec![(room.clone(), since(8))], || false);
    tokio::time::advance(Duration::from_millis(29_999)).await;
    assert_eq!(book.stats().parked_peers, 1);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(book.take(&app, &peer, &room), None, "the window is over");
    assert_eq!(book.stats().parked_peers, 0, "and the entry is gone");
}

#[tokio::test(start_paused = true)]
async fn a_second_drop_restarts_the_window_and_keeps_other_channels() {
    let (app, peer, room) = ids();
    let other = ChannelName::new("other".to_string());
    let book = ResumeBook::new(settings());
    book.park(&app, &peer, vec![(room.clone(), since(1))], || false);
    tokio::time::advance(Duration::from_secs(20)).await;
    book.park(&app, &peer, vec![(other.clone(), since(2))], || false);
    tokio::time::advance(Duration::from_secs(20)).await;
    book.sweep();
    assert_eq!(book.take(&app, &peer, &room), Some(since(1)));
    assert_eq!(book.take(&app, &peer, &other), Some(since(2)));
    tokio::time::advance(Duration::from_secs(10)).await;
    book.sweep();
    assert_eq!(book.stats().parked_peers, 0);
}

#[tokio::test(start_paused = true)]
async fn directs_wait_in_order_within_count_and_bytes_and_expire() {
    let (app, peer, _) = ids();
    let book = ResumeBook::new(settings());
    let stranger = PeerId::new("bob".to_string());
    assert_eq!(
        book.queue_direct(&app, &stranger, || 0, || frame("x")),
        Queued::NotParked,
        "a peer that did not drop gets nothing held"
    );
    book.park(&app, &peer, Vec::new(), || false);
    assert_eq!(
        book.queue_direct(&app, &peer, || 2, || frame("x")),
        Queued::Live(2),
        "a connection that registered meanwhile takes it"
    );
    for text in ["one", "two", "three"] {
        assert_eq!(
            book.queue_direct(&app, &peer, || 0, || frame(text)),
            Queued::Queued
        );
    }
    assert_eq!(
        book.queue_direct(&app, &peer, || 0, || frame("four")),
        Queued::Full,
        "count bound"
    );
    assert_eq!(
        drain(&book, &app, &peer),
        ["one", "two", "three"],
        "in order"
    );
    assert!(drain(&book, &app, &peer).is_empty(), "delivered once");

    let big = "y".repeat(60);
    assert_eq!(
        book.queue_direct(&app, &peer, || 0, || frame(&big)),
        Queued::Queued
    );
    assert_eq!(
        book.queue_direct(&app, &peer, || 0, || frame(&big)),
        Queued::Full,
        "byte bound"
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        book.queue_direct(&app, &peer, || 0, || frame(&big)),
        Queued::Queued
    );
    assert_eq!(
        book.stats().directs_expired,
        1,
        "the first one's time ran out"
    );
    tokio::time::advance(Duration::from_secs(20)).await;
    book.sweep();
    assert_eq!(
        book.stats(),
        BookStats {
            parked_peers: 0,
            inbox_directs: 0,
            directs_expired: 2,
        },
        "the window's end drops what is still held"
    );
    assert_eq!(
        book.queue_direct(&app, &peer, || 0, || frame("late")),
        Queued::NotParked
    );
}

#[tokio::test(start_paused = true)]
async fn a_peer_still_connected_elsewhere_is_not_parked() {
    let (app, peer, room) = ids();
    let book = ResumeBook::new(settings());
    book.park(&app, &peer, vec![(room.clone(), since(1))], || true);
    assert_eq!(book.take(&app, &peer, &room), None);
    assert_eq!(
        book.queue_direct(&app, &peer, || 0, || frame("x")),
        Queued::NotParked
    );
}

#[tokio::test(start_paused = true)]
async fn resume_off_keeps_nothing_but_still_registers() {
    let (app, peer, room) = ids();
    let book = ResumeBook::new(ResumeSettings::default());
    let mut calls = 0;
    book.park(&app, &peer, vec![(room.clone(), since(1))], || {
        calls += 1;
        false
    });
    book.reconnect(&app, &peer, || calls += 1, |_| panic!("nothing held"));
    assert_eq!(calls, 2);
    assert_eq!(book.take(&app, &peer, &room), None);
    assert_eq!(
        book.queue_direct(&app, &peer, || 0, || frame("x")),
        Queued::NotParked
    );
    assert_eq!(book.stats(), BookStats::default());
}
