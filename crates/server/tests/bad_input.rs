//! Bad client input (spec §3, §5.6, §6, §9.1, §10): every case gets the exact error frame or
//! close code, per-request errors keep the socket open, and nobody else is disturbed.
#![allow(clippy::unwrap_used)]
use herald_testkit::prelude::*;

use serde_json::json;

/// After an error the connection must still work: a ping round trip proves it.
async fn still_open(c: &mut Client) {
    c.sync().await;
}

#[tokio::test]
async fn garbage_text_frames_are_malformed_without_request_id() {
    let server = TestServer::start().await;
    let mut c = server.client("alice").await;
    for text in [
        "hello",
        "",
        " ",
        "{",
        "}",
        "{\"type\":",
        "[]",
        "[{\"type\":\"ping\"}]",
        "null",
        "true",
        "42",
        "\"ping\"",
        "{\"type\":\"ping\"} trailing",
        "{\"type\":\"ping\"}{\"type\":\"ping\"}",
        "{'type':'ping'}",
        "{\"type\":\"ping\",}",
        // Duplicate keys are not a well-formed envelope either.
        "{\"type\":\"ping\",\"type\":\"publish\"}",
        "\u{feff}{\"type\":\"ping\"}",
    ] {
        c.send_text(text).await;
        let reply = c.recv().await;
        assert_error(&reply, "malformed_message", None);
    }
    still_open(&mut c).await;
}

#[tokio::test]
async fn whitespace_and_unknown_fields_are_fine() {
    let server = TestServer::start().await;
    let mut c = server.client("alice").await;
    c.send_text("  {\n \"type\" : \"ping\" ,\t\"requestId\" : \"r1\" , \"extra\": [1,{}] }\n")
        .await;
    assert_eq!(c.recv().await, json!({"type":"pong","requestId":"r1"}));
    c.send_text(r#"{"requestId":"s1","channel":"room/x","type":"subscribe","foo":{"bar":null},"data":1,"to":5}"#)
        .await;
    assert_eq!(c.recv().await, ack("s1"));
    assert_eq!(c.recv().await, empty_presence("room/x"));
}

#[tokio::test]
async fn binary_frames_are_malformed_and_the_socket_stays_open() {
    let server = TestServer::start().await;
    let mut c = server.client("alice").await;
    c.send_binary(br#"{"type":"ping","requestId":"b1"}"#.to_vec())
        .await;
    assert_error(&c.recv().await, "malformed_message", None);
    c.send_binary(vec![0xff, 0x00, 0x13]).await;
    assert_error(&c.recv().await, "malformed_message", None);
    c.send_binary(vec![]).await;
    assert_error(&c.recv().await, "malformed_message", None);
    still_open(&mut c).await;
}

#[tokio::test]
async fn type_missing_or_not_a_string_is_malformed_echoing_request_id() {
    let server = TestServer::start().await;
    let mut c = server.client("alice").await;
    for (frame, rid) in [
        (json!({}), None),
        (json!({"requestId":"r1"}), Some("r1")),
        (json!({"type":7,"requestId":"r2"}), Some("r2")),
        (json!({"type":null,"requestId":"r3"}), Some("r3")),
        (json!({"type":["ping"],"requestId":"r4"}), Some("r4")),
        (json!({"type":{"name":"ping"}}), None),
        (json!({"type":true,"channel":"room/x"}), None),
    ] {
        c.send_json(frame.clone()).await;
        assert_error(&c.recv().await, "malformed_message", rid);
    }
    still_open(&mut c).await;
}

#[tokio::test]
async fn bad_request_ids_are_malformed_and_the_frame_is_not_processed() {
    let server = TestServer::start().await;
    let mut a = server.client("alice").await;
    let mut b = server.client("bob").await;
    b.subscribe("room/rid").await;
    let too_long = "r".repeat(129);
    for rid in [
        json!(5),
        json!(""),
        json!(null),
        json!(["r"]),
        json!({"id":"r"}),
        json!(too_long),
    ] {
        // None of these may subscribe or publish.
        a.send_json(json!({"type":"subscribe","channel":"room/rid","requestId":rid}))
            .await;
        assert_error(&a.recv().await, "malformed_message", None);
        a.send_json(json!({"type":"publish","channel":"room/rid","data":1,"requestId":rid}))
            .await;
        assert_error(&a.recv().await, "malformed_message", None);
        a.send_json(json!({"type":"ping","requestId":rid})).await;
        assert_error(&a.recv().await, "malformed_message", None);
    }
    // No subscription happened (bob saw no join) and nothing was published.
    b.expect_silence(200).await;
    // 128 characters (even multi-byte ones) is still a valid requestId.
    let max = "é".repeat(128);
    a.send_json(json!({"type":"ping","requestId":max})).await;
    assert_eq!(a.recv().await, json!({"type":"pong","requestId":max}));
    still_open(&mut a).await;
}

#[tokio::test]
async fn unknown_type_echoes_request_id() {
    let server = TestServer::start().await;
    let mut c = server.client("alice").await;
    let reply = c.request(json!({"type":"dance"}), "u1").await;
    assert_error(&reply, "unknown_type", Some("u1"));
    c.send_json(json!({"type":"dance"})).await;
    assert_error(&c.recv().await, "unknown_type", None);
    // Types are case-sensitive, and server-only types are unknown from a client.
    for ty in [
        "Subscribe",
        "PING",
        "ack",
        "welcome",
        "message",
        "direct",
        "pong",
        "",
    ] {
        let reply = c.request(json!({"type":ty}), "u2").await;
        assert_error(&reply, "unknown_type", Some("u2"));
    }
    still_open(&mut c).await;
}

#[tokio::test]
async fn wrong_field_types() {
    let server = TestServer::start().await;
    let mut c = server.client("alice").await;
    // channel missing or not a string → invalid_channel, for subscribe, unsubscribe and publish.
    for ty in ["subscribe", "unsubscribe", "publish"] {
        for channel in [json!(null), json!(5), json!(["room/x"]), json!({"c":1})] {
            let reply = c
                .request(json!({"type":ty,"channel":channel,"data":1}), "c1")
                .await;
            assert_error(&reply, "invalid_channel", Some("c1"));
        }
        let reply = c.request(json!({"type":ty,"data":1}), "c2").await;
        assert_error(&reply, "invalid_channel", Some("c2"));
    }
    // publish without data → missing_data; data: null is valid.
    let reply = c
        .request(json!({"type":"publish","channel":"room/x"}), "d1")
        .await;
    assert_error(&reply, "missing_data", Some("d1"));
    c.publish("room/x", json!(null), "d2").await;
    // send: to missing / not a string / invalid → invalid_peer_id; data missing → missing_data.
    for to in [
        json!(null),
        json!(7),
        json!(["bob"]),
        json!(""),
        json!("a".repeat(129)),
        json!("bo\u{0}b"),
        json!("bob\n"),
        json!("x\u{7f}"),
        json!("x\u{85}"),
    ] {
        let reply = c
            .request(json!({"type":"send","to":to,"data":1}), "t1")
            .await;
        assert_error(&reply, "invalid_peer_id", Some("t1"));
    }
    let reply = c.request(json!({"type":"send","data":1}), "t2").await;
    assert_error(&reply, "invalid_peer_id", Some("t2"));
    let reply = c.request(json!({"type":"send","to":"bob"}), "t3").await;
    assert_error(&reply, "missing_data", Some("t3"));
    // A 128-byte target is valid (and offline).
    let reply = c
        .request(json!({"type":"send","to":"a".repeat(128),"data":1}), "t4")
        .await;
    assert_error(&reply, "peer_not_found", Some("t4"));
    // Errors without a requestId are still sent, uncorrelated.
    c.send_json(json!({"type":"publish","channel":"room/x"}))
        .await;
    assert_error(&c.recv().await, "missing_data", None);
    // A non-boolean includeSenderMetadata is lenient: subscribe works.
    let reply = c
        .request(
            json!({"type":"subscribe","channel":"room/y","includeSenderMetadata":"yes"}),
            "i1",
        )
        .await;
    assert_eq!(reply, ack("i1"));
    assert_eq!(c.recv().await, empty_presence("room/y"));
    still_open(&mut c).await;
}

#[tokio::test]
async fn channel_names() {
    let server = TestServer::start().await;
    let mut c = server.client("alice").await;
    let two_byte_129 = "é".repeat(129); // 258 bytes, 129 characters
    let bad = [
        "a".repeat(257),
        two_byte_129,
        format!("{}a", "é".repeat(128)), // 257 bytes
        String::new(),
        "room\u{0}x".into(),
        "room\nx".into(),
        "room\tx".into(),
        "room\u{7f}".into(),
        "room\u{85}".into(),
        "\u{9f}".into(),
    ];
    for name in &bad {
        for ty in ["subscribe", "publish", "unsubscribe"] {
            let reply = c
                .request(json!({"type":ty,"channel":name,"data":1}), "n1")
                .await;
            assert_error(&reply, "invalid_channel", Some("n1"));
        }
    }
    // The limits themselves are fine, and names are echoed byte-for-byte.
    let good = [
        "a".repeat(256),
        "é".repeat(128),
        "Room 1/ü/🎉".into(),
        " spaced ".into(),
        "a\\b".into(),
        "quote\"d".into(),
    ];
    for name in &good {
        let snap = c.subscribe_as(name, "g1").await;
        assert_eq!(snap, empty_presence(name));
    }
    // No Unicode normalisation: precomposed and decomposed "café" are different channels.
    let mut d = server.client("dave").await;
    d.subscribe("caf\u{e9}").await;
    c.publish("cafe\u{301}", json!(1), "nfd").await;
    d.expect_silence(150).await;
    c.publish("caf\u{e9}", json!(2), "nfc").await;
    assert_eq!(d.recv().await["channel"], "caf\u{e9}");
    // Case-sensitive: Room/1 and room/1 are different channels.
    let mut b = server.client("bob").await;
    b.subscribe("room/1").await;
    let (_, snap) = c.subscribe("Room/1").await;
    assert_eq!(snap["joined"], json!([]));
    still_open(&mut c).await;
}

#[tokio::test]
async fn reserved_prefixes() {
    let server = TestServer::start().await;
    let mut c = server.client("alice").await;
    for name in [
        "_SYSTEM/x",
        "_system/x",
        "_metered/x",
        "_METERED/",
        "_internal/a/b",
        "_Internal/*",
    ] {
        for ty in ["subscribe", "publish"] {
            let reply = c
                .request(json!({"type":ty,"channel":name,"data":1}), "r1")
                .await;
            assert_error(&reply, "channel_reserved", Some("r1"));
        }
        // Unsubscribe only validates the name.
        c.expect_ack(json!({"type":"unsubscribe","channel":name}), "r2")
            .await;
    }
    // Near misses are ordinary channels.
    for name in ["_system", "system/x", "x/_system/y", "_systemx/y"] {
        c.subscribe(name).await;
    }
    // Validation comes before the reserved check.
    let long = format!("_system/{}", "a".repeat(250));
    let reply = c
        .request(json!({"type":"subscribe","channel":long}), "r3")
        .await;
    assert_error(&reply, "invalid_channel", Some("r3"));
    still_open(&mut c).await;
}

#[tokio::test]
async fn processing_order_of_checks() {
    let server = TestServer::start().await;
    // PK_DEFAULTS: patterns public/**, no send. Reserved comes before authorisation.
    let (mut pk, _) = server.pk_client(PK_DEFAULTS).await;
    let reply = pk
        .request(json!({"type":"subscribe","channel":"_system/x"}), "o1")
        .await;
    assert_error(&reply, "channel_reserved", Some("o1"));
    // send: invalid_peer_id, then missing_data, then action (before resolving the target).
    let reply = pk.request(json!({"type":"send","data":1}), "s1").await;
    assert_error(&reply, "invalid_peer_id", Some("s1"));
    let reply = pk.request(json!({"type":"send","to":"nobody"}), "s2").await;
    assert_error(&reply, "missing_data", Some("s2"));
    let reply = pk
        .request(json!({"type":"send","to":"nobody","data":1}), "s3")
        .await;
    assert_error(&reply, "action_not_permitted", Some("s3"));
    // A JWT with only `subscribe`: publish checks data before the action, and the action
    // before the channel's authorisation.
    let mut claims = claims("alice");
    claims.permissions = Some(vec!["subscribe".into()]);
    let mut c = server
        .client_with_token(&sign(SK_NARROW_ID, SK_NARROW_SECRET, &claims))
        .await;
    let reply = c
        .request(json!({"type":"publish","channel":"lobby"}), "o2")
        .await;
    assert_error(&reply, "missing_data", Some("o2"));
    let reply = c
        .request(json!({"type":"publish","channel":"lobby","data":1}), "o3")
        .await;
    assert_error(&reply, "action_not_permitted", Some("o3"));
    // A JWT with only `publish`: subscribe checks the action before the channel.
    let mut claims = herald_testkit::tokens::claims("bob");
    claims.permissions = Some(vec!["publish".into()]);
    let mut p = server
        .client_with_token(&sign(SK_NARROW_ID, SK_NARROW_SECRET, &claims))
        .await;
    let reply = p
        .request(json!({"type":"subscribe","channel":"lobby"}), "o4")
        .await;
    assert_error(&reply, "action_not_permitted", Some("o4"));
    let reply = p
        .request(json!({"type":"publish","channel":"lobby","data":1}), "o5")
        .await;
    assert_error(&reply, "channel_not_authorized", Some("o5"));
}

#[tokio::test]
async fn oversized_frame_closes_1009() {
    let server = TestServer::start().await;
    let cap = herald_server::Config::default().limits.max_frame_bytes;
    let mut c = server.client("alice").await;
    let frame = frame_of_len(cap + 1);
    c.send_text(&frame).await;
    let (code, frames) = c.recv_close().await;
    assert_eq!(code, 1009, "{frames:?}");
    assert!(frames.is_empty(), "{frames:?}");
    // A huge one too.
    let mut c = server.client("bob").await;
    c.send_text(&"x".repeat(1 << 20)).await;
    assert_eq!(c.recv_close().await.0, 1009);
}

/// A publish frame of exactly `len` bytes: `data` is as large as `maxMessageSize` allows, the
/// rest of the padding goes into an ignored field.
fn frame_of_len(len: usize) -> String {
    let data = "x".repeat(65534);
    let empty = format!(
        r#"{{"type":"publish","channel":"room/big","requestId":"big","data":"{data}","pad":""}}"#
    );
    let pad = len - empty.len();
    let frame = format!(
        r#"{{"type":"publish","channel":"room/big","requestId":"big","data":"{data}","pad":"{}"}}"#,
        "x".repeat(pad)
    );
    assert_eq!(frame.len(), len);
    frame
}

#[tokio::test]
async fn frames_up_to_the_cap_pass() {
    let server = TestServer::start().await;
    let cap = herald_server::Config::default().limits.max_frame_bytes;
    assert!(cap > 65536, "the cap needs headroom over maxMessageSize");
    let mut a = server.client("alice").await;
    let mut b = server.client("bob").await;
    b.subscribe("room/big").await;
    // An SDK-approved payload (serialized data of exactly 65536 bytes) in a frame with a
    // 256-byte channel and a 128-character requestId: the envelope must fit the headroom.
    let channel = format!("room/{}", "c".repeat(251));
    b.subscribe_as(&channel, "long").await;
    let rid = "r".repeat(128);
    let data = json!("d".repeat(65534));
    assert_eq!(data.to_string().len(), 65536);
    let frame = json!({"type":"publish","channel":channel,"requestId":rid,"data":data});
    a.send_json(frame).await;
    assert_eq!(a.recv().await, ack(&rid));
    let msg = b.recv().await;
    assert_eq!(msg["data"], data);
    // A frame of exactly the cap passes too.
    a.send_text(&frame_of_len(cap)).await;
    assert_eq!(a.recv().await, ack("big"));
    assert_eq!(b.recv().await["type"], "message");
    still_open(&mut a).await;
}

/// The server's read buffer starts small (256 B): a frame of the cap arriving in one write
/// between two tiny ones must grow it and still come out whole, in order.
#[tokio::test]
async fn a_frame_of_the_cap_between_small_ones_in_one_write_passes() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start().await;
    let cap = herald_server::Config::default().limits.max_frame_bytes;
    let mut raw = RawWs::connect(server.addr, &format!("token={}", token("alice"))).await;
    assert_eq!(raw.recv_json().await["type"], "welcome");
    let mut bytes = masked(br#"{"type":"ping","requestId":"before"}"#);
    bytes.extend(masked(frame_of_len(cap).as_bytes()));
    bytes.extend(masked(br#"{"type":"ping","requestId":"after"}"#));
    raw.stream.write_all(&bytes).await.unwrap();
    assert_eq!(raw.recv_json().await["requestId"], "before");
    assert_eq!(raw.recv_json().await, ack("big"));
    assert_eq!(raw.recv_json().await["requestId"], "after");
}

/// One masked, final text frame (clients must mask, RFC 6455 §5.3).
fn masked(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | OP_TEXT];
    let len = payload.len();
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if len <= 0xffff {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask = [0x5a, 0x11, 0xc3, 0x07];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[tokio::test]
async fn fragmented_message_over_the_cap_closes_1009() {
    let server = TestServer::start().await;
    let cap = herald_server::Config::default().limits.max_frame_bytes;
    let mut raw = RawWs::connect(server.addr, &format!("token={}", token("alice"))).await;
    assert_eq!(raw.recv_json().await["type"], "welcome");
    // Fragments of a message reassemble within the cap: fine.
    let frame = frame_of_len(cap);
    let (first, rest) = frame.as_bytes().split_at(cap / 2);
    raw.send_frame(OP_TEXT, first, false).await;
    raw.send_frame(OP_CONT, rest, true).await;
    assert_eq!(raw.recv_json().await, ack("big"));
    // Each fragment is below the cap but the whole message is above it.
    let frame = frame_of_len(cap + 10);
    let (first, rest) = frame.as_bytes().split_at(cap / 2);
    raw.send_frame(OP_TEXT, first, false).await;
    raw.send_frame(OP_CONT, rest, true).await;
    assert_eq!(raw.recv_close().await, Some(1009));
}

#[tokio::test]
async fn invalid_utf8_closes_1007() {
    let server = TestServer::start().await;
    let query = format!("token={}", token("alice"));
    let cases: [&[u8]; 4] = [
        &[0xff, 0xfe, 0xfd],
        b"{\"type\":\"ping\",\"x\":\"\xc3\x28\"}",
        // An overlong encoding of '/', and a lone surrogate.
        b"{\"type\":\"subscribe\",\"channel\":\"a\xc0\xafb\"}",
        b"{\"type\":\"ping\",\"x\":\"\xed\xa0\x80\"}",
    ];
    for payload in cases {
        let mut raw = RawWs::connect(server.addr, &query).await;
        assert_eq!(raw.recv_json().await["type"], "welcome");
        raw.send_frame(OP_TEXT, payload, true).await;
        assert_eq!(raw.recv_close().await, Some(1007), "{payload:?}");
    }
    // Invalid UTF-8 split across fragments (each fragment alone could be a valid prefix).
    let mut raw = RawWs::connect(server.addr, &query).await;
    assert_eq!(raw.recv_json().await["type"], "welcome");
    raw.send_frame(OP_TEXT, b"{\"type\":\"ping\",\"x\":\"\xe2\x82", false)
        .await;
    raw.send_frame(OP_CONT, b"\x28\"}", true).await;
    assert_eq!(raw.recv_close().await, Some(1007));
}

#[tokio::test]
async fn raw_client_sanity_valid_frames_work() {
    // The hand-rolled client used for the 1007 cases speaks valid WebSocket.
    let server = TestServer::start().await;
    let mut raw = RawWs::connect(server.addr, &format!("token={}", token("alice"))).await;
    assert_eq!(raw.recv_json().await["type"], "welcome");
    raw.send_text(r#"{"type":"ping","requestId":"é"}"#).await;
    assert_eq!(
        raw.recv_json().await,
        json!({"type":"pong","requestId":"é"})
    );
    raw.send_frame(OP_PING, b"hi", true).await;
    assert!(matches!(raw.read_frame().await, Some(RawFrame::Pong(p)) if p == b"hi"));
}

#[tokio::test]
async fn other_connections_are_undisturbed_by_bad_input() {
    let grace = std::time::Duration::from_millis(300);
    let config = config_with(|c| c.engine.reconnect_grace_ms = grace.as_millis() as u64);
    let server = TestServer::start_with(config).await;
    let mut a = server.client("alice").await;
    let mut b = server.client("bob").await;
    a.subscribe("room/chat").await;
    b.subscribe("room/chat").await;
    assert_eq!(a.recv().await["type"], "presence");

    // A noisy neighbour: garbage, binary, unknown types, bad fields.
    let mut noisy = server.client("mallory").await;
    noisy.send_text("garbage").await;
    noisy.send_binary(vec![1, 2, 3]).await;
    noisy.send_json(json!({"type":"dance"})).await;
    noisy
        .send_json(json!({"type":"publish","channel":"room/chat"}))
        .await;
    exchange(&mut a, &mut b, 1).await;

    // One that gets closed for an oversized frame.
    let mut big = server.client("mallory2").await;
    big.subscribe("room/chat").await;
    a.recv().await;
    b.recv().await;
    big.send_text(&"x".repeat(100_000)).await;
    assert_eq!(big.recv_close().await.0, 1009);
    let closed_at = std::time::Instant::now();
    // 1009 is retryable for the SDKs, so its departure is a drop: `left` after the grace.
    for c in [&mut a, &mut b] {
        assert_eq!(
            c.recv().await,
            json!({"type":"presence","channel":"room/chat","joined":[],"left":[{"peerId":"mallory2"}]})
        );
    }
    assert!(closed_at.elapsed() >= grace, "left inside the grace");
    exchange(&mut a, &mut b, 2).await;

    // One that sends invalid UTF-8.
    let mut raw = RawWs::connect(server.addr, &format!("token={}", token("mallory3"))).await;
    raw.recv_json().await;
    raw.send_frame(OP_TEXT, &[0xc3, 0x28], true).await;
    assert_eq!(raw.recv_close().await, Some(1007));
    exchange(&mut a, &mut b, 3).await;

    // One that floods and is closed by the rate limit.
    let mut flood = server.client("mallory4").await;
    flood
        .send_burst(
            (0..400).map(|_| r#"{"type":"publish","channel":"room/other","data":1}"#.into()),
        )
        .await;
    assert_eq!(flood.recv_close().await.0, 4011);
    exchange(&mut a, &mut b, 4).await;

    // The noisy neighbour is itself still fine.
    for _ in 0..4 {
        noisy.recv().await;
    }
    noisy.sync().await;
    a.expect_silence(100).await;
    b.expect_silence(100).await;
}

/// Alice publishes to bob and bob sends a direct back; both arrive intact.
async fn exchange(a: &mut Client, b: &mut Client, n: u32) {
    a.publish("room/chat", json!({ "n": n }), &format!("p{n}"))
        .await;
    let msg = b.recv().await;
    assert_eq!(msg["data"], json!({ "n": n }));
    b.send_to("alice", json!({ "n": n }), &format!("s{n}"))
        .await;
    let direct = a.recv().await;
    assert_eq!(direct["data"], json!({ "n": n }));
}

#[tokio::test]
async fn deeply_nested_json_is_refused_and_does_not_crash_the_server() {
    let server = TestServer::start().await;
    let mut a = server.client("alice").await;
    let mut b = server.client("bob").await;
    b.subscribe("room/deep").await;
    // Up to `limits.max_json_depth` (64) `data` is forwarded verbatim (checked as text).
    let data = format!("{}{}", "[".repeat(64), "]".repeat(64));
    a.send_text(&format!(
        r#"{{"type":"publish","channel":"room/deep","requestId":"d","data":{data}}}"#
    ))
    .await;
    assert_eq!(a.recv().await, ack("d"));
    let text = b.recv_text().await;
    assert!(text.ends_with(&format!(r#""data":{data}}}"#)));
    // Deeper is refused (hostile_input.rs has the details), however deep.
    for depth in [100usize, 1000, 34_000] {
        let data = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        a.send_text(&format!(
            r#"{{"type":"publish","channel":"room/deep","requestId":"d","data":{data}}}"#
        ))
        .await;
        assert_error(&a.recv().await, "malformed_message", Some("d"));
    }
    // Deep nesting in an ignored field, and in a field that must be a string.
    let deep_obj = format!("{}1{}", r#"{"a":"#.repeat(11_000), "}".repeat(11_000));
    a.send_text(&format!(
        r#"{{"type":"ping","requestId":"x","extra":{deep_obj}}}"#
    ))
    .await;
    assert_error(&a.recv().await, "malformed_message", Some("x"));
    let deep_arr = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    a.send_text(&format!(
        r#"{{"type":"subscribe","channel":{deep_arr},"requestId":"y"}}"#
    ))
    .await;
    assert_error(&a.recv().await, "malformed_message", Some("y"));
    // Unbalanced deep nesting is malformed.
    a.send_text(&format!(
        r#"{{"type":"ping","extra":{}}}"#,
        "[".repeat(30_000)
    ))
    .await;
    assert_error(&a.recv().await, "malformed_message", None);
    still_open(&mut a).await;
    still_open(&mut b).await;
}

#[tokio::test]
async fn escaped_json_strings_are_decoded() {
    let server = TestServer::start().await;
    let mut a = server.client("alice").await;
    // `type` and `requestId` written with escapes are the same strings.
    a.send_text(r#"{"t\u0079pe":"p\u0069ng","requestId":"r\u00e9"}"#)
        .await;
    assert_eq!(a.recv().await, json!({"type":"pong","requestId":"ré"}));
    // An escaped channel name is echoed decoded (it is the same string).
    a.send_text(r#"{"type":"subscribe","channel":"room\/\u00fc","requestId":"s"}"#)
        .await;
    assert_eq!(a.recv().await, ack("s"));
    assert_eq!(a.recv().await, empty_presence("room/ü"));
    // Escaped control characters and lone surrogates are refused like raw ones.
    for ch in [r#""room\u0000""#, r#""room\n""#, r#""\ud800""#] {
        a.send_text(&format!(
            r#"{{"type":"subscribe","channel":{ch},"requestId":"c"}}"#
        ))
        .await;
        assert_error(&a.recv().await, "invalid_channel", Some("c"));
    }
}

#[tokio::test]
async fn permessage_deflate_is_declined_cleanly() {
    // Both SDKs offer compression (spec §20.4); Herald declines, and plain frames work.
    let server = TestServer::start().await;
    let (mut raw, head) = RawWs::connect_with_headers(
        server.addr,
        &format!("token={}", token("alice")),
        &[(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits",
        )],
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
    assert_eq!(raw.recv_json().await["type"], "welcome");
    raw.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(raw.recv_json().await, json!({"type":"pong"}));
}
