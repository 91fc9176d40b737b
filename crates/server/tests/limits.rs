//! Limits and quotas (spec §10-11, §1.3): the per-connection rate bucket (4011), concurrent
//! connection quotas (4010), the subscription limit, and the per-IP connect limit (HTTP 429).
#![allow(clippy::unwrap_used)]
use herald_testkit::prelude::*;

use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite;

fn publish_frame(i: usize) -> String {
    json!({"type":"publish","channel":"room/rate","data":i}).to_string()
}

#[tokio::test]
async fn burst_of_200_passes_and_the_201st_frame_closes_4011() {
    // Refill made negligible so the count is exact on any machine.
    let grace = Duration::from_millis(300);
    let config = config_with(|c| {
        c.limits.rate_per_second = 0.001;
        c.engine.reconnect_grace_ms = grace.as_millis() as u64;
    });
    let server = TestServer::start_with(config).await;
    let mut watcher = server.client("watcher").await;
    watcher.subscribe("room/rate").await;
    let mut a = server.client("alice").await;
    a.subscribe("room/rate").await; // 1 token
    watcher.recv().await;
    a.send_burst((0..199).map(publish_frame)).await; // 200 tokens in total
    a.sync().await;
    for i in 0..199 {
        assert_eq!(watcher.recv().await["data"], i);
    }
    // Every kind of frame costs a token, even a rejected one.
    a.send_text("garbage").await;
    let (code, frames) = a.recv_close().await;
    assert_eq!(code, 4011, "{frames:?}");
    let closed_at = std::time::Instant::now();
    // 4011 is retryable (a new connection gets a fresh bucket): a drop, so `left` comes after
    // the reconnect grace.
    assert_eq!(
        watcher.recv().await,
        json!({"type":"presence","channel":"room/rate","joined":[],"left":[{"peerId":"alice"}]})
    );
    assert!(closed_at.elapsed() >= grace, "left inside the grace");
}

#[tokio::test]
async fn binary_and_malformed_frames_cost_tokens() {
    let config = config_with(|c| {
        c.limits.rate_per_second = 0.001;
        c.limits.rate_burst = 4.0;
    });
    let server = TestServer::start_with(config).await;
    let mut a = server.client("alice").await;
    a.send_binary(vec![1]).await;
    a.send_text("nope").await;
    a.send_json(json!({"type":"dance"})).await;
    a.send_json(json!({"type":"publish","channel":"x","requestId":""}))
        .await;
    for _ in 0..4 {
        assert_eq!(a.recv().await["type"], "error");
    }
    a.send_binary(vec![2]).await;
    assert_eq!(a.recv_close().await.0, 4011);
}

#[tokio::test]
async fn default_bucket_is_200_with_100_per_second_refill() {
    let server = TestServer::start().await;
    let mut a = server.client("alice").await;
    a.send_burst((0..200).map(publish_frame)).await;
    a.sync().await;
    // Refill: 100 tokens/s. After 300 ms at least 30 tokens are back (waiting longer only adds
    // more, so this cannot flake).
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.send_burst((0..20).map(publish_frame)).await;
    a.sync().await;
    // A burst far over capacity closes the connection.
    a.send_burst((0..600).map(publish_frame)).await;
    assert_eq!(a.recv_close().await.0, 4011);
}

#[tokio::test]
async fn pings_are_not_rate_limited() {
    let config = config_with(|c| c.limits.rate_per_second = 0.001);
    let server = TestServer::start_with(config).await;
    let mut a = server.client("alice").await;
    a.send_burst((0..300).map(|_| r#"{"type":"ping"}"#.to_string()))
        .await;
    for _ in 0..300 {
        assert_eq!(a.recv().await, json!({"type":"pong"}));
    }
    // Pings with requestIds neither.
    a.send_burst((0..300).map(|i| json!({"type":"ping","requestId":format!("r{i}")}).to_string()))
        .await;
    for i in 0..300 {
        assert_eq!(a.recv().await["requestId"], format!("r{i}"));
    }
    // The bucket is still full.
    a.send_burst((0..200).map(publish_frame)).await;
    a.sync().await;
}

#[tokio::test]
async fn a_new_connection_gets_a_fresh_bucket() {
    let config = config_with(|c| c.limits.rate_per_second = 0.001);
    let server = TestServer::start_with(config).await;
    let mut a = server.client("alice").await;
    a.send_burst((0..201).map(publish_frame)).await;
    assert_eq!(a.recv_close().await.0, 4011);
    let mut a = server.client("alice").await;
    a.send_burst((0..200).map(publish_frame)).await;
    a.sync().await;
}

// ---- concurrent connections ----------------------------------------------------------------------

/// Retries until a connect is welcomed (slots are released as the server notices closes).
async fn welcomed_eventually(server: &TestServer, query: &str) -> Client {
    for _ in 0..150 {
        let mut c = Client::connect(&server.url(query)).await;
        match c.next_event().await {
            Event::Frame(w) if w["type"] == "welcome" => return c,
            Event::Close(4010, _) => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("the slot was never released");
}

#[tokio::test]
async fn node_connection_limit_is_4010() {
    let config = config_with(|c| c.limits.max_connections = 1);
    let server = TestServer::start_with(config).await;
    let first = server.client("alice").await;
    let token_q = format!("token={}", token("bob"));
    assert_eq!(server.refused(&token_q).await, 4010);
    assert_eq!(server.refused(&format!("key={PK}")).await, 4010);
    // The limit is node-wide: another app is refused too.
    let other = sign(OTHER_SK_ID, OTHER_SK_SECRET, &claims("x"));
    assert_eq!(server.refused_token(&other).await, 4010);
    // Auth failures are still reported as such.
    assert_eq!(server.refused("key=pk_live_nope").await, 4001);
    // A slot frees up when a connection ends, and refused attempts did not keep any.
    first.close().await;
    let _second = welcomed_eventually(&server, &token_q).await;
    assert_eq!(server.refused(&token_q).await, 4010);
}

#[tokio::test]
async fn app_connection_limit_is_4010_and_per_app() {
    let config = config_with(|c| c.apps[0].max_connections = 2);
    let server = TestServer::start_with(config).await;
    let _a = server.client("a").await;
    let (b, _) = server.pk_client(PK).await;
    assert_eq!(server.refused_token(&token("c")).await, 4010);
    // Other apps are not affected.
    let other = sign(OTHER_SK_ID, OTHER_SK_SECRET, &claims("x"));
    let _o = server.client_with_token(&other).await;
    b.close().await;
    let _c = welcomed_eventually(&server, &format!("token={}", token("c"))).await;
}

// ---- subscriptions per connection -----------------------------------------------------------------

#[tokio::test]
async fn subscription_limit() {
    let server = TestServer::start().await;
    let mut a = server.client("alice").await;
    for i in 0..99 {
        a.subscribe(&format!("room/{i}")).await;
    }
    // Wildcard subscriptions count too: this is the 100th.
    a.subscribe("wild/*").await;
    let reply = a
        .request(json!({"type":"subscribe","channel":"room/x"}), "over")
        .await;
    assert_error(&reply, "channel_limit_exceeded", Some("over"));
    let reply = a
        .request(json!({"type":"subscribe","channel":"other/*"}), "over2")
        .await;
    assert_error(&reply, "channel_limit_exceeded", Some("over2"));
    // Duplicates of held subscriptions still succeed (ack + snapshot), exact and wildcard.
    a.subscribe("room/0").await;
    a.subscribe("wild/*").await;
    a.subscribe_opts("room/98", true).await;
    // The refused subscribe did not register anything.
    let mut b = server.client("bob").await;
    b.subscribe("room/x").await;
    b.publish("room/x", json!(1), "p").await;
    a.expect_silence(150).await;
    // Unsubscribing frees a slot; an unsubscribe of something not held does not.
    a.expect_ack(json!({"type":"unsubscribe","channel":"never"}), "u0")
        .await;
    let reply = a
        .request(json!({"type":"subscribe","channel":"room/x"}), "over3")
        .await;
    assert_error(&reply, "channel_limit_exceeded", Some("over3"));
    a.expect_ack(json!({"type":"unsubscribe","channel":"room/5"}), "u1")
        .await;
    let (_, snap) = a.subscribe("room/x").await;
    assert_eq!(peer_ids(&snap["joined"]), vec!["bob"]);
}

#[tokio::test]
async fn subscription_limit_is_per_connection() {
    let config = config_with(|c| c.limits.max_channels_per_connection = 3);
    let server = TestServer::start_with(config).await;
    let mut a1 = server.client("alice").await;
    let mut a2 = server.client("alice").await;
    for ch in ["a", "b", "c"] {
        a1.subscribe(ch).await;
        a2.subscribe(ch).await;
    }
    let reply = a1
        .request(json!({"type":"subscribe","channel":"d"}), "x")
        .await;
    assert_error(&reply, "channel_limit_exceeded", Some("x"));
    // A new connection starts from zero.
    let mut a3 = server.client("alice").await;
    a3.subscribe("d").await;
}

// ---- per-IP connect limit ---------------------------------------------------------------------------

#[tokio::test]
async fn per_ip_connect_limit_is_http_429_before_the_upgrade() {
    let config = config_with(|c| {
        c.limits.connect_attempts_per_ip = 3;
        c.limits.connect_limit_exempt_loopback = false;
    });
    let server = TestServer::start_with(config).await;
    let _a = server.client("a").await;
    // Failed attempts count too.
    assert_eq!(server.refused("key=pk_live_nope").await, 4001);
    let _c = server.client("c").await;
    match Client::try_connect(&server.token_url(&token("d"))).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
        }
        Err(other) => panic!("expected HTTP 429, got {other:?}"),
        Ok(_) => panic!("expected HTTP 429, got an upgrade"),
    }
}

#[tokio::test]
async fn loopback_is_exempt_from_the_connect_limit_by_default() {
    let config = config_with(|c| c.limits.connect_attempts_per_ip = 2);
    let server = TestServer::start_with(config).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(server.client(&format!("p{i}")).await);
    }
}

#[tokio::test]
async fn only_publish_and_send_count_toward_messages_used() {
    let server = TestServer::start().await;
    let usage = || async {
        let body: serde_json::Value = reqwest::Client::new()
            .get(format!("http://{}/v1/usage", server.addr))
            .header("Authorization", format!("Bearer {SK_ID}:{SK_SECRET}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["messagesUsed"].as_u64().unwrap()
    };
    let mut a = server.client("a").await;
    let mut b = server.client("b").await;
    // Pings (spec §5.5), subscribes and unsubscribes are not messages.
    for _ in 0..5 {
        a.sync().await;
    }
    a.subscribe("room/q").await;
    a.expect_ack(json!({"type":"unsubscribe","channel":"room/q"}), "u")
        .await;
    assert_eq!(usage().await, 0);
    a.publish("room/q", json!(1), "p").await;
    a.send_to("b", json!(1), "s").await;
    b.recv().await;
    assert_eq!(usage().await, 2);
    // Another app's traffic is not this app's.
    let mut o = server
        .client_with_token(&sign(OTHER_SK_ID, OTHER_SK_SECRET, &claims("o")))
        .await;
    o.publish("room/q", json!(1), "p").await;
    assert_eq!(usage().await, 2);
}
