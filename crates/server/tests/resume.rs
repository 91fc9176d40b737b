//! Lossless reconnect against a real server with raw WebSocket clients: the transparent resume
//! of a stable peer that dropped (every missed message, in order, after the snapshot and before
//! live ones; no rewind), its directs held and delivered after the welcome, the all-or-nothing
//! failure, the explicit `since`, and that publishable-key peers and channels without history
//! behave as before.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use herald_server::config::{HistoryChannels, HistoryConfig};
use herald_testkit::prelude::*;
use serde_json::{json, Value};

const ROOM: &str = "room/resume";

/// `room/*` keeps 1000 and rewinds 3 (so a rewind would show); `small/*` keeps 10; other
/// channels keep nothing. Watermark pings 100 ms after traffic.
fn config() -> herald_server::Config {
    let group = |pattern: &str, max_messages, rewind| HistoryChannels {
        patterns: vec![pattern.into()],
        max_messages,
        max_age_secs: 3600,
        rewind,
    };
    config_with(|c| {
        c.history = HistoryConfig {
            channels: vec![group("room/*", 1000, 3), group("small/*", 10, 0)],
            resume_confirm_ms: 100,
            ..HistoryConfig::default()
        }
    })
}

async fn metrics_text(server: &TestServer) -> String {
    reqwest::get(format!("{}/metrics", server.http()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of a metric line, labels included in `name` (0 when absent).
async fn metric(server: &TestServer, name: &str) -> f64 {
    metrics_text(server)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Reads (answering pings) until the server has confirmed at least `n` watermark pings.
async fn wait_confirmed(server: &TestServer, client: &mut Client, n: f64) {
    for _ in 0..200 {
        if metric(server, "herald_watermark_confirmed_total").await >= n {
            return;
        }
        client.expect_silence(25).await;
    }
    panic!("no watermark confirmation");
}

/// Until the server has seen the drop: only the publisher's token connection is left, and
/// the dropped peer is parked.
async fn wait_dropped(server: &TestServer) {
    let open = format!("herald_connections{{kind=\"token\",app=\"{APP}\"}}");
    for _ in 0..200 {
        if metric(server, &open).await == 1.0
            && metric(server, "herald_resume_parked_peers").await >= 1.0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the drop was never seen:\n{}", metrics_text(server).await);
}

fn n_of(frame: &Value) -> u64 {
    assert_eq!(frame["type"], "message", "{frame}");
    frame["data"]["n"].as_u64().unwrap()
}

/// A marker published now must be `client`'s next frame: nothing else is queued for it.
async fn barrier(client: &mut Client, publisher: &mut Client, channel: &str, n: u64) {
    publisher.publish(channel, json!({"n": n}), "marker").await;
    assert_eq!(n_of(&client.recv().await), n, "expected the marker next");
}

#[tokio::test]
async fn a_stable_peer_that_drops_gets_every_missed_message_in_order_then_live_and_its_directs() {
    let server = TestServer::start_with(config()).await;
    let mut publisher = server.client("pub").await;
    let mut alice = server.client("alice").await;
    alice.subscribe(ROOM).await;
    for n in 1..=5 {
        publisher.publish(ROOM, json!({"n": n}), "p").await;
    }
    for n in 1..=5 {
        assert_eq!(n_of(&alice.recv().await), n);
    }
    wait_confirmed(&server, &mut alice, 1.0).await;
    // The socket goes away with no close frame: a drop.
    drop(alice);
    wait_dropped(&server).await;
    for n in 6..=205 {
        publisher.publish(ROOM, json!({"n": n}), "p").await;
    }
    for d in 1..=2 {
        let ack = publisher
            .request(
                json!({"type": "send", "to": "alice", "data": {"d": d}}),
                "d",
            )
            .await;
        assert_eq!(
            ack,
            json!({"type": "ack", "requestId": "d", "queued": true})
        );
    }

    let mut alice = server.client("alice").await;
    for d in 1..=2 {
        let direct = alice.recv().await;
        assert_eq!(direct["type"], "direct", "{direct}");
        assert_eq!(
            direct["data"],
            json!({"d": d}),
            "held directs first, in order"
        );
    }
    let (ack, snapshot) = alice.subscribe(ROOM).await;
    assert_eq!(
        ack["type"], "ack",
        "a transparent resume keeps the plain ack: {ack}"
    );
    assert!(ack.get("recovered").is_none(), "{ack}");
    assert_eq!(snapshot["type"], "presence");
    let first = n_of(&alice.recv().await);
    assert!(
        (1..=6).contains(&first),
        "the replay starts after the confirmed position, at most 5 back: {first}"
    );
    for n in first + 1..=205 {
        assert_eq!(n_of(&alice.recv().await), n, "in order, no gap");
    }
    // No rewind, nothing else: the next frame is live.
    barrier(&mut alice, &mut publisher, ROOM, 206).await;
    let duplicates = 6 - first;
    println!(
        "replayed {} messages, {duplicates} of them duplicates",
        206 - first
    );
    assert_eq!(
        metric(
            &server,
            "herald_resume_succeeded_total{kind=\"transparent\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&server, "herald_resume_replayed_messages_total").await,
        (206 - first) as f64
    );
    assert_eq!(
        metric(&server, "herald_direct_inbox_queued_total").await,
        2.0
    );

    // A second drop right after the resume, before any new confirmation: resumed again from
    // where the first resume started (the client had everything up to it).
    drop(alice);
    wait_dropped(&server).await;
    publisher.publish(ROOM, json!({"n": 207}), "p").await;
    let mut alice = server.client("alice").await;
    alice.subscribe(ROOM).await;
    let again = n_of(&alice.recv().await);
    assert!(again <= 207, "{again}");
    for n in again + 1..=207 {
        assert_eq!(n_of(&alice.recv().await), n);
    }
    barrier(&mut alice, &mut publisher, ROOM, 208).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_gap_that_retention_passed_is_not_replayed_at_all() {
    let server = TestServer::start_with(config()).await;
    let channel = "small/resume";
    let mut publisher = server.client("pub").await;
    let mut alice = server.client("alice").await;
    alice.subscribe(channel).await;
    publisher.publish(channel, json!({"n": 1}), "p").await;
    assert_eq!(n_of(&alice.recv().await), 1);
    wait_confirmed(&server, &mut alice, 1.0).await;
    drop(alice);
    wait_dropped(&server).await;
    // `small/*` keeps 10: the 2nd to the 11th are gone once the 21st is in.
    for n in 2..=21 {
        publisher.publish(channel, json!({"n": n}), "p").await;
    }
    let mut alice = server.client("alice").await;
    alice.subscribe(channel).await;
    barrier(&mut alice, &mut publisher, channel, 22).await;
    assert_eq!(
        metric(&server, "herald_resume_failed_total{kind=\"transparent\"}").await,
        1.0
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_explicit_since_recovers_all_or_says_it_did_not() {
    let server = TestServer::start_with(config()).await;
    let mut publisher = server.client("pub").await;
    let mut bob = server.client("bob").await;
    bob.subscribe(ROOM).await;
    for n in 1..=4 {
        publisher.publish(ROOM, json!({"n": n}), "p").await;
    }
    let second = bob.recv().await;
    let epoch = second["epoch"].as_str().unwrap().to_string();
    assert_eq!(second["offset"], 1);

    let mut carol = server.client("carol").await;
    let since = json!({"epoch": epoch, "offset": 1});
    carol
        .send_json(json!({"type": "subscribe", "channel": ROOM, "since": since, "requestId": "s"}))
        .await;
    assert_eq!(
        carol.recv().await,
        json!({"type": "ack", "requestId": "s", "recovered": true})
    );
    assert_eq!(carol.recv().await["type"], "presence");
    for n in 2..=4 {
        let m = carol.recv().await;
        assert_eq!(n_of(&m), n, "every message after offset 1, and no rewind");
        assert_eq!(m["id"], json!(format!("{epoch}-{n}")));
    }
    barrier(&mut carol, &mut publisher, ROOM, 5).await;

    // Another epoch, a malformed since, or a channel without history: nothing, and said so.
    for (i, (channel, since)) in [
        (ROOM, json!({"epoch": "000000000000", "offset": 1})),
        (ROOM, json!({"epoch": 7})),
        ("plain/x", json!({"epoch": epoch, "offset": 0})),
    ]
    .into_iter()
    .enumerate()
    {
        let mut dave = server.client(&format!("dave{i}")).await;
        dave.send_json(
            json!({"type": "subscribe", "channel": channel, "since": since, "requestId": "s"}),
        )
        .await;
        assert_eq!(
            dave.recv().await,
            json!({"type": "ack", "requestId": "s", "recovered": false}),
            "{since}"
        );
        assert_eq!(dave.recv().await["type"], "presence");
        barrier(&mut dave, &mut publisher, channel, 100 + i as u64).await;
    }
    assert_eq!(
        metric(&server, "herald_resume_failed_total{kind=\"explicit\"}").await,
        3.0
    );
    server.shutdown().await;
}

#[tokio::test]
async fn publishable_key_peers_and_channels_without_history_behave_as_before() {
    let server = TestServer::start_with(config()).await;
    let mut publisher = server.client("pub").await;

    // A publishable-key peer: a fresh id per connection, nothing kept.
    let (mut anon, anon_id) = server.pk_client(PK).await;
    anon.subscribe(ROOM).await;
    publisher.publish(ROOM, json!({"n": 1}), "p").await;
    assert_eq!(n_of(&anon.recv().await), 1);
    drop(anon);
    for n in 2..=6 {
        publisher.publish(ROOM, json!({"n": n}), "p").await;
    }
    let reply = publisher
        .request(json!({"type": "send", "to": anon_id, "data": 1}), "d")
        .await;
    assert_eq!(reply["code"], "peer_not_found", "{reply}");
    let (mut anon, _) = server.pk_client(PK).await;
    anon.subscribe(ROOM).await;
    for n in 4..=6 {
        assert_eq!(
            n_of(&anon.recv().await),
            n,
            "a new subscriber's rewind of 3"
        );
    }
    barrier(&mut anon, &mut publisher, ROOM, 7).await;

    // A stable peer on a channel without history: no positions, no replay, no rewind.
    let plain = "plain/resume";
    let mut erin = server.client("erin").await;
    erin.subscribe(plain).await;
    publisher.publish(plain, json!({"n": 1}), "p").await;
    let m = erin.recv().await;
    assert_eq!(n_of(&m), 1);
    assert!(m.get("offset").is_none(), "{m}");
    erin.expect_silence(300).await;
    drop(erin);
    publisher.publish(plain, json!({"n": 2}), "p").await;
    let mut erin = server.client("erin").await;
    erin.subscribe(plain).await;
    barrier(&mut erin, &mut publisher, plain, 3).await;

    assert_eq!(metric(&server, "herald_watermark_pings_total").await, 0.0);
    let text = metrics_text(&server).await;
    assert!(!text.contains("herald_resume_attempts_total{"), "{text}");
    server.shutdown().await;
}
