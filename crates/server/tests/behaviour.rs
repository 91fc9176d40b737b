//! One behaviour suite, two engines: presence, pub/sub, direct and REST behaviour, run
//! unchanged on one memory node, on three nodes sharing a real Redis, and on three nodes
//! sharing a real three-master Redis Cluster (sharded pub/sub). Clients are spread over the
//! nodes, so on Redis every test crosses nodes.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use herald_testkit::cluster::Cluster;
use herald_testkit::prelude::*;
use serde_json::{json, Value};

macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name(super::Cluster::memory().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name(super::Cluster::redis(3).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis_cluster() {
                super::$name(super::Cluster::redis_cluster(3).await).await
            }
        }
    )*};
}

on_both_engines!(
    snapshot_then_deltas_with_metadata,
    presence_is_counted_per_peer_across_connections,
    publish_reaches_every_other_subscriber_once_in_order,
    sender_metadata_only_for_receivers_that_opted_in,
    direct_reaches_every_connection_of_the_peer,
    newcomer_snapshot_precedes_reactions_to_its_join,
    duplicate_subscribe_resends_the_snapshot_only,
    unsubscribe_and_close_emit_left,
    wildcard_subscription_gets_each_message_once,
    apps_are_isolated,
    rest_lists_publishes_and_kicks_from_any_node,
);

const AUTH: &str = "Bearer sk_id_test:sk_secret_test_0123456789abcdef";

async fn rest(
    node: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let mut req = reqwest::Client::new()
        .request(method, format!("http://{}{}", node.addr, path))
        .header("authorization", AUTH);
    if let Some(body) = body {
        req = req.body(body.to_string());
    }
    let resp = req.send().await.unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.unwrap()
}

async fn snapshot_then_deltas_with_metadata(c: Cluster) {
    let mut ana = c
        .node(0)
        .client_with_meta("ana", r#"{"username":"Ana","avatarUrl":"/a.png"}"#)
        .await;
    let mut ben = c
        .node(1)
        .client_with_meta("ben", r#"{"username":"Ben"}"#)
        .await;
    let mut cy = c.node(2).client("cy").await;

    let (_, snap) = ana.subscribe("room").await;
    assert_eq!(
        snap,
        json!({"type": "presence", "channel": "room", "joined": [], "left": []})
    );
    let (_, snap) = ben.subscribe("room").await;
    assert_eq!(
        snap["joined"],
        json!([{"peerId": "ana", "metadata": {"username": "Ana", "avatarUrl": "/a.png"}}])
    );
    assert_eq!(
        ana.recv().await,
        json!({"type": "presence", "channel": "room", "joined": [{"peerId": "ben", "metadata": {"username": "Ben"}}], "left": []})
    );
    let (_, snap) = cy.subscribe("room").await;
    assert_eq!(peer_ids(&snap["joined"]), vec!["ana", "ben"]);
    for watcher in [&mut ana, &mut ben] {
        assert_eq!(
            watcher.recv().await,
            json!({"type": "presence", "channel": "room", "joined": [{"peerId": "cy"}], "left": []})
        );
    }
    cy.close().await;
    for watcher in [&mut ana, &mut ben] {
        assert_eq!(
            watcher.recv().await,
            json!({"type": "presence", "channel": "room", "joined": [], "left": [{"peerId": "cy"}]})
        );
        watcher.expect_silence(150).await;
    }
}

async fn presence_is_counted_per_peer_across_connections(c: Cluster) {
    let mut watcher = c.node(0).client("w").await;
    watcher.subscribe("room").await;
    let mut tab1 = c.node(1).client("x").await;
    let mut tab2 = c.node(2).client("x").await;
    tab1.subscribe("room").await;
    assert_eq!(peer_ids(&watcher.recv().await["joined"]), vec!["x"]);
    let (_, snap) = tab2.subscribe("room").await;
    assert_eq!(
        peer_ids(&snap["joined"]),
        vec!["w"],
        "a peer never sees itself"
    );
    watcher.expect_silence(200).await;
    tab1.close().await;
    watcher.expect_silence(300).await;
    tab2.close().await;
    assert_eq!(watcher.recv().await["left"], json!([{"peerId": "x"}]));
    watcher.expect_silence(200).await;
}

async fn publish_reaches_every_other_subscriber_once_in_order(c: Cluster) {
    let mut publisher = c.node(0).client("pub").await;
    let mut near = c.node(0).client("near").await;
    let mut far = c.node(1).client("far").await;
    for client in [&mut publisher, &mut near, &mut far] {
        client.subscribe("feed").await;
    }
    // Drain the joins.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for client in [&mut publisher, &mut near] {
        while let Ok(Some(_)) = tokio::time::timeout(
            Duration::from_millis(50),
            futures_util::StreamExt::next(&mut client.ws),
        )
        .await
        {}
    }
    for i in 0..200 {
        publisher
            .send_json(json!({"type": "publish", "channel": "feed", "data": {"i": i}}))
            .await;
    }
    publisher
        .request(
            json!({"type": "publish", "channel": "feed", "data": "end"}),
            "last",
        )
        .await;
    for receiver in [&mut near, &mut far] {
        for i in 0..200 {
            let m = receiver.recv().await;
            assert_eq!(
                (
                    m["type"].as_str(),
                    m["from"].as_str(),
                    m["data"]["i"].as_i64()
                ),
                (Some("message"), Some("pub"), Some(i)),
                "{m}"
            );
        }
        assert_eq!(receiver.recv().await["data"], "end");
        receiver.expect_silence(150).await;
    }
    publisher.expect_silence(150).await;
}

async fn sender_metadata_only_for_receivers_that_opted_in(c: Cluster) {
    let mut sender = c.node(0).client_with_meta("s", r#"{"username":"S"}"#).await;
    let mut opted = c.node(1).client("o").await;
    let mut plain = c.node(2).client("p").await;
    opted.subscribe_opts("ch", true).await;
    plain.subscribe("ch").await;
    opted.recv().await; // p joined
    let data = r#"{"n": 1500.0, "from": "admin"}"#;
    sender
        .send_text(&format!(
            r#"{{"type":"publish","channel":"ch","data":{data},"requestId":"r","from":"admin"}}"#
        ))
        .await;
    assert_eq!(
        sender.recv().await,
        json!({"type": "ack", "requestId": "r"})
    );
    assert_eq!(
        opted.recv_text().await,
        format!(
            r#"{{"type":"message","channel":"ch","from":"s","data":{data},"fromMetadata":{{"username":"S"}}}}"#
        )
    );
    assert_eq!(
        plain.recv_text().await,
        format!(r#"{{"type":"message","channel":"ch","from":"s","data":{data}}}"#)
    );
}

async fn direct_reaches_every_connection_of_the_peer(c: Cluster) {
    let mut sender = c.node(0).client_with_meta("s", r#"{"username":"S"}"#).await;
    let mut t1 = c.node(1).client("t").await;
    let mut t2 = c.node(2).client("t").await;
    let ack = sender
        .request(json!({"type": "send", "to": "t", "data": {"hi": 1}}), "d1")
        .await;
    assert_eq!(ack, json!({"type": "ack", "requestId": "d1"}));
    for t in [&mut t1, &mut t2] {
        assert_eq!(
            t.recv().await,
            json!({"type": "direct", "from": "s", "data": {"hi": 1}, "fromMetadata": {"username": "S"}})
        );
    }
    let err = sender
        .request(json!({"type": "send", "to": "nobody", "data": 1}), "d2")
        .await;
    assert_eq!(
        (err["code"].as_str(), err["requestId"].as_str()),
        (Some("peer_not_found"), Some("d2"))
    );
    // To oneself: only the other connection.
    let ack = t1
        .request(json!({"type": "send", "to": "t", "data": "me"}), "d3")
        .await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(t2.recv().await["data"], "me");
    t1.expect_silence(150).await;
    let mut alone = c.node(1).client("alone").await;
    let err = alone
        .request(json!({"type": "send", "to": "alone", "data": 1}), "d4")
        .await;
    assert_eq!(err["code"], "peer_not_found");
}

async fn newcomer_snapshot_precedes_reactions_to_its_join(c: Cluster) {
    let mut old = c.node(0).client("old").await;
    old.subscribe("call").await;
    let mut newcomer = c.node(1).client("new").await;
    newcomer
        .send_json(json!({"type": "subscribe", "channel": "call", "requestId": "s"}))
        .await;
    assert_eq!(old.recv().await["joined"][0]["peerId"], "new");
    old.request(
        json!({"type": "send", "to": "new", "data": {"type": "rtc-description"}}),
        "x",
    )
    .await;
    assert_eq!(newcomer.recv().await["type"], "ack");
    let snapshot = newcomer.recv().await;
    assert_eq!(peer_ids(&snapshot["joined"]), vec!["old"]);
    assert_eq!(newcomer.recv().await["type"], "direct");
}

async fn duplicate_subscribe_resends_the_snapshot_only(c: Cluster) {
    let mut a = c.node(0).client("a").await;
    let mut b = c.node(1).client("b").await;
    a.subscribe("r").await;
    b.subscribe("r").await;
    a.recv().await; // b joined
    let (_, snap) = b.subscribe("r").await;
    assert_eq!(peer_ids(&snap["joined"]), vec!["a"]);
    a.expect_silence(250).await;
}

async fn unsubscribe_and_close_emit_left(c: Cluster) {
    let mut w = c.node(0).client("w").await;
    w.subscribe("r").await;
    let mut a = c.node(1).client_with_meta("a", r#"{"username":"A"}"#).await;
    a.subscribe("r").await;
    w.recv().await;
    let ack = a
        .request(json!({"type": "unsubscribe", "channel": "r"}), "u")
        .await;
    assert_eq!(ack["type"], "ack");
    let left = w.recv().await;
    assert_eq!(left["left"][0]["peerId"], "a");
    a.expect_silence(150).await;
    a.subscribe("r").await;
    assert_eq!(w.recv().await["joined"][0]["peerId"], "a");
    a.close().await;
    assert_eq!(w.recv().await["left"][0]["peerId"], "a");
}

async fn wildcard_subscription_gets_each_message_once(c: Cluster) {
    let mut watcher = c.node(0).client("w").await;
    let (_, snap) = watcher.subscribe("sensors/*").await;
    assert_eq!(snap["joined"], json!([]));
    watcher.subscribe("sensors/a").await;
    let mut device = c.node(1).client("dev").await;
    device
        .request(
            json!({"type": "publish", "channel": "sensors/a", "data": 1}),
            "p1",
        )
        .await;
    device
        .request(
            json!({"type": "publish", "channel": "sensors/b", "data": 2}),
            "p2",
        )
        .await;
    device
        .request(
            json!({"type": "publish", "channel": "other/c", "data": 3}),
            "p3",
        )
        .await;
    let first = watcher.recv().await;
    assert_eq!(
        (first["channel"].as_str(), first["data"].as_i64()),
        (Some("sensors/a"), Some(1))
    );
    let second = watcher.recv().await;
    assert_eq!(
        (second["channel"].as_str(), second["data"].as_i64()),
        (Some("sensors/b"), Some(2))
    );
    watcher.expect_silence(250).await;
}

async fn apps_are_isolated(c: Cluster) {
    let mut mine = c.node(0).client("same").await;
    mine.subscribe("room").await;
    let other_token = sign(OTHER_SK_ID, OTHER_SK_SECRET, &claims("same"));
    let mut theirs = Client::connect(&c.node(1).token_url(&other_token)).await;
    theirs.recv().await;
    let (_, snap) = theirs.subscribe("room").await;
    assert_eq!(snap["joined"], json!([]));
    theirs
        .request(
            json!({"type": "publish", "channel": "room", "data": 1}),
            "p",
        )
        .await;
    let err = theirs
        .request(json!({"type": "send", "to": "other", "data": 1}), "s")
        .await;
    assert_eq!(err["code"], "peer_not_found");
    mine.expect_silence(250).await;
}

async fn rest_lists_publishes_and_kicks_from_any_node(c: Cluster) {
    let mut a = c.node(0).client_with_meta("a", r#"{"username":"A"}"#).await;
    let mut k1 = c.node(1).client("k").await;
    let mut k2 = c.node(2).client("k").await;
    a.subscribe_opts("dm/x", true).await;
    k1.subscribe("dm/x").await;
    k2.subscribe("dm/x").await;
    a.recv().await; // k joined (once)
    let peers = rest(
        c.node(2),
        reqwest::Method::GET,
        "/v1/channels/dm%2Fx/peers",
        None,
    )
    .await;
    let mut ids: Vec<&str> = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["peerId"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["a", "k"]);
    let published = rest(
        c.node(1),
        reqwest::Method::POST,
        "/v1/channels/dm/x/publish",
        Some(json!({"data": {"n": 1}})),
    )
    .await;
    assert_eq!(published, json!({"channel": "dm/x", "delivered": 3}));
    for client in [&mut a, &mut k1, &mut k2] {
        let m = client.recv().await;
        assert_eq!(
            (m["from"].as_str(), m["data"]["n"].as_i64()),
            (Some("system"), Some(1))
        );
    }
    let kicked = rest(c.node(0), reqwest::Method::DELETE, "/v1/peers/k", None).await;
    assert_eq!(kicked, json!({"peerId": "k", "closed": 2}));
    assert_eq!(k1.recv_close().await.0, 4020);
    assert_eq!(k2.recv_close().await.0, 4020);
    assert_eq!(
        a.recv().await,
        json!({"type": "presence", "channel": "dm/x", "joined": [], "left": [{"peerId": "k"}]})
    );
    a.expect_silence(200).await;
}
