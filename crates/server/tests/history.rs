//! Channel history against a real server: positions on the wire, rewind over a WebSocket,
//! and `GET /v1/channels/{channel}/messages` with each of its credentials, its scope checks,
//! its errors and its paging.
#![allow(clippy::unwrap_used)]

use herald_protocol::claims::Claims;
use herald_protocol::jwt;
use herald_server::config::{HistoryChannels, HistoryConfig};
use herald_testkit::prelude::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const SK: &str = SK_AUTH;
const ROOM: &str = "room/1";

/// `room/*` keeps 1000 and rewinds 20; `small/*` keeps 10.
fn history_config() -> HistoryConfig {
    let group = |pattern: &str, max_messages, rewind| HistoryChannels {
        patterns: vec![pattern.into()],
        max_messages,
        max_age_secs: 3600,
        rewind,
    };
    HistoryConfig {
        channels: vec![group("room/*", 1000, 20), group("small/*", 10, 0)],
        ..HistoryConfig::default()
    }
}

async fn server() -> TestServer {
    TestServer::start_with(config_with(|c| c.history = history_config())).await
}

async fn get(
    server: &TestServer,
    path: &str,
    auth: Option<&str>,
    origin: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new().get(format!("{}{path}", server.http()));
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    if let Some(origin) = origin {
        req = req.header("origin", origin);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

fn signed(claims: &Claims) -> String {
    jwt::sign(SK_ID, SK_SECRET.as_bytes(), claims)
}

#[tokio::test]
async fn positions_rewind_and_paging_agree() {
    let server = server().await;
    // 25 by REST, then 5 from a client with peer metadata.
    for n in 1..=25 {
        server.rest_publish(ROOM, json!({ "n": n })).await;
    }
    let mut alice =
        Client::connect(&server.token_url(&token_with_meta("alice", r#"{"name":"A"}"#))).await;
    alice.recv().await;
    for n in 26..=30 {
        alice
            .publish(ROOM, json!({ "n": n }), &format!("p{n}"))
            .await;
    }
    // A subscriber gets the last 20, exactly as REST lists them, then live messages.
    let mut bob = server.client("bob").await;
    bob.subscribe_opts(ROOM, true).await;
    let mut rewound = Vec::new();
    for _ in 0..20 {
        rewound.push(bob.recv().await);
    }
    let (status, page) = get(
        &server,
        "/v1/channels/room%2F1/messages?limit=20",
        Some(SK),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["channel"], ROOM);
    assert_eq!(page["hasMore"], true);
    let epoch = page["epoch"].as_str().unwrap().to_string();
    for (frame, listed) in rewound.iter().zip(page["messages"].as_array().unwrap()) {
        assert_eq!(frame["type"], "message");
        assert_eq!(frame["channel"], ROOM);
        assert_eq!(frame["epoch"], epoch);
        for field in ["id", "offset", "ts", "from", "data"] {
            assert_eq!(frame[field], listed[field], "{field}: {frame} vs {listed}");
        }
        assert_eq!(frame.get("fromMetadata"), listed.get("fromMetadata"));
        let offset = listed["offset"].as_u64().unwrap();
        assert_eq!(listed["id"], json!(format!("{epoch}-{offset}")));
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
    assert_eq!(history_offsets(&page), (11..=30).collect::<Vec<_>>());
    alice.publish(ROOM, json!({"n": 31}), "p31").await;
    let live = bob.recv().await;
    assert_eq!(
        (live["offset"].as_u64(), &live["epoch"]),
        (Some(31), &json!(epoch))
    );

    // Paging back from the newest covers every message exactly once.
    let mut seen = Vec::new();
    let mut path = "/v1/channels/room%2F1/messages?limit=7".to_string();
    loop {
        let (status, page) = get(&server, &path, Some(SK), None).await;
        assert_eq!(status, StatusCode::OK);
        let got = history_offsets(&page);
        seen.splice(0..0, got.iter().copied());
        if page["hasMore"] == false {
            break;
        }
        path = format!("/v1/channels/room%2F1/messages?limit=7&before={}", got[0]);
    }
    assert_eq!(seen, (1..=31).collect::<Vec<_>>());
    let (_, page) = get(
        &server,
        "/v1/channels/room/1/messages?after=28",
        Some(SK),
        None,
    )
    .await;
    assert_eq!(
        (history_offsets(&page), &page["hasMore"]),
        (vec![29, 30, 31], &json!(false))
    );
    let (_, page) = get(
        &server,
        "/v1/channels/room/1/messages?after=2&before=6",
        Some(SK),
        None,
    )
    .await;
    assert_eq!(history_offsets(&page), vec![3, 4, 5]);
    server.shutdown().await;
}

#[tokio::test]
async fn retention_by_count_shows_in_rest() {
    let server = server().await;
    for n in 1..=15 {
        server.rest_publish("small/x", json!(n)).await;
    }
    let (status, page) = get(&server, "/v1/channels/small%2Fx/messages", Some(SK), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(history_offsets(&page), (6..=15).collect::<Vec<_>>());
    assert_eq!(page["hasMore"], false);
    server.shutdown().await;
}

#[tokio::test]
async fn each_credential_reads_within_its_own_scope() {
    let server = server().await;
    server.rest_publish(ROOM, json!("hello")).await;
    let path = "/v1/channels/room%2F1/messages";
    let read = |auth: String, origin: Option<&'static str>| {
        let server = &server;
        async move { get(server, path, Some(&auth), origin).await }
    };
    let expect = |got: (StatusCode, Value), status: u16, code: Option<&str>| {
        assert_eq!(got.0.as_u16(), status, "{}", got.1);
        match code {
            Some(code) => assert_eq!(got.1["error"], code, "{}", got.1),
            None => assert_eq!(history_offsets(&got.1), vec![1], "{}", got.1),
        }
    };
    // Secret keys: the app-wide one, and a narrow one (room/*, publish + subscribe).
    expect(read(SK.into(), None).await, 200, None);
    let narrow = format!("Bearer {SK_NARROW_ID}:{SK_NARROW_SECRET}");
    expect(read(narrow.clone(), None).await, 200, None);
    let (status, body) = get(
        &server,
        "/v1/channels/small%2Fx/messages",
        Some(&narrow),
        None,
    )
    .await;
    expect((status, body), 403, Some("channel_not_authorized"));
    // Another app's key reads its own app's channel of that name: nothing.
    let other = format!("Bearer {OTHER_SK_ID}:{OTHER_SK_SECRET}");
    let (status, body) = read(other, None).await;
    assert_eq!(
        (status, history_offsets(&body), &body["epoch"]),
        (StatusCode::OK, vec![], &Value::Null)
    );

    // Connect JWTs: plain; narrowed by channels or permissions; expired; tampered.
    expect(
        read(format!("Bearer {}", token("alice")), None).await,
        200,
        None,
    );
    let mut c = claims("alice");
    c.channels = Some(vec!["room/*".into()]);
    expect(
        read(format!("Bearer {}", signed(&c)), None).await,
        200,
        None,
    );
    c.channels = Some(vec!["other/*".into()]);
    expect(
        read(format!("Bearer {}", signed(&c)), None).await,
        403,
        Some("channel_not_authorized"),
    );
    let mut c = claims("alice");
    c.permissions = Some(vec!["publish".into()]);
    expect(
        read(format!("Bearer {}", signed(&c)), None).await,
        403,
        Some("action_not_permitted"),
    );
    let mut c = claims("alice");
    c.exp = Some(now() - 3600);
    expect(
        read(format!("Bearer {}", signed(&c)), None).await,
        401,
        Some("unauthorized"),
    );
    let tampered = format!("Bearer {}x", token("alice"));
    expect(read(tampered, None).await, 401, Some("unauthorized"));

    // Publishable keys: patterns, revocation, allowed origins when an Origin is sent.
    expect(read(format!("Bearer {PK}"), None).await, 200, None);
    expect(
        read(format!("Bearer {PK_DEFAULTS}"), None).await,
        403,
        Some("channel_not_authorized"),
    );
    expect(
        read(format!("Bearer {REVOKED_PK}"), None).await,
        401,
        Some("unauthorized"),
    );
    expect(read(format!("Bearer {PK_ORIGIN}"), None).await, 200, None);
    expect(
        read(format!("Bearer {PK_ORIGIN}"), Some(ALLOWED_ORIGIN)).await,
        200,
        None,
    );
    expect(
        read(format!("Bearer {PK_ORIGIN}"), Some("https://evil.example")).await,
        401,
        Some("unauthorized"),
    );
    let (status, body) = get(&server, path, None, None).await;
    expect((status, body), 401, Some("unauthorized"));
    server.shutdown().await;
}

#[tokio::test]
async fn errors_name_their_cause() {
    let server = server().await;
    let (status, body) = get(&server, "/v1/channels/lobby/messages", Some(SK), None).await;
    assert_eq!(
        (status.as_u16(), &body["error"]),
        (404, &json!("history_not_enabled")),
        "{body}"
    );
    for bad in ["limit=0", "limit=1001", "before=x"] {
        let path = format!("/v1/channels/room%2F1/messages?{bad}");
        let (status, body) = get(&server, &path, Some(SK), None).await;
        assert_eq!(
            (status.as_u16(), &body["error"]),
            (400, &json!("invalid_request")),
            "{bad}"
        );
    }
    let (status, body) = get(&server, "/v1/channels/room%2F*/messages", Some(SK), None).await;
    assert_eq!(
        (status.as_u16(), &body["error"]),
        (400, &json!("invalid_request"))
    );
    let (status, body) = get(&server, "/v1/channels/_system%2Fx/messages", Some(SK), None).await;
    assert_eq!(
        (status.as_u16(), &body["error"]),
        (400, &json!("channel_reserved")),
        "{body}"
    );
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/channels/room%2F1/messages", server.http()))
        .header("authorization", SK)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    server.shutdown().await;
}

/// Without `[[history.channels]]` nothing is kept and messages carry no position.
#[tokio::test]
async fn no_groups_no_history() {
    let server = TestServer::start().await;
    let mut bob = server.client("bob").await;
    bob.subscribe(ROOM).await;
    server.rest_publish(ROOM, json!(1)).await;
    assert_eq!(
        bob.recv().await,
        json!({"type": "message", "channel": ROOM, "from": "server", "data": 1})
    );
    let (status, body) = get(&server, "/v1/channels/room%2F1/messages", Some(SK), None).await;
    assert_eq!(
        (status.as_u16(), &body["error"]),
        (404, &json!("history_not_enabled"))
    );
    server.shutdown().await;
}
