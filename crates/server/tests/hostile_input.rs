//! Hostile payload shapes: JSON nested deep enough to crash receivers' parsers, and `data`
//! larger than the advertised `maxMessageSize`. The attacker gets an error frame and keeps its
//! socket; nothing reaches anyone else, and everyone else carries on.
#![allow(clippy::unwrap_used)]
use herald_testkit::prelude::*;

use serde_json::{json, Value};

/// `depth` arrays inside one another: `[[[...]]]`, 2 × depth bytes.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn publish_text(channel: &str, data: &str, request_id: &str) -> String {
    format!(
        r#"{{"type":"publish","channel":"{channel}","data":{data},"requestId":"{request_id}"}}"#
    )
}

fn send_text(to: &str, data: &str, request_id: &str) -> String {
    format!(r#"{{"type":"send","to":"{to}","data":{data},"requestId":"{request_id}"}}"#)
}

/// A JSON string literal of exactly `len` bytes, quotes included.
fn string_of_len(len: usize) -> String {
    format!("\"{}\"", "x".repeat(len - 2))
}

/// Publishes a marker and checks it is the very next thing `receiver` gets: FIFO per sender
/// means anything the attacker published earlier would have arrived first.
async fn marker_is_next(attacker: &mut Client, receiver: &mut Client, channel: &str) {
    attacker.publish(channel, json!("marker"), "marker").await;
    let got = receiver.recv().await;
    assert_eq!(got["data"], "marker", "{got}");
}

#[tokio::test]
async fn over_deep_publishes_are_refused_and_never_forwarded() {
    let server = TestServer::start().await;
    let mut subscriber = server.client("alice").await;
    subscriber.subscribe("room/deep").await;
    let (mut attacker, attacker_id) = server.pk_client(PK).await;
    attacker.subscribe("room/deep").await;
    let joined = subscriber.recv().await;
    assert_eq!(peer_ids(&joined["joined"]), vec![attacker_id.clone()]);

    for (depth, rid) in [(5000, "d5000"), (1000, "d1000"), (65, "d65")] {
        attacker
            .send_text(&publish_text("room/deep", &nested(depth), rid))
            .await;
        let reply = attacker.recv().await;
        assert_error(&reply, "malformed_message", Some(rid));
    }
    marker_is_next(&mut attacker, &mut subscriber, "room/deep").await;

    // 64 levels, the default limit, is an ordinary payload: delivered byte for byte.
    let ok = nested(64);
    attacker
        .send_text(&publish_text("room/deep", &ok, "d64"))
        .await;
    assert_eq!(attacker.recv().await, ack("d64"));
    let text = subscriber.recv_text().await;
    assert!(text.contains(&format!(r#""data":{ok}"#)), "{text}");

    // Nobody was disconnected: the subscriber saw no presence change, both sockets work.
    subscriber.sync().await;
    attacker.sync().await;
}

#[tokio::test]
async fn over_deep_sends_are_refused_and_never_forwarded() {
    let server = TestServer::start().await;
    let mut target = server.client("bob").await;
    let mut attacker = server.client("mallory").await;
    attacker
        .send_text(&send_text("bob", &nested(5000), "s1"))
        .await;
    assert_error(&attacker.recv().await, "malformed_message", Some("s1"));
    // Objects count like arrays, wherever they sit in the frame.
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(100), "}".repeat(100));
    attacker
        .send_text(&send_text("bob", &deep_object, "s2"))
        .await;
    assert_error(&attacker.recv().await, "malformed_message", Some("s2"));

    attacker.send_to("bob", json!("marker"), "m").await;
    let got = target.recv().await;
    assert_eq!(
        (got["type"].clone(), got["data"].clone()),
        (json!("direct"), json!("marker"))
    );
}

/// A lone UTF-16 surrogate escape is valid JSON grammar but names no character: a strict
/// receiver (the Rust SDK) would drop the whole frame, a lenient one would build a broken
/// string. Found by fuzzing; refused at the door, while a proper pair passes untouched.
#[tokio::test]
async fn lone_surrogate_escapes_are_refused_and_pairs_pass() {
    let server = TestServer::start().await;
    let mut subscriber = server.client("alice").await;
    subscriber.subscribe("room/u").await;
    let (mut attacker, attacker_id) = server.pk_client(PK).await;
    attacker.subscribe("room/u").await;
    let joined = subscriber.recv().await;
    assert_eq!(peer_ids(&joined["joined"]), vec![attacker_id]);

    for (data, rid) in [(r#""\ud901""#, "high"), (r#"{"s":["\ude00"]}"#, "low")] {
        attacker.send_text(&publish_text("room/u", data, rid)).await;
        assert_error(&attacker.recv().await, "malformed_message", Some(rid));
    }
    marker_is_next(&mut attacker, &mut subscriber, "room/u").await;

    attacker
        .send_text(&publish_text("room/u", r#""\ud83d\ude00""#, "pair"))
        .await;
    assert_eq!(attacker.recv().await, ack("pair"));
    assert_eq!(subscriber.recv().await["data"], "\u{1F600}");
}

#[tokio::test]
async fn the_depth_limit_follows_the_config() {
    let server = TestServer::start_with(config_with(|c| c.limits.max_json_depth = 8)).await;
    let mut subscriber = server.client("alice").await;
    subscriber.subscribe("room/x").await;
    let mut publisher = server.client("bob").await;
    publisher
        .send_text(&publish_text("room/x", &nested(9), "nine"))
        .await;
    assert_error(&publisher.recv().await, "malformed_message", Some("nine"));
    publisher
        .send_text(&publish_text("room/x", &nested(8), "eight"))
        .await;
    assert_eq!(publisher.recv().await, ack("eight"));
    let got = subscriber.recv().await;
    assert_eq!(
        got["data"],
        serde_json::from_str::<Value>(&nested(8)).unwrap()
    );
}

#[tokio::test]
async fn data_is_bounded_by_the_advertised_max_message_size() {
    let server = TestServer::start().await;
    let (mut subscriber, welcome) = server.welcomed(&format!("token={}", token("alice"))).await;
    let max = welcome["maxMessageSize"].as_u64().unwrap() as usize;
    assert_eq!(max, 65536);
    subscriber.subscribe("room/big").await;
    let mut publisher = server.client("bob").await;

    // One byte over: refused, kept off the wire, and the socket stays open.
    publisher
        .send_text(&publish_text("room/big", &string_of_len(max + 1), "over"))
        .await;
    let reply = publisher.recv().await;
    assert_error(&reply, "malformed_message", Some("over"));
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("maxMessageSize"),
        "{reply}"
    );
    publisher
        .send_text(&send_text("alice", &string_of_len(max + 1), "over-send"))
        .await;
    assert_error(
        &publisher.recv().await,
        "malformed_message",
        Some("over-send"),
    );

    // Exactly the maximum: accepted and delivered, for publish and send alike.
    let exact = string_of_len(max);
    publisher
        .send_text(&publish_text("room/big", &exact, "exact"))
        .await;
    assert_eq!(publisher.recv().await, ack("exact"));
    let got = subscriber.recv().await;
    assert_eq!(
        (got["type"].as_str(), got["data"].as_str().map(str::len)),
        (Some("message"), Some(max - 2))
    );
    publisher
        .send_text(&send_text("alice", &exact, "exact-send"))
        .await;
    assert_eq!(publisher.recv().await, ack("exact-send"));
    let got = subscriber.recv().await;
    assert_eq!(
        (got["type"].as_str(), got["data"].as_str().map(str::len)),
        (Some("direct"), Some(max - 2))
    );
    // The refused frames were never delivered: the marker comes straight after.
    marker_is_next(&mut publisher, &mut subscriber, "room/big").await;
}

#[tokio::test]
async fn a_flood_of_deep_frames_leaves_others_undisturbed() {
    let server = TestServer::start().await;
    let mut subscriber = server.client("alice").await;
    subscriber.subscribe("room/flood").await;
    let mut friend = server.client("carol").await;
    friend.subscribe("room/flood").await;
    subscriber.recv().await; // carol joined
    let (mut attacker, _) = server.pk_client(PK).await;
    attacker.subscribe("room/flood").await;
    subscriber.recv().await; // the attacker joined
    friend.recv().await;

    // 100 frames of 10 KB each, nested 5,000 deep (well inside the rate burst).
    let deep = publish_text("room/flood", &nested(5000), "deep");
    attacker.send_burst(std::iter::repeat_n(deep, 100)).await;
    for _ in 0..100 {
        assert_error(&attacker.recv().await, "malformed_message", Some("deep"));
    }
    // The friend's traffic still flows, and the attacker's next real publish is what arrives.
    friend.publish("room/flood", json!({"hi": 1}), "hi").await;
    assert_eq!(subscriber.recv().await["data"], json!({"hi": 1}));
    assert_eq!(attacker.recv().await["data"], json!({"hi": 1}));
    marker_is_next(&mut attacker, &mut subscriber, "room/flood").await;
    subscriber.sync().await;
}

#[tokio::test]
async fn rest_publish_refuses_over_deep_data() {
    let server = TestServer::start().await;
    let mut subscriber = server.client("alice").await;
    subscriber.subscribe("room/rest").await;
    let publish = |body: String| {
        reqwest::Client::new()
            .post(format!(
                "http://{}/v1/channels/room%2Frest/publish",
                server.addr
            ))
            .header("authorization", format!("Bearer {SK_ID}:{SK_SECRET}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let resp = publish(format!(r#"{{"data":{}}}"#, nested(1000)))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request", "{body}");
    let resp = publish(r#"{"data":"marker"}"#.to_string()).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(subscriber.recv().await["data"], "marker");
}
