#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use super::*;

fn ch(name: &str) -> ChannelName {
    ChannelName::new(name.to_string())
}

fn at(epoch: &str, offset: u64) -> Since {
    Since {
        epoch: Some(Arc::from(epoch)),
        offset,
    }
}

#[tokio::test(start_paused = true)]
async fn a_ping_is_due_one_interval_after_the_first_unconfirmed_write() {
    let mut wm = Watermark::new(Duration::from_millis(1000));
    assert_eq!(wm.due(), None, "no traffic, no ping");
    let start = Instant::now();
    wm.written();
    tokio::time::advance(Duration::from_millis(400)).await;
    wm.written();
    assert_eq!(
        wm.due(),
        Some(start + Duration::from_millis(1000)),
        "later writes do not push the ping back"
    );
    wm.ping(Vec::new());
    assert_eq!(wm.due(), None, "sent: nothing due until more traffic");
    wm.written();
    assert_eq!(wm.due(), Some(Instant::now() + Duration::from_millis(1000)));
}

#[tokio::test(start_paused = true)]
async fn at_most_one_ping_per_interval_under_continuous_traffic() {
    let mut wm = Watermark::new(Duration::from_millis(1000));
    let mut pings = 0;
    // A write every 10 ms for 10 s: the session pings whenever one is due.
    for _ in 0..1000 {
        wm.written();
        if wm.due().is_some_and(|due| due <= Instant::now()) {
            wm.ping(Vec::new());
            pings += 1;
        }
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    assert!((9..=10).contains(&pings), "{pings} pings in 10 s");
}

#[test]
fn a_pong_confirms_its_ping_and_every_older_one_and_nothing_else() {
    let mut wm = Watermark::new(Duration::from_secs(1));
    let first = wm.ping(vec![(ch("a"), at("e", 3)), (ch("b"), at("f", 1))]);
    let second = wm.ping(vec![(ch("a"), at("e", 7))]);
    let third = wm.ping(vec![(ch("a"), at("e", 9))]);
    assert!(wm.confirmed().is_empty(), "nothing confirmed before a pong");
    assert!(!wm.pong(b""), "the keepalive's empty pong confirms nothing");
    assert!(!wm.pong(b"wm12345678"), "an unknown id confirms nothing");
    assert!(wm.pong(&second));
    let mut confirmed = wm.confirmed();
    confirmed.sort_by(|x, y| x.0.as_str().cmp(y.0.as_str()));
    assert_eq!(
        confirmed,
        vec![(ch("a"), at("e", 7)), (ch("b"), at("f", 1))],
        "the second pong proves the first ping's positions too; the newer one wins"
    );
    assert!(
        !wm.pong(&first),
        "an older pong after a newer one changes nothing"
    );
    assert!(wm.pong(&third));
    assert!(wm.confirmed().contains(&(ch("a"), at("e", 9))));
    wm.forget(&ch("a"));
    assert_eq!(wm.confirmed(), vec![(ch("b"), at("f", 1))]);
}

#[test]
fn outstanding_pings_are_bounded() {
    let mut wm = Watermark::new(Duration::from_secs(1));
    let oldest = wm.ping(vec![(ch("a"), at("e", 1))]);
    for offset in 2..=MAX_OUTSTANDING as u64 + 1 {
        wm.ping(vec![(ch("a"), at("e", offset))]);
    }
    assert!(
        !wm.pong(&oldest),
        "forgotten past {MAX_OUTSTANDING} outstanding"
    );
    assert!(wm.confirmed().is_empty());
}
