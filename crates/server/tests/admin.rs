//! The read-only admin view: app-scoped JSON endpoints and the page that uses them.
#![allow(clippy::unwrap_used)]

use herald_testkit::prelude::*;
use serde_json::{json, Value};

const AUTH: &str = "Bearer sk_id_test:sk_secret_test_0123456789abcdef";

async fn get(server: &TestServer, path: &str, auth: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(format!("http://{}{}", server.addr, path));
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn shows_connections_channels_peers_and_members() {
    let server = TestServer::start().await;
    let mut alice = server
        .client_with_meta("alice", r#"{"username":"Alice"}"#)
        .await;
    let mut alice_tab = server.client("alice").await;
    let mut bob = server.client("bob").await;
    alice.subscribe("lobby").await;
    alice.subscribe("team/a").await;
    alice_tab.subscribe("lobby").await;
    bob.subscribe("lobby").await;
    bob.subscribe("sensors/*").await;
    // Another app's connection never shows up.
    let mut other =
        Client::connect(&server.token_url(&sign(OTHER_SK_ID, OTHER_SK_SECRET, &claims("mallory"))))
            .await;
    other.recv().await;
    other.subscribe("lobby").await;

    let (status, overview) = get(&server, "/admin/api/overview", Some(AUTH)).await;
    assert_eq!(status, 200);
    assert_eq!(overview["appId"], APP);
    assert_eq!(overview["app"]["connections"], 3);
    assert_eq!(overview["app"]["channels"], 3);
    assert_eq!(overview["app"]["subscriptions"], 5);
    assert_eq!(overview["node"]["sessions"], 4);

    let (_, channels) = get(&server, "/admin/api/channels", Some(AUTH)).await;
    assert_eq!(
        channels["channels"],
        json!([
            {"channel": "lobby", "members": 2, "subscribers": 3},
            {"channel": "sensors/*", "members": 0, "subscribers": 1},
            {"channel": "team/a", "members": 1, "subscribers": 1},
        ])
    );

    let (_, conns) = get(&server, "/admin/api/connections", Some(AUTH)).await;
    let conns = conns["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 3);
    let bob_entry = conns.iter().find(|c| c["peerId"] == "bob").unwrap();
    assert_eq!(bob_entry["channels"], json!(["lobby", "sensors/*"]));
    assert_eq!(bob_entry["kind"], "token");
    assert!(bob_entry["connectedAt"].as_i64().unwrap() > 0);

    let (_, peer) = get(&server, "/admin/api/peers/alice", Some(AUTH)).await;
    assert_eq!(peer["online"], true);
    let mut channel_sets: Vec<Value> = peer["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channels"].clone())
        .collect();
    channel_sets.sort_by_key(|v| v.as_array().unwrap().len());
    assert_eq!(
        channel_sets,
        vec![json!(["lobby"]), json!(["lobby", "team/a"])]
    );
    let (_, peer) = get(&server, "/admin/api/peers/mallory", Some(AUTH)).await;
    assert_eq!(
        peer,
        json!({"peerId": "mallory", "online": false, "connections": []})
    );

    for path in ["/admin/api/channels/team%2Fa", "/admin/api/channels/team/a"] {
        let (status, channel) = get(&server, path, Some(AUTH)).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            channel,
            json!({"channel": "team/a", "members": [{"peerId": "alice", "metadata": {"username": "Alice"}}], "localSubscribers": 1})
        );
    }
    let (status, _) = get(&server, "/admin/api/channels/a%00b", Some(AUTH)).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn requires_a_secret_key_and_serves_a_locked_down_page() {
    let server = TestServer::start().await;
    for path in [
        "/admin/api/overview",
        "/admin/api/connections",
        "/admin/api/channels",
        "/admin/api/peers/x",
    ] {
        for auth in [
            None,
            Some("Bearer pk_live_test"),
            Some("Bearer sk_id_test:nope"),
        ] {
            let (status, body) = get(&server, path, auth).await;
            assert_eq!(
                (status, body["error"].as_str()),
                (401, Some("unauthorized")),
                "{path} {auth:?}"
            );
        }
    }
    let resp = reqwest::get(format!("http://{}/admin", server.addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let html = resp.text().await.unwrap();
    assert!(html.contains("/admin/admin.js"));
    for asset in ["/admin/admin.js", "/admin/admin.css"] {
        let resp = reqwest::get(format!("http://{}{}", server.addr, asset))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{asset}");
    }
}
