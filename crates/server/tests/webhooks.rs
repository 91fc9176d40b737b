//! Webhooks against a real HTTP receiver that fails about 30 % of requests with 500s and holds
//! some past Herald's timeout, and that verifies every signature with the Standard Webhooks
//! reference library (`standardwebhooks`, PyPI) (`webhooks/receiver.rs`): every event arrives,
//! signed, exactly once after de-duplication by id, and in order per channel, whether emitted
//! directly or produced by real clients joining, publishing and leaving. And the REST test
//! event.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_server::config::{
    AppConfig, Config, HistoryChannels, WebhookEndpointConfig, EVENT_TYPES,
};
use herald_server::webhooks::transport::HttpTransport;
use herald_server::webhooks::{EventFields, EventType, WebhookMetrics, Webhooks};
use herald_testkit::prelude::*;
use herald_testkit::webhook_receiver::{new_secret, summary, Receiver};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_once_and_in_order_per_channel_through_failures() {
    let secret = new_secret();
    let receiver = Receiver::start(&secret, 1.0, 0.30);
    let mut config = Config::default();
    config.webhooks.timeout_ms = 400;
    config.webhooks.max_backoff_secs = 1;
    config.webhooks.batch_max_events = 10;
    config.webhooks.batch_delay_ms = 5;
    config.apps.push(AppConfig {
        id: "app".into(),
        suspended: false,
        max_connections: 0,
        secret_keys: Vec::new(),
        publishable_keys: Vec::new(),
        webhooks: vec![WebhookEndpointConfig {
            url: receiver.url(),
            secret,
            events: vec!["presence.joined".into()],
            channels: vec!["room-*".into()],
        }],
    });
    config.validate().unwrap();
    let transport = Arc::new(HttpTransport::new(Duration::from_millis(400)).unwrap());
    let metrics = WebhookMetrics::default();
    let webhooks = Webhooks::start(&config, transport, metrics.clone());

    const EVENTS: usize = 300;
    let mut sent: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..EVENTS {
        let (channel, peer) = (format!("room-{}", i % 3), format!("p{i:03}"));
        let fields = EventFields {
            channel: Some(&channel),
            peer_id: Some(&peer),
            ..EventFields::default()
        };
        assert_eq!(webhooks.emit("app", EventType::PresenceJoined, fields), 1);
        sent.entry(channel).or_default().push(peer);
        if i % 25 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let events = receiver
        .wait_for(Duration::from_secs(90), |e| e.len() >= EVENTS)
        .await;
    let mut received: HashMap<String, Vec<String>> = HashMap::new();
    for e in &events {
        assert_eq!(e["type"], "presence.joined");
        assert_eq!(e["app"], "app");
        received
            .entry(e["channel"].as_str().unwrap().to_string())
            .or_default()
            .push(e["peerId"].as_str().unwrap().to_string());
    }
    assert_eq!(events.len(), EVENTS, "every event arrived");
    assert_eq!(received, sent, "in order per channel, each once");
    assert!(
        metrics.retried.get() > 0,
        "the receiver failed some attempts"
    );
    eprintln!(
        "{EVENTS} events: {} deliveries recorded, {} events retried",
        receiver.lines().len(),
        metrics.retried.get()
    );
}

/// A node whose app `APP` has one endpoint taking every event of `room-*` channels.
fn config_with_endpoint(receiver: &Receiver, secret: &str) -> Config {
    let mut config = test_config();
    config.webhooks.timeout_ms = 400;
    config.webhooks.max_backoff_secs = 1;
    config.webhooks.batch_max_events = 10;
    config.webhooks.batch_delay_ms = 5;
    let app = config.apps.iter_mut().find(|a| a.id == APP).unwrap();
    app.webhooks = vec![WebhookEndpointConfig {
        url: receiver.url(),
        secret: secret.into(),
        events: EVENT_TYPES.iter().map(|e| e.to_string()).collect(),
        channels: vec!["room-*".into()],
    }];
    config
}

/// Sends `frame` with `rid` and reads until its ack (other frames are skipped): the engine
/// has done the request.
async fn acked(client: &mut Client, mut frame: Value, rid: &str) {
    frame["requestId"] = json!(rid);
    client.send_json(frame).await;
    loop {
        let f = client.recv().await;
        if f["requestId"] == rid {
            assert_eq!(f["type"], "ack", "{f}");
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_events_arrive_signed_once_and_in_order_per_channel_through_failures() {
    let secret = new_secret();
    let receiver = Receiver::start(&secret, 1.0, 0.30);
    let mut config = config_with_endpoint(&receiver, &secret);
    config.history.channels.push(HistoryChannels {
        patterns: vec!["room-0".into()],
        max_messages: 1000,
        max_age_secs: 600,
        rewind: 0,
    });
    let server = TestServer::start_with(config).await;

    const PEERS: usize = 4;
    let mut clients = Vec::new();
    for p in 0..PEERS {
        clients.push(server.client(&format!("p{p}")).await);
    }
    // Per channel, what the backend must hear, in order.
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    let mut n = 0;
    for round in 0..3 {
        for room in ["room-0", "room-1", "room-2", "lobby"] {
            let want = expected.entry(room.to_string()).or_default();
            for (p, client) in clients.iter_mut().enumerate() {
                n += 1;
                acked(
                    client,
                    json!({"type": "subscribe", "channel": room}),
                    &format!("s{n}"),
                )
                .await;
                if p == 0 {
                    want.push(format!("channel.occupied {room} p0"));
                }
                want.push(format!("presence.joined {room} p{p}"));
            }
            for (p, client) in clients.iter_mut().enumerate() {
                for m in 0..3 {
                    n += 1;
                    let data = json!({"round": round, "m": m});
                    let frame = json!({"type": "publish", "channel": room, "data": data});
                    acked(client, frame, &format!("p{n}")).await;
                    want.push(format!("message.published {room} p{p}"));
                }
            }
            for (p, client) in clients.iter_mut().enumerate() {
                n += 1;
                let frame = json!({"type": "unsubscribe", "channel": room});
                acked(client, frame, &format!("u{n}")).await;
                want.push(format!("presence.left {room} p{p}"));
                if p == PEERS - 1 {
                    want.push(format!("channel.vacated {room} p{p}"));
                }
            }
        }
    }
    expected.remove("lobby");
    for client in clients {
        client.close().await;
    }
    let channel_events: usize = expected.values().map(Vec::len).sum();
    let total = channel_events + 2 * PEERS;
    let events = receiver
        .wait_for(Duration::from_secs(120), |e| e.len() >= total)
        .await;

    let mut received: HashMap<String, Vec<String>> = HashMap::new();
    let mut peers: HashMap<String, Vec<String>> = HashMap::new();
    for e in &events {
        assert_eq!(e["app"], APP);
        assert!(e["ts"].as_u64().is_some_and(|ts| ts > 1_600_000_000_000));
        match e["channel"].as_str() {
            Some(channel) => received.entry(channel.into()).or_default().push(summary(e)),
            None => peers
                .entry(e["peerId"].as_str().unwrap().into())
                .or_default()
                .push(e["type"].as_str().unwrap().into()),
        }
    }
    assert_eq!(
        received, expected,
        "every channel event once, in order per channel"
    );
    for p in 0..PEERS {
        assert_eq!(
            peers.get(&format!("p{p}")).cloned().unwrap_or_default(),
            ["peer.online", "peer.offline"],
            "p{p}"
        );
    }
    assert_eq!(events.len(), total);
    // Messages carry what was said, and their history position where the channel keeps one.
    let published: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "message.published")
        .collect();
    let kept: Vec<u64> = published
        .iter()
        .filter(|e| e["channel"] == "room-0")
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
    for e in &published {
        assert_eq!(e["from"], e["peerId"]);
        assert!(e["data"]["m"].is_u64(), "{e}");
        let kept = e["channel"] == "room-0";
        assert_eq!(e.get("messageId").is_some(), kept, "{e}");
        assert_eq!(e.get("offset").is_some(), kept, "{e}");
    }
    let retried = server
        .metric(r#"herald_webhook_events_total{outcome="retried"}"#)
        .await;
    assert!(retried > 0.0, "the receiver failed some attempts");
    println!(
        "{total} events from real clients: {} deliveries recorded, {retried} event retries",
        receiver.lines().len()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_test_event_reaches_the_endpoint_signed() {
    let secret = new_secret();
    let receiver = Receiver::start(&secret, 1.0, 0.0);
    let server = TestServer::start_with(config_with_endpoint(&receiver, &secret)).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/webhooks/test", server.http());

    let refused = http.post(&url).send().await.unwrap();
    assert_eq!(refused.status(), 401, "a secret key is needed");
    let other = http
        .post(&url)
        .header(
            "authorization",
            format!("Bearer {OTHER_SK_ID}:{OTHER_SK_SECRET}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 400, "the other app has no endpoint");
    let body: Value = other.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");

    let resp = http
        .post(&url)
        .header("authorization", SK_AUTH)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["queued"], 1);
    let id = body["id"].as_str().unwrap().to_string();
    let events = receiver
        .wait_for(Duration::from_secs(10), |e| !e.is_empty())
        .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["id"], id.as_str());
    assert_eq!(events[0]["type"], "webhook.test");
    assert_eq!(events[0]["app"], APP);
    server.shutdown().await;
}
