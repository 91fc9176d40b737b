//! Channel history on the Redis engine against real servers: three nodes on one Redis and on
//! a Redis Cluster. What node 0 publishes (REST and WebSocket), a subscriber on node 2 gets as
//! its rewind and REST on node 2 lists, with the same positions, and paging on node 1 covers
//! every message exactly once; after node 0 is gone, both still do.
#![allow(clippy::unwrap_used)]

use herald_server::config::{HistoryChannels, HistoryConfig};
use herald_testkit::cluster::Cluster;
use herald_testkit::prelude::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const SK: &str = SK_AUTH;
const ROOM: &str = "room/1";

fn history_config() -> HistoryConfig {
    HistoryConfig {
        channels: vec![HistoryChannels {
            patterns: vec!["room/*".into()],
            max_messages: 1000,
            max_age_secs: 3600,
            rewind: 20,
        }],
        ..HistoryConfig::default()
    }
}

async fn get(server: &TestServer, path: &str) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", server.http()))
        .header("authorization", SK)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

/// Pages back from the newest, 7 at a time; returns every offset listed, oldest first.
async fn page_back(server: &TestServer) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut path = "/v1/channels/room%2F1/messages?limit=7".to_string();
    loop {
        let (status, page) = get(server, &path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let got = history_offsets(&page);
        seen.splice(0..0, got.iter().copied());
        if page["hasMore"] == false {
            return seen;
        }
        path = format!("/v1/channels/room%2F1/messages?limit=7&before={}", got[0]);
    }
}

async fn publish_on_a_read_on_c(mut cluster: Cluster) {
    let (a, b, c) = (cluster.node(0), cluster.node(1), cluster.node(2));
    for n in 1..=25 {
        a.rest_publish(ROOM, json!({ "n": n })).await;
    }
    let mut alice =
        Client::connect(&a.token_url(&token_with_meta("alice", r#"{"name":"A"}"#))).await;
    alice.recv().await;
    for n in 26..=30 {
        alice
            .publish(ROOM, json!({ "n": n }), &format!("p{n}"))
            .await;
    }
    let mut bob = c.client("bob").await;
    bob.subscribe_opts(ROOM, true).await;
    let mut rewound = Vec::new();
    for _ in 0..20 {
        rewound.push(bob.recv().await);
    }
    let (status, page) = get(c, "/v1/channels/room%2F1/messages?limit=20").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        (&page["channel"], &page["hasMore"]),
        (&json!(ROOM), &json!(true))
    );
    assert_eq!(history_offsets(&page), (11..=30).collect::<Vec<_>>());
    let epoch = page["epoch"].as_str().unwrap().to_string();
    for (frame, listed) in rewound.iter().zip(page["messages"].as_array().unwrap()) {
        assert_eq!(
            (&frame["type"], &frame["epoch"]),
            (&json!("message"), &json!(epoch))
        );
        for field in ["id", "offset", "ts", "from", "data"] {
            assert_eq!(frame[field], listed[field], "{field}: {frame} vs {listed}");
        }
        assert_eq!(frame.get("fromMetadata"), listed.get("fromMetadata"));
        let offset = listed["offset"].as_u64().unwrap();
        assert_eq!(listed["data"], json!({ "n": offset }));
        let (from, meta) = if offset <= 25 {
            ("server", None)
        } else {
            ("alice", Some(&json!({"name": "A"})))
        };
        assert_eq!(
            (listed["from"].as_str().unwrap(), listed.get("fromMetadata")),
            (from, meta)
        );
    }
    alice.publish(ROOM, json!({"n": 31}), "p31").await;
    let live = bob.recv().await;
    assert_eq!(
        (live["offset"].as_u64(), &live["epoch"]),
        (Some(31), &json!(epoch))
    );
    assert_eq!(page_back(b).await, (1..=31).collect::<Vec<_>>());

    // Node 0 goes away; its messages stay, for reads and for rewinds on the others.
    drop(alice);
    cluster.nodes.remove(0).shutdown().await;
    let c = cluster.node(1);
    let mut carol = c.client("carol").await;
    carol.subscribe(ROOM).await;
    for n in 12..=31 {
        let frame = carol.recv().await;
        assert_eq!(
            (frame["offset"].as_u64(), &frame["epoch"]),
            (Some(n), &json!(epoch)),
            "{frame}"
        );
    }
    assert_eq!(page_back(c).await, (1..=31).collect::<Vec<_>>());
}

#[tokio::test]
async fn three_nodes_on_one_redis() {
    publish_on_a_read_on_c(Cluster::redis_with(3, |c| c.history = history_config()).await).await;
}

#[tokio::test]
async fn three_nodes_on_a_redis_cluster() {
    let cluster = Cluster::redis_cluster_with(3, |c| c.history = history_config()).await;
    publish_on_a_read_on_c(cluster).await;
}

/// A channel outside every group answers 404 on the Redis engine too, and its messages carry
/// no position.
#[tokio::test]
async fn other_channels_keep_nothing() {
    let cluster = Cluster::redis_with(2, |c| c.history = history_config()).await;
    let (a, b) = (cluster.node(0), cluster.node(1));
    let mut bob = b.client("bob").await;
    bob.subscribe("lobby").await;
    a.rest_publish("lobby", json!(1)).await;
    assert_eq!(
        bob.recv().await,
        json!({"type": "message", "channel": "lobby", "from": "server", "data": 1})
    );
    let (status, body) = get(a, "/v1/channels/lobby/messages").await;
    assert_eq!(
        (status.as_u16(), &body["error"]),
        (404, &json!("history_not_enabled"))
    );
}
