//! A secret key handed to a narrow backend job must not reach past its scope through REST or the
//! admin API: every route checks the key's channel patterns and actions, the way the WebSocket
//! does, and an app-wide key keeps working everywhere.
#![allow(clippy::unwrap_used)]
use herald_protocol::Action;
use herald_server::config::Config;
use herald_testkit::prelude::*;
use reqwest::Method;
use serde_json::{json, Value};

const FULL: &str = "Bearer sk_id_test:sk_secret_test_0123456789abcdef";
/// `public/*`, `publish` only: the key from the report.
const PUBLISHER: &str = "Bearer sk_id_publisher:sk_secret_publisher_0123456789abcd";
/// `public/*` with `publish` and `presence`: may read rosters inside its scope.
const WATCHER: &str = "Bearer sk_id_watcher:sk_secret_watcher_0123456789abcdef";
/// `public/**` with every action: wide, but not the whole app.
const PUBLIC_ALL: &str = "Bearer sk_id_public_all:sk_secret_public_all_0123456789ab";
/// `*` and `*/**`: every channel name, though no pattern says `**` literally; `subscribe` only.
const UNION: &str = "Bearer sk_id_union:sk_secret_union_0123456789abcdef";

fn config() -> Config {
    let mut config = test_config();
    let template = config.apps[0].secret_keys[0].clone();
    let keys = [
        (
            "sk_id_publisher",
            "sk_secret_publisher_0123456789abcd",
            vec!["public/*"],
            vec![Action::Publish],
        ),
        (
            "sk_id_watcher",
            "sk_secret_watcher_0123456789abcdef",
            vec!["public/*"],
            vec![Action::Publish, Action::Presence],
        ),
        (
            "sk_id_public_all",
            "sk_secret_public_all_0123456789ab",
            vec!["public/**"],
            Action::ALL.to_vec(),
        ),
        (
            "sk_id_union",
            "sk_secret_union_0123456789abcdef",
            vec!["*", "*/**"],
            vec![Action::Subscribe],
        ),
    ];
    for (id, secret, patterns, actions) in keys {
        let mut key = template.clone();
        key.id = id.into();
        key.secret = secret.into();
        key.channel_patterns = patterns.into_iter().map(String::from).collect();
        key.actions = actions;
        config.apps[0].secret_keys.push(key);
    }
    config
}

async fn call(
    server: &TestServer,
    method: Method,
    path: &str,
    auth: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("http://{}{}", server.addr, path))
        .header("authorization", auth);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(server: &TestServer, path: &str, auth: &str) -> (u16, Value) {
    call(server, Method::GET, path, auth, None).await
}

#[track_caller]
fn assert_refused(got: (u16, Value), status: u16, code: &str, what: &str) {
    assert_eq!(got.0, status, "{what}: {}", got.1);
    assert_eq!(got.1["error"], code, "{what}: {}", got.1);
    assert!(got.1["message"].is_string(), "{what}: {}", got.1);
}

/// Sends a ping and expects the pong next: the connection is still open and nothing else is queued.
async fn assert_still_connected(client: &mut Client) {
    client.send_json(json!({"type": "ping"})).await;
    assert_eq!(client.recv().await["type"], "pong");
}

#[tokio::test]
async fn a_publish_only_scoped_key_reaches_nothing_outside_its_scope() {
    let server = TestServer::start_with(config()).await;
    let mut alice = server.client("alice").await;
    alice.subscribe("room/x").await;
    alice.subscribe("public/a").await;

    // Rosters are presence reads: refused without `presence`, inside the scope or not.
    for path in [
        "/v1/channels/room%2Fx/peers",
        "/v1/channels/public%2Fa/peers",
        "/admin/api/channels/room%2Fx",
        "/admin/api/channels/room/x",
        "/admin/api/channels/public%2Fa",
        "/admin/api/channels",
        "/admin/api/connections",
        "/admin/api/peers/alice",
    ] {
        assert_refused(
            get(&server, path, PUBLISHER).await,
            403,
            "action_not_permitted",
            path,
        );
    }

    // Publish: only inside the patterns (`*` does not cross `/`).
    let data = json!({"data": {"n": 1}});
    for path in [
        "/v1/channels/room%2Fx/publish",
        "/v1/channels/room/x/publish",
        "/v1/channels/public%2Fa%2Fdeep/publish",
    ] {
        let got = call(&server, Method::POST, path, PUBLISHER, Some(data.clone())).await;
        assert_refused(got, 403, "channel_not_authorized", path);
    }
    let (status, body) = call(
        &server,
        Method::POST,
        "/v1/channels/public%2Fa/publish",
        PUBLISHER,
        Some(json!({"data": {"n": 2}})),
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"channel": "public/a", "delivered": 1}))
    );
    // The refused publishes were never delivered: the first frame alice sees is the allowed one.
    let message = alice.recv().await;
    assert_eq!(
        (&message["channel"], &message["data"]),
        (&json!("public/a"), &json!({"n": 2}))
    );

    // Tokens: channels within the patterns (language inclusion), permissions within the actions.
    for (body, status, code) in [
        (
            json!({"peerId": "p", "channels": ["room/x"]}),
            403,
            "channel_not_authorized",
        ),
        (
            json!({"peerId": "p", "channels": ["public/**"]}),
            403,
            "channel_not_authorized",
        ),
        (
            json!({"peerId": "p", "permissions": ["subscribe"]}),
            403,
            "action_not_permitted",
        ),
        (
            json!({"peerId": "p", "permissions": ["presence"]}),
            403,
            "action_not_permitted",
        ),
    ] {
        let got = call(
            &server,
            Method::POST,
            "/v1/tokens",
            PUBLISHER,
            Some(body.clone()),
        )
        .await;
        assert_refused(got, status, code, &body.to_string());
    }
    for body in [
        json!({"peerId": "p"}),
        json!({"peerId": "p", "channels": ["public/*", "public/a"], "permissions": ["publish"]}),
    ] {
        let (status, minted) = call(
            &server,
            Method::POST,
            "/v1/tokens",
            PUBLISHER,
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 200, "{body}: {minted}");
        assert!(minted["token"].is_string());
    }

    // Usage is app-wide totals with no channel or peer names: any key of the app reads it.
    let (status, usage) = get(&server, "/v1/usage", PUBLISHER).await;
    assert_eq!((status, &usage["appId"]), (200, &json!(APP)));

    // The overview counts only the channels the key covers.
    let (status, overview) = get(&server, "/admin/api/overview", PUBLISHER).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            &overview["app"]["channels"],
            &overview["app"]["subscriptions"]
        ),
        (&json!(1), &json!(1))
    );
    let (_, overview) = get(&server, "/admin/api/overview", FULL).await;
    assert_eq!(overview["app"]["channels"], 2);

    // Kick: refused, and the peer stays connected.
    let got = call(&server, Method::DELETE, "/v1/peers/alice", PUBLISHER, None).await;
    assert_refused(got, 403, "channel_not_authorized", "kick");
    assert_still_connected(&mut alice).await;
    // Validation still comes first.
    let got = call(&server, Method::DELETE, "/v1/peers/a%07b", PUBLISHER, None).await;
    assert_refused(got, 400, "invalid_request", "bad peer id");

    // The app-wide key still kicks.
    let (status, body) = call(&server, Method::DELETE, "/v1/peers/alice", FULL, None).await;
    assert_eq!(
        (status, body),
        (200, json!({"peerId": "alice", "closed": 1}))
    );
    assert_eq!(alice.recv_close().await.0, 4020);
}

#[tokio::test]
async fn admin_views_show_a_scoped_key_only_what_its_patterns_cover() {
    let server = TestServer::start_with(config()).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let _carol = server.client("carol").await;
    let mut dave = server.client("dave").await;
    let mut erin = server.client("erin").await;
    bob.subscribe("room/x").await;
    alice.subscribe("room/x").await;
    alice.subscribe("public/a").await;
    dave.subscribe("public/*").await;
    erin.subscribe("public/**").await;

    let (status, channels) = get(&server, "/admin/api/channels", WATCHER).await;
    assert_eq!(status, 200);
    assert_eq!(
        channels["channels"],
        json!([
            {"channel": "public/*", "members": 0, "subscribers": 1},
            {"channel": "public/a", "members": 1, "subscribers": 1},
        ])
    );

    // Connections with an in-scope subscription, showing only those subscriptions.
    let (status, conns) = get(&server, "/admin/api/connections", WATCHER).await;
    assert_eq!(status, 200);
    let seen: Vec<(Value, Value)> = conns["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["peerId"].clone(), c["channels"].clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (json!("alice"), json!(["public/a"])),
            (json!("dave"), json!(["public/*"])),
        ]
    );

    let (_, peer) = get(&server, "/admin/api/peers/alice", WATCHER).await;
    assert_eq!(peer["online"], true);
    assert_eq!(peer["connections"][0]["channels"], json!(["public/a"]));
    for hidden in ["bob", "carol", "erin"] {
        let (status, peer) = get(&server, &format!("/admin/api/peers/{hidden}"), WATCHER).await;
        assert_eq!(
            (status, peer),
            (
                200,
                json!({"peerId": hidden, "online": false, "connections": []})
            ),
            "{hidden}"
        );
    }

    // A channel view: inside (a concrete name, or a pattern included in the key's) or refused.
    let (status, view) = get(&server, "/admin/api/channels/public%2Fa", WATCHER).await;
    assert_eq!(status, 200);
    assert_eq!(view["members"], json!([{"peerId": "alice"}]));
    let (status, _) = get(&server, "/admin/api/channels/public%2F*", WATCHER).await;
    assert_eq!(status, 200);
    for path in [
        "/admin/api/channels/room%2Fx",
        "/admin/api/channels/room/x",
        "/admin/api/channels/public%2F**",
        "/admin/api/channels/%2A%2A",
    ] {
        assert_refused(
            get(&server, path, WATCHER).await,
            403,
            "channel_not_authorized",
            path,
        );
    }

    // The REST roster follows the same rule.
    let (status, body) = get(&server, "/v1/channels/public%2Fa/peers", WATCHER).await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"channel": "public/a", "peers": [{"peerId": "alice"}]})
        )
    );
    assert_refused(
        get(&server, "/v1/channels/room%2Fx/peers", WATCHER).await,
        403,
        "channel_not_authorized",
        "room/x peers",
    );

    let (_, overview) = get(&server, "/admin/api/overview", WATCHER).await;
    assert_eq!(
        (
            &overview["app"]["channels"],
            &overview["app"]["subscriptions"]
        ),
        (&json!(2), &json!(2))
    );

    // The app-wide key sees everything, connections without subscriptions included.
    let (_, conns) = get(&server, "/admin/api/connections", FULL).await;
    assert_eq!(conns["connections"].as_array().unwrap().len(), 5);
    let (_, channels) = get(&server, "/admin/api/channels", FULL).await;
    assert_eq!(channels["channels"].as_array().unwrap().len(), 4);
    let (_, peer) = get(&server, "/admin/api/peers/bob", FULL).await;
    assert_eq!(peer["connections"][0]["channels"], json!(["room/x"]));
    let (status, _) = get(&server, "/admin/api/channels/room%2Fx", FULL).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn only_an_app_wide_key_kicks_and_it_needs_no_action() {
    let server = TestServer::start_with(config()).await;
    let mut alice = server.client("alice").await;
    alice.subscribe("public/a").await;

    // Every channel alice holds is inside `public/**`, and the key has every action: still no.
    let got = call(&server, Method::DELETE, "/v1/peers/alice", PUBLIC_ALL, None).await;
    assert_refused(got, 403, "channel_not_authorized", "public/** kick");
    // A peer with no subscriptions at all is no easier a target.
    let mut idle = server.client("idle").await;
    let got = call(&server, Method::DELETE, "/v1/peers/idle", PUBLIC_ALL, None).await;
    assert_refused(got, 403, "channel_not_authorized", "idle kick");
    assert_still_connected(&mut alice).await;
    assert_still_connected(&mut idle).await;

    // `*` plus `*/**` covers every name as a language, and kicking needs no action (spec §13.6).
    let (status, body) = call(&server, Method::DELETE, "/v1/peers/alice", UNION, None).await;
    assert_eq!(
        (status, body),
        (200, json!({"peerId": "alice", "closed": 1}))
    );
    assert_eq!(alice.recv_close().await.0, 4020);
}
