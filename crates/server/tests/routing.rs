//! Who receives what (spec §2.2 effective permissions, §4.4-4.5, §5.3-5.4, §9.4, §14): publish
//! and direct fan-out, server-stamped senders, wildcard subscriptions, app isolation.
#![allow(clippy::unwrap_used)]
use herald_testkit::prelude::*;

use serde_json::json;

// ---- publish -------------------------------------------------------------------------------------

#[tokio::test]
async fn data_is_forwarded_byte_for_byte() {
    let server = TestServer::start().await;
    let mut a = server.client("alice").await;
    let mut b = server.client("bob").await;
    b.subscribe("room/bytes").await;
    let data = r#"{ "n" : 1500.0, "big": 12345678901234567890123, "s":"\u00e9\ud83c\udf89", "z":[ ], "k":1e3 }"#;
    a.send_text(&format!(
        r#"{{"type":"publish","channel":"room/bytes","data":{data},"requestId":"p"}}"#
    ))
    .await;
    assert_eq!(a.recv().await, ack("p"));
    assert_eq!(
        b.recv_text().await,
        format!(r#"{{"type":"message","channel":"room/bytes","from":"alice","data":{data}}}"#)
    );
    a.send_text(&format!(r#"{{"type":"send","to":"bob","data":{data}}}"#))
        .await;
    assert_eq!(
        b.recv_text().await,
        format!(r#"{{"type":"direct","from":"alice","data":{data}}}"#)
    );
    // Scalars and null.
    for data in ["null", "0", "-0.0", "\"\"", "true", "[]", "{}"] {
        a.send_text(&format!(
            r#"{{"type":"publish","channel":"room/bytes","data":{data}}}"#
        ))
        .await;
        assert_eq!(
            b.recv_text().await,
            format!(r#"{{"type":"message","channel":"room/bytes","from":"alice","data":{data}}}"#)
        );
    }
}

#[tokio::test]
async fn spoofed_sender_fields_are_ignored() {
    let server = TestServer::start().await;
    let mut a = server.client("alice").await;
    let mut b = server.client_with_meta("bob", r#"{"role":"user"}"#).await;
    a.subscribe_opts("room/spoof", true).await;
    b.subscribe("room/spoof").await;
    a.recv().await;
    let data = r#"{"from":"admin","fromMetadata":{"role":"admin"},"type":"message"}"#;
    b.send_text(&format!(
        r#"{{"type":"publish","channel":"room/spoof","from":"admin","fromMetadata":{{"role":"admin"}},"peerId":"admin","data":{data}}}"#
    ))
    .await;
    assert_eq!(
        a.recv_text().await,
        format!(
            r#"{{"type":"message","channel":"room/spoof","from":"bob","data":{data},"fromMetadata":{{"role":"user"}}}}"#
        )
    );
    b.send_text(&format!(
        r#"{{"type":"send","to":"alice","from":"admin","fromMetadata":{{"role":"admin"}},"data":{data}}}"#
    ))
    .await;
    assert_eq!(
        a.recv_text().await,
        format!(
            r#"{{"type":"direct","from":"bob","data":{data},"fromMetadata":{{"role":"user"}}}}"#
        )
    );
    // A pk sender is stamped with its server-assigned UUID, and has no metadata anywhere.
    let (mut pk, pk_id) = server.pk_client(PK).await;
    pk.subscribe("room/spoof").await;
    assert_eq!(
        a.recv().await,
        json!({"type":"presence","channel":"room/spoof","joined":[{"peerId":pk_id}],"left":[]})
    );
    b.recv().await;
    pk.send_json(json!({"type":"publish","channel":"room/spoof","from":"alice","data":1}))
        .await;
    let m = a.recv().await;
    assert_eq!(m["from"], pk_id);
    assert!(
        m.get("fromMetadata").is_none(),
        "pk has no peerMetadata: {m}"
    );
}

#[tokio::test]
async fn publisher_need_not_subscribe_and_never_gets_its_own_message() {
    let server = TestServer::start().await;
    let mut a1 = server.client("alice").await;
    let mut a2 = server.client("alice").await;
    let mut b = server.client("bob").await;
    a1.subscribe("room/self").await;
    a2.subscribe("room/self").await;
    b.subscribe("room/self").await;
    a1.recv().await;
    a2.recv().await;
    // Publishing from a1: a2 (same peer, other connection) and b receive it, a1 does not.
    a1.publish("room/self", json!("x"), "p1").await;
    assert_eq!(a2.recv().await["from"], "alice");
    assert_eq!(b.recv().await["from"], "alice");
    a1.expect_silence(150).await;
    // An unsubscribed connection may publish.
    let mut outsider = server.client("outsider").await;
    outsider.publish("room/self", json!("y"), "p2").await;
    for c in [&mut a1, &mut a2, &mut b] {
        assert_eq!(c.recv().await["from"], "outsider");
    }
    outsider.expect_silence(100).await;
}

#[tokio::test]
async fn include_sender_metadata_is_per_subscription_and_last_subscribe_wins() {
    let server = TestServer::start().await;
    let mut pub_ = server.client_with_meta("alice", r#"{"u":"A"}"#).await;
    let mut plain = server.client("plain").await;
    let mut r = server.client("r").await;
    r.subscribe_opts("room/m", true).await;
    r.subscribe("room/n").await;
    // A publisher without peerMetadata never produces fromMetadata.
    plain.publish("room/m", json!(0), "p0").await;
    assert!(r.recv().await.get("fromMetadata").is_none());
    pub_.publish("room/m", json!(1), "p1").await;
    assert_eq!(r.recv().await["fromMetadata"], json!({"u":"A"}));
    pub_.publish("room/n", json!(2), "p2").await;
    assert!(r.recv().await.get("fromMetadata").is_none());
    // Re-subscribe flips the flags.
    r.subscribe("room/m").await;
    r.subscribe_opts("room/n", true).await;
    pub_.publish("room/m", json!(3), "p3").await;
    assert!(r.recv().await.get("fromMetadata").is_none());
    pub_.publish("room/n", json!(4), "p4").await;
    assert_eq!(r.recv().await["fromMetadata"], json!({"u":"A"}));
    // Only JSON `true` opts in.
    r.send_json(json!({"type":"subscribe","channel":"room/m","includeSenderMetadata":"true"}))
        .await;
    r.recv().await;
    pub_.publish("room/m", json!(5), "p5").await;
    assert!(r.recv().await.get("fromMetadata").is_none());
}

// ---- direct ----------------------------------------------------------------------------------------

#[tokio::test]
async fn direct_needs_no_shared_channel_and_always_carries_from_metadata() {
    let server = TestServer::start().await;
    let mut a = server.client_with_meta("alice", r#"{"u":"A"}"#).await;
    let mut b = server.client("bob").await;
    a.subscribe("room/one").await;
    b.subscribe("room/two").await;
    a.send_to("bob", json!({"x":1}), "d1").await;
    assert_eq!(
        b.recv().await,
        json!({"type":"direct","from":"alice","data":{"x":1},"fromMetadata":{"u":"A"}})
    );
    // Without peerMetadata, no fromMetadata key.
    b.send_to("alice", json!(null), "d2").await;
    assert_eq!(
        a.recv().await,
        json!({"type":"direct","from":"bob","data":null})
    );
}

#[tokio::test]
async fn direct_reaches_every_connection_of_the_target() {
    let server = TestServer::start().await;
    let mut a = server.client("alice").await;
    let mut b1 = server.client("bob").await;
    let mut b2 = server.client("bob").await;
    let mut b3 = server.client("bob").await;
    a.send_to("bob", json!("hi"), "d").await;
    for b in [&mut b1, &mut b2, &mut b3] {
        assert_eq!(
            b.recv().await,
            json!({"type":"direct","from":"alice","data":"hi"})
        );
    }
    // After two of them close, the remaining one still gets it; after all close, peer_not_found.
    b1.close().await;
    b2.close().await;
    a.sync().await;
    a.send_to("bob", json!("again"), "d2").await;
    assert_eq!(b3.recv().await["data"], "again");
    b3.close().await;
    let mut tries = 0;
    loop {
        let reply = a
            .request(json!({"type":"send","to":"bob","data":1}), "d3")
            .await;
        if reply["type"] == "error" {
            assert_error(&reply, "peer_not_found", Some("d3"));
            break;
        }
        tries += 1;
        assert!(tries < 150, "bob never went offline");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn send_to_self_reaches_only_other_connections() {
    let server = TestServer::start().await;
    let mut a1 = server.client("alice").await;
    // Alone: peer_not_found.
    let reply = a1
        .request(json!({"type":"send","to":"alice","data":1}), "s1")
        .await;
    assert_error(&reply, "peer_not_found", Some("s1"));
    let mut a2 = server.client("alice").await;
    a1.send_to("alice", json!("me"), "s2").await;
    assert_eq!(
        a2.recv().await,
        json!({"type":"direct","from":"alice","data":"me"})
    );
    a1.expect_silence(150).await;
}

#[tokio::test]
async fn peer_ids_are_exact_and_case_sensitive() {
    let server = TestServer::start().await;
    let mut a = server.client("alice").await;
    let _b = server.client("Bob").await;
    for to in ["bob", "BOB", "Bob ", " Bob"] {
        let reply = a
            .request(json!({"type":"send","to":to,"data":1}), "c")
            .await;
        assert_error(&reply, "peer_not_found", Some("c"));
    }
    a.send_to("Bob", json!(1), "ok").await;
}

// ---- permissions -----------------------------------------------------------------------------------

#[tokio::test]
async fn pk_defaults_lack_send_and_are_bounded_to_their_patterns() {
    let server = TestServer::start().await;
    let _bob = server.client("bob").await;
    let (mut pk, _) = server.pk_client(PK_DEFAULTS).await;
    let reply = pk
        .request(json!({"type":"send","to":"bob","data":1}), "s")
        .await;
    assert_error(&reply, "action_not_permitted", Some("s"));
    for ch in ["room/1", "publicx", "Public/a", "pub"] {
        let reply = pk
            .request(json!({"type":"subscribe","channel":ch}), "c")
            .await;
        assert_error(&reply, "channel_not_authorized", Some("c"));
        let reply = pk
            .request(json!({"type":"publish","channel":ch,"data":1}), "p")
            .await;
        assert_error(&reply, "channel_not_authorized", Some("p"));
    }
    pk.subscribe("public/lobby").await;
    pk.subscribe("public/a/b/c").await;
    pk.publish("public/lobby", json!(1), "ok").await;
    // Wildcard subscriptions must be included in the key's patterns.
    pk.subscribe("public/*").await;
    pk.subscribe("public/**").await;
    for pattern in ["*", "**", "pub*/x", "*/lobby"] {
        let reply = pk
            .request(json!({"type":"subscribe","channel":pattern}), "w")
            .await;
        assert_error(&reply, "channel_not_authorized", Some("w"));
    }
}

#[tokio::test]
async fn permissions_claim_narrows_actions() {
    let server = TestServer::start().await;
    let _bob = server.client("bob").await;
    let mut c = claims("alice");
    c.permissions = Some(vec!["subscribe".into()]);
    let mut a = server.client_with_token(&token_for(&c)).await;
    let reply = a
        .request(json!({"type":"publish","channel":"room/x","data":1}), "p")
        .await;
    assert_error(&reply, "action_not_permitted", Some("p"));
    let reply = a
        .request(json!({"type":"send","to":"bob","data":1}), "s")
        .await;
    assert_error(&reply, "action_not_permitted", Some("s"));
    // subscribe is allowed; presence is not in the claim, so no snapshot.
    assert_eq!(
        a.request(json!({"type":"subscribe","channel":"room/x"}), "ok")
            .await,
        ack("ok")
    );
    a.expect_silence(150).await;

    // An empty permissions claim permits nothing.
    let mut c = claims("nobody");
    c.permissions = Some(vec![]);
    let mut n = server.client_with_token(&token_for(&c)).await;
    let reply = n
        .request(json!({"type":"subscribe","channel":"room/x"}), "n")
        .await;
    assert_error(&reply, "action_not_permitted", Some("n"));
    // Unsubscribe needs no action.
    n.expect_ack(json!({"type":"unsubscribe","channel":"room/x"}), "u")
        .await;

    // The claim cannot widen the key: SK_NARROW lacks send and presence.
    let mut c = claims("wide");
    c.permissions = Some(vec![
        "send".into(),
        "presence".into(),
        "publish".into(),
        "subscribe".into(),
    ]);
    let mut w = server
        .client_with_token(&sign(SK_NARROW_ID, SK_NARROW_SECRET, &c))
        .await;
    let reply = w
        .request(json!({"type":"send","to":"bob","data":1}), "s")
        .await;
    assert_error(&reply, "action_not_permitted", Some("s"));
    assert_eq!(
        w.request(json!({"type":"subscribe","channel":"room/a"}), "ok")
            .await,
        ack("ok")
    );
    w.expect_silence(150).await;
}

#[tokio::test]
async fn channels_claim_narrows_channels() {
    let server = TestServer::start().await;
    let mut c = claims("alice");
    c.channels = Some(vec!["room/a".into(), "team/*".into()]);
    let mut a = server.client_with_token(&token_for(&c)).await;
    a.subscribe("room/a").await;
    a.subscribe("team/x").await;
    a.subscribe("team/*").await;
    a.publish("team/y", json!(1), "p").await;
    for ch in ["room/b", "team/x/y", "room/*", "**"] {
        let reply = a
            .request(json!({"type":"subscribe","channel":ch}), "c")
            .await;
        assert_error(&reply, "channel_not_authorized", Some("c"));
    }
    let reply = a
        .request(json!({"type":"publish","channel":"room/b","data":1}), "p2")
        .await;
    assert_error(&reply, "channel_not_authorized", Some("p2"));
    // A narrow key bounds a token without a channels claim.
    let mut n = server
        .client_with_token(&sign(SK_NARROW_ID, SK_NARROW_SECRET, &claims("n")))
        .await;
    let reply = n
        .request(json!({"type":"subscribe","channel":"lobby"}), "l")
        .await;
    assert_error(&reply, "channel_not_authorized", Some("l"));
    let reply = n
        .request(json!({"type":"subscribe","channel":"room/**"}), "l2")
        .await;
    assert_error(&reply, "channel_not_authorized", Some("l2"));
    n.expect_ack(json!({"type":"subscribe","channel":"room/*"}), "ok")
        .await;
}

// ---- wildcard subscriptions ------------------------------------------------------------------------

#[tokio::test]
async fn wildcard_subscription_receives_concrete_channels_once() {
    let server = TestServer::start().await;
    let mut w = server.client("watcher").await;
    let mut p = server.client("pub").await;
    let (_, snap) = w.subscribe("room/*").await;
    assert_eq!(snap, empty_presence("room/*"));
    p.publish("room/a", json!(1), "p1").await;
    assert_eq!(
        w.recv().await,
        json!({"type":"message","channel":"room/a","from":"pub","data":1})
    );
    // Not matched: deeper paths and other prefixes.
    p.publish("room/a/b", json!(2), "p2").await;
    p.publish("rooms/a", json!(3), "p3").await;
    w.expect_silence(150).await;
    // Exact + wildcard (+ a second, broader wildcard): still once, with the concrete channel.
    w.subscribe("room/a").await;
    w.subscribe("**").await;
    p.publish("room/a", json!(4), "p4").await;
    assert_eq!(
        w.recv().await,
        json!({"type":"message","channel":"room/a","from":"pub","data":4})
    );
    w.expect_silence(150).await;
    // Dropping the exact one keeps the wildcard delivery.
    w.expect_ack(json!({"type":"unsubscribe","channel":"room/a"}), "u1")
        .await;
    p.publish("room/a", json!(5), "p5").await;
    assert_eq!(w.recv().await["data"], 5);
    w.expect_silence(100).await;
    // Dropping the wildcards stops it.
    w.expect_ack(json!({"type":"unsubscribe","channel":"room/*"}), "u2")
        .await;
    w.expect_ack(json!({"type":"unsubscribe","channel":"**"}), "u3")
        .await;
    p.publish("room/a", json!(6), "p6").await;
    w.expect_silence(150).await;
}

#[tokio::test]
async fn wildcard_subscriptions_get_no_presence_deltas() {
    let server = TestServer::start().await;
    let mut w = server.client("watcher").await;
    w.subscribe("devices/*/events").await;
    let mut d = server.client("device").await;
    let (_, snap) = d.subscribe("devices/1/events").await;
    // The wildcard subscriber is not a member of the concrete channel.
    assert_eq!(snap["joined"], json!([]));
    d.close().await;
    w.expect_silence(200).await;
    // A duplicate wildcard subscribe re-sends the empty snapshot.
    let (_, snap) = w.subscribe("devices/*/events").await;
    assert_eq!(snap, empty_presence("devices/*/events"));
    let mut p = server.client("pub").await;
    p.publish("devices/7/events", json!({"t":1}), "p").await;
    assert_eq!(w.recv().await["channel"], "devices/7/events");
}

#[tokio::test]
async fn wildcard_metadata_flag_and_publisher_exclusion() {
    let server = TestServer::start().await;
    let mut w = server.client_with_meta("w", r#"{"u":"W"}"#).await;
    let mut p = server.client_with_meta("p", r#"{"u":"P"}"#).await;
    w.subscribe_opts("room/*", true).await;
    p.publish("room/x", json!(1), "p1").await;
    assert_eq!(w.recv().await["fromMetadata"], json!({"u":"P"}));
    // The publisher's own wildcard subscription does not echo its message back.
    w.publish("room/x", json!(2), "p2").await;
    w.expect_silence(150).await;
}

#[tokio::test]
async fn publishing_to_a_wildcard_is_invalid_channel() {
    let server = TestServer::start().await;
    let mut a = server.client("alice").await;
    for ch in ["room/*", "**", "a*b", "room/**/x"] {
        let reply = a
            .request(json!({"type":"publish","channel":ch,"data":1}), "w")
            .await;
        assert_error(&reply, "invalid_channel", Some("w"));
    }
    // An escaped star is a literal channel name.
    let mut b = server.client("bob").await;
    b.subscribe(r"room/\*").await;
    a.publish(r"room/\*", json!(1), "lit").await;
    assert_eq!(b.recv().await["channel"], r"room/\*");
}

#[tokio::test]
async fn wildcard_subscriptions_can_be_disabled() {
    let config = config_with(|c| c.wildcard_subscriptions = false);
    let server = TestServer::start_with(config).await;
    let mut a = server.client("alice").await;
    let reply = a
        .request(json!({"type":"subscribe","channel":"room/*"}), "w")
        .await;
    assert_error(&reply, "invalid_channel", Some("w"));
    a.subscribe(r"room/\*").await;
}

// ---- app isolation -----------------------------------------------------------------------------------

#[tokio::test]
async fn apps_are_isolated() {
    let server = TestServer::start().await;
    let mut here = server.client("alice").await;
    let mut there = server
        .client_with_token(&sign(OTHER_SK_ID, OTHER_SK_SECRET, &claims("alice")))
        .await;
    let mut bob_there = server
        .client_with_token(&sign(OTHER_SK_ID, OTHER_SK_SECRET, &claims("bob")))
        .await;
    let (_, snap) = here.subscribe("room/1").await;
    assert_eq!(snap["joined"], json!([]));
    let (_, snap) = there.subscribe("room/1").await;
    assert_eq!(snap["joined"], json!([]), "no cross-app presence");
    here.subscribe("room/*").await;
    here.expect_silence(150).await;
    // Publishing in one app does not reach the same channel (or a wildcard) in the other.
    there.publish("room/1", json!("other"), "p").await;
    here.expect_silence(150).await;
    here.publish("room/1", json!("here"), "p2").await;
    there.expect_silence(150).await;
    // `send` resolves within the app only: alice exists in both, bob only in the other app.
    let reply = here
        .request(json!({"type":"send","to":"bob","data":1}), "s")
        .await;
    assert_error(&reply, "peer_not_found", Some("s"));
    bob_there.send_to("alice", json!("hi"), "s2").await;
    assert_eq!(there.recv().await["data"], "hi");
    here.expect_silence(150).await;
    // Closing in one app emits nothing in the other.
    there.close().await;
    here.expect_silence(200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcomed_peer_is_immediately_reachable() {
    // Once a client has its welcome, a direct to it must route (not peer_not_found), and the
    // direct arrives after the welcome.
    let server = TestServer::start().await;
    let mut a = server.client("alice").await;
    for i in 0..40 {
        let sub = format!("fresh{i}");
        let mut fresh = Client::connect(&server.token_url(&token(&sub))).await;
        assert_eq!(fresh.recv().await["type"], "welcome");
        a.send_to(&sub, json!(i), "d").await;
        assert_eq!(fresh.recv().await["data"], i);
    }
}
