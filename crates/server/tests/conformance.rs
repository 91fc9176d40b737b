//! The spec §18 conformance checklist, item by item (item 19 runs the official SDKs and lives
//! in sdk_compat.rs; items 16-17 are a smoke check here, rest.rs goes deep on REST). Other
//! files go deeper on each area.
#![allow(clippy::unwrap_used)]
use herald_testkit::prelude::*;

use serde_json::json;
use std::time::Duration;

/// Item 1: a pk connect gets a welcome with a UUID peerId, `expiresAt: null`, a numeric
/// `serverTime` and `maxMessageSize: 65536`.
#[tokio::test]
async fn item01_pk_welcome() {
    let server = TestServer::start().await;
    let mut c = Client::connect(&server.url(&format!("key={PK}"))).await;
    let text = c.recv_text().await;
    let w: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(w["type"], "welcome");
    let id = w["peerId"].as_str().unwrap();
    assert_eq!(id.len(), 36);
    assert!(uuid_like(id), "{id}");
    assert!(text.contains(r#""expiresAt":null"#), "{text}");
    assert!(w["serverTime"].is_number());
    assert!((w["serverTime"].as_i64().unwrap() - now()).abs() <= 2);
    assert_eq!(w["maxMessageSize"], 65536);
}

fn uuid_like(s: &str) -> bool {
    s.chars().enumerate().all(|(i, c)| match i {
        8 | 13 | 18 | 23 => c == '-',
        14 => c == '4',
        _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
    })
}

/// Item 2: bad signature, unknown kid, `alg: none` → 4001 with no welcome; expired → 4002;
/// peerMetadata over 4 KB → 4001.
#[tokio::test]
async fn item02_bad_tokens() {
    let server = TestServer::start().await;
    let bad_sig = sign(SK_ID, "wrong_secret_0123456789abcdefgh", &claims("a"));
    assert_eq!(server.refused_token(&bad_sig).await, 4001);
    let unknown_kid = sign("sk_id_unknown", SK_SECRET, &claims("a"));
    assert_eq!(server.refused_token(&unknown_kid).await, 4001);
    let none = format!(
        "{}.{}.",
        b64url(format!(r#"{{"alg":"none","kid":"{SK_ID}"}}"#).as_bytes()),
        b64url(claims_json("a", "").as_bytes())
    );
    assert_eq!(server.refused_token(&none).await, 4001);
    let mut expired = claims("a");
    expired.exp = Some(now() - 1);
    assert_eq!(server.refused_token(&token_for(&expired)).await, 4002);
    let big = format!(r#"{{"bio":"{}"}}"#, "x".repeat(4100));
    assert_eq!(
        server.refused_token(&token_with_meta("a", &big)).await,
        4001
    );
}

/// Item 3: a JWT expiring during the session → close 4002 about 250 ms before `exp`.
#[tokio::test]
async fn item03_expiry_during_session() {
    let server = TestServer::start().await;
    let mut c = claims("a");
    let exp = now() + 2;
    c.exp = Some(exp);
    let mut client = server.client_with_token(&token_for(&c)).await;
    let (code, _) = client.recv_close().await;
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert_eq!(code, 4002);
    assert!(
        (exp * 1000 - 1250..=exp * 1000 + 750).contains(&at_ms),
        "closed at {at_ms}, exp {exp}"
    );
}

/// Item 4: subscribe with a requestId → ack first, then a presence snapshot with empty
/// `joined` and `left: []`.
#[tokio::test]
async fn item04_subscribe_ack_then_empty_snapshot() {
    let server = TestServer::start().await;
    let mut a = server.client("alice").await;
    a.send_json(json!({"type":"subscribe","channel":"room/4","requestId":"s4"}))
        .await;
    assert_eq!(a.recv_text().await, r#"{"type":"ack","requestId":"s4"}"#);
    assert_eq!(
        a.recv_text().await,
        r#"{"type":"presence","channel":"room/4","joined":[],"left":[]}"#
    );
    // Without a requestId: no ack, but the snapshot still comes.
    a.send_json(json!({"type":"subscribe","channel":"room/4b"}))
        .await;
    assert_eq!(a.recv().await, empty_presence("room/4b"));
    a.expect_silence(100).await;
}

/// Item 5: a second peer subscribes → it gets ack and a snapshot listing A; A gets
/// `joined: [B]`; B never sees itself.
#[tokio::test]
async fn item05_second_subscriber() {
    let server = TestServer::start().await;
    let mut a = server
        .client_with_meta("alice", r#"{"username":"Alice"}"#)
        .await;
    let mut b = server
        .client_with_meta("bob", r#"{"username":"Bob"}"#)
        .await;
    a.subscribe("room/5").await;
    let (_, snap) = b.subscribe("room/5").await;
    assert_eq!(
        snap,
        json!({"type":"presence","channel":"room/5","joined":[{"peerId":"alice","metadata":{"username":"Alice"}}],"left":[]})
    );
    assert_eq!(
        a.recv().await,
        json!({"type":"presence","channel":"room/5","joined":[{"peerId":"bob","metadata":{"username":"Bob"}}],"left":[]})
    );
    // B gets nothing about itself.
    b.expect_silence(150).await;
    a.expect_silence(50).await;
}

/// Item 6: a duplicate subscribe → ack and a full snapshot again, no new `joined`, and the
/// limit counter unchanged.
#[tokio::test]
async fn item06_duplicate_subscribe() {
    let config = config_with(|c| c.limits.max_channels_per_connection = 2);
    let server = TestServer::start_with(config).await;
    let mut a = server.client("alice").await;
    let mut b = server.client("bob").await;
    a.subscribe("room/6").await;
    b.subscribe("room/6").await;
    a.recv().await; // joined bob
    for _ in 0..3 {
        let (_, snap) = b.subscribe("room/6").await;
        assert_eq!(peer_ids(&snap["joined"]), vec!["alice"]);
    }
    a.expect_silence(150).await;
    // The duplicates did not use up the second slot...
    b.subscribe("room/6b").await;
    // ...and a third distinct channel is over the (lowered) limit.
    let reply = b
        .request(json!({"type":"subscribe","channel":"room/6c"}), "x")
        .await;
    assert_error(&reply, "channel_limit_exceeded", Some("x"));
}

/// Item 7: unsubscribe of a channel never subscribed → ack.
#[tokio::test]
async fn item07_unsubscribe_never_subscribed() {
    let server = TestServer::start().await;
    let mut a = server.client("alice").await;
    a.expect_ack(json!({"type":"unsubscribe","channel":"room/never"}), "u1")
        .await;
    a.expect_ack(json!({"type":"unsubscribe","channel":"room/*"}), "u2")
        .await;
    // Without a requestId: no ack (and no error).
    a.send_json(json!({"type":"unsubscribe","channel":"room/never"}))
        .await;
    a.expect_silence(150).await;
}

/// Item 8: publish → the other subscribers get `message`, the publisher does not;
/// `fromMetadata` only for receivers that opted in.
#[tokio::test]
async fn item08_publish() {
    let server = TestServer::start().await;
    let mut a = server
        .client_with_meta("alice", r#"{"username":"Alice"}"#)
        .await;
    let mut b = server.client("bob").await;
    let mut c = server.client("carol").await;
    a.subscribe("room/8").await;
    b.subscribe_opts("room/8", true).await;
    c.subscribe("room/8").await;
    a.recv().await;
    a.recv().await;
    b.recv().await;
    a.publish("room/8", json!({"text":"hi"}), "p8").await;
    assert_eq!(
        b.recv().await,
        json!({"type":"message","channel":"room/8","from":"alice","data":{"text":"hi"},"fromMetadata":{"username":"Alice"}})
    );
    assert_eq!(
        c.recv().await,
        json!({"type":"message","channel":"room/8","from":"alice","data":{"text":"hi"}})
    );
    a.expect_silence(150).await;
}

/// Item 9: send to an offline peer → `peer_not_found` with the requestId; to an online peer →
/// `direct` with fromMetadata, then ack.
#[tokio::test]
async fn item09_send() {
    let server = TestServer::start().await;
    let mut a = server
        .client_with_meta("alice", r#"{"username":"Alice"}"#)
        .await;
    let reply = a
        .request(json!({"type":"send","to":"bob","data":1}), "d1")
        .await;
    assert_error(&reply, "peer_not_found", Some("d1"));
    let mut b = server.client("bob").await;
    a.send_to("bob", json!({"sdp":"v=0"}), "d2").await;
    assert_eq!(
        b.recv().await,
        json!({"type":"direct","from":"alice","data":{"sdp":"v=0"},"fromMetadata":{"username":"Alice"}})
    );
    a.expect_silence(100).await;
}

/// Item 10: `{"type":"ping"}` → `{"type":"pong"}` with no ack.
#[tokio::test]
async fn item10_ping() {
    let server = TestServer::start().await;
    let mut a = server.client("alice").await;
    a.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(a.recv_text().await, r#"{"type":"pong"}"#);
    a.send_text(r#"{"type":"ping","requestId":"hb"}"#).await;
    assert_eq!(a.recv_text().await, r#"{"type":"pong","requestId":"hb"}"#);
    a.expect_silence(150).await;
}

/// Item 11: garbage or unknown types → `malformed_message` / `unknown_type`; the socket stays
/// open.
#[tokio::test]
async fn item11_garbage_and_unknown_types() {
    let server = TestServer::start().await;
    let mut a = server.client("alice").await;
    a.send_text("}{").await;
    assert_error(&a.recv().await, "malformed_message", None);
    let reply = a.request(json!({"type":"teleport"}), "t11").await;
    assert_error(&reply, "unknown_type", Some("t11"));
    a.subscribe("room/11").await;
}

/// Item 12: the 101st subscription → `channel_limit_exceeded`; `_SYSTEM/x` → `channel_reserved`;
/// a 257-byte name → `invalid_channel`.
#[tokio::test]
async fn item12_channel_limits() {
    let server = TestServer::start().await;
    let mut a = server.client("alice").await;
    for i in 0..100 {
        a.subscribe(&format!("room/{i}")).await;
    }
    let reply = a
        .request(json!({"type":"subscribe","channel":"room/100"}), "l")
        .await;
    assert_error(&reply, "channel_limit_exceeded", Some("l"));
    let reply = a
        .request(json!({"type":"subscribe","channel":"_SYSTEM/x"}), "r")
        .await;
    assert_error(&reply, "channel_reserved", Some("r"));
    let reply = a
        .request(json!({"type":"subscribe","channel":"a".repeat(257)}), "i")
        .await;
    assert_error(&reply, "invalid_channel", Some("i"));
}

/// Item 13: 201 frames in a burst → close 4011.
#[tokio::test]
async fn item13_rate_burst() {
    // Refill is made negligible so the count is exact whatever the machine's speed; the
    // default-rate refill is covered in limits.rs.
    let config = config_with(|c| c.limits.rate_per_second = 0.001);
    let server = TestServer::start_with(config).await;
    let mut a = server.client("alice").await;
    a.send_burst(
        (0..200).map(|i| json!({"type":"publish","channel":"room/13","data":i}).to_string()),
    )
    .await;
    a.sync().await; // 200 frames: still open
    a.send_json(json!({"type":"publish","channel":"room/13","data":200}))
        .await;
    let (code, frames) = a.recv_close().await;
    assert_eq!(code, 4011, "{frames:?}");
}

/// Item 14: a frame over the cap → close 1009.
#[tokio::test]
async fn item14_frame_cap() {
    let server = TestServer::start().await;
    let mut a = server.client("alice").await;
    let data = "x".repeat(herald_server::Config::default().limits.max_frame_bytes);
    a.send_json(json!({"type":"publish","channel":"room/14","data":data}))
        .await;
    assert_eq!(a.recv_close().await.0, 1009);
}

/// Item 15: the same JWT `sub` on two sockets → one `joined`; closing one gives no `left`;
/// closing both gives one `left`.
#[tokio::test]
async fn item15_presence_reference_counting() {
    let server = TestServer::start().await;
    let mut watcher = server.client("watcher").await;
    watcher.subscribe("room/15").await;
    let mut a1 = server.client("alice").await;
    let mut a2 = server.client("alice").await;
    a1.subscribe("room/15").await;
    assert_eq!(
        watcher.recv().await,
        json!({"type":"presence","channel":"room/15","joined":[{"peerId":"alice"}],"left":[]})
    );
    let (_, snap) = a2.subscribe("room/15").await;
    assert_eq!(peer_ids(&snap["joined"]), vec!["watcher"]);
    watcher.expect_silence(150).await;
    a1.close().await;
    watcher.expect_silence(300).await;
    a2.close().await;
    assert_eq!(
        watcher.recv().await,
        json!({"type":"presence","channel":"room/15","joined":[],"left":[{"peerId":"alice"}]})
    );
    watcher.expect_silence(150).await;
}

/// Item 18: graceful shutdown → `going_away`, then close 1001.
#[tokio::test]
async fn item18_graceful_shutdown() {
    let mut server = TestServer::start().await;
    let mut a = server.client("alice").await;
    let mut b = server.client("bob").await;
    let run = server.begin_shutdown();
    for c in [&mut a, &mut b] {
        let ga = c.recv().await;
        assert_eq!(ga["type"], "going_away", "{ga}");
        assert!(ga["retryAfterMs"].as_u64().unwrap() > 0, "{ga}");
        assert_eq!(c.recv_close().await, (1001, vec![]));
    }
    tokio::time::timeout(Duration::from_secs(6), run)
        .await
        .expect("run returns within the shutdown deadline")
        .unwrap()
        .unwrap();
}

/// REST call with the main secret key (`Bearer id:secret`); returns status and JSON body.
async fn rest(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("http://{}{}", server.addr, path))
        .header("Authorization", format!("Bearer {SK_ID}:{SK_SECRET}"));
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(json!(text)))
}

/// Item 16: `DELETE /v1/peers/x` → every socket of x closes with 4020, the response has
/// `closed: n`, and the other subscribers get `left`.
#[tokio::test]
async fn item16_admin_kick() {
    let server = TestServer::start().await;
    let mut watcher = server.client("watcher").await;
    watcher.subscribe("room/16").await;
    let mut x1 = server.client("x").await;
    let mut x2 = server.client("x").await;
    x1.subscribe("room/16").await;
    x2.subscribe("room/16").await;
    assert_eq!(watcher.recv().await["joined"][0]["peerId"], "x");
    let (status, body) = rest(&server, reqwest::Method::DELETE, "/v1/peers/x", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"peerId":"x","closed":2}));
    for c in [&mut x1, &mut x2] {
        assert_eq!(c.recv_close().await.0, 4020);
    }
    assert_eq!(
        watcher.recv().await,
        json!({"type":"presence","channel":"room/16","joined":[],"left":[{"peerId":"x"}]})
    );
    watcher.expect_silence(150).await;
    // An offline peer: closed 0, not a 404.
    let (status, body) = rest(&server, reqwest::Method::DELETE, "/v1/peers/x", None).await;
    assert_eq!((status, body), (200, json!({"peerId":"x","closed":0})));
}

/// Item 17: `GET /v1/channels/app%2Froom/peers` and `POST /v1/channels/app/room/publish` →
/// both path forms work.
#[tokio::test]
async fn item17_rest_channel_path_forms() {
    let server = TestServer::start().await;
    let mut a = server.client_with_meta("alice", r#"{"u":"A"}"#).await;
    a.subscribe("app/room").await;
    for path in [
        "/v1/channels/app%2Froom/peers",
        "/v1/channels/app/room/peers",
    ] {
        let (status, body) = rest(&server, reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(
            body,
            json!({"channel":"app/room","peers":[{"peerId":"alice","metadata":{"u":"A"}}]}),
            "{path}"
        );
    }
    for (i, path) in [
        "/v1/channels/app/room/publish",
        "/v1/channels/app%2Froom/publish",
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = rest(
            &server,
            reqwest::Method::POST,
            path,
            Some(json!({"data":{"n":i}})),
        )
        .await;
        assert!((200..300).contains(&status), "{path}: {status} {body}");
        assert_eq!(
            a.recv().await,
            json!({"type":"message","channel":"app/room","from":"system","data":{"n":i}}),
            "{path}"
        );
    }
}
