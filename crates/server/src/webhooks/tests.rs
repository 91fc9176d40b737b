//! Delivery on a paused clock through a test transport: order, batching, retries, giving up,
//! the queue bound, and which endpoints take which events.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;

use super::signing::sign;
use super::transport::Transport;
use super::*;
use crate::config::{AppConfig, WebhookEndpointConfig};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A POST the transport saw.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    timestamp: String,
    signature: String,
    body: Bytes,
}

/// Answers with the next scripted status (200 once the script runs out), after `delay`.
#[derive(Default)]
struct Scripted {
    statuses: Mutex<VecDeque<Result<u16, String>>>,
    seen: Mutex<Vec<Seen>>,
}

#[async_trait]
impl Transport for Scripted {
    async fn post(
        &self,
        _url: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<u16, String> {
        let header = |n: &str| headers.iter().find(|(k, _)| *k == n).unwrap().1.clone();
        self.seen.lock().unwrap().push(Seen {
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
            body,
        });
        self.statuses.lock().unwrap().pop_front().unwrap_or(Ok(200))
    }
}

fn config(hooks: Vec<WebhookEndpointConfig>, tune: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::default();
    config.apps.push(AppConfig {
        id: "app".into(),
        suspended: false,
        max_connections: 0,
        secret_keys: Vec::new(),
        publishable_keys: Vec::new(),
        webhooks: hooks,
    });
    tune(&mut config);
    config
}

fn hook(events: &[&str], channels: &[&str]) -> WebhookEndpointConfig {
    WebhookEndpointConfig {
        url: "http://backend.test/hooks".into(),
        secret: SECRET.into(),
        events: events.iter().map(|e| e.to_string()).collect(),
        channels: channels.iter().map(|c| c.to_string()).collect(),
    }
}

fn joined(webhooks: &Webhooks, channel: &str, peer: &str) -> usize {
    webhooks.emit(
        "app",
        EventType::PresenceJoined,
        EventFields {
            channel: Some(channel),
            peer_id: Some(peer),
            ..EventFields::default()
        },
    )
}

/// Peer ids of the events of each POST.
fn batches(seen: &[Seen]) -> Vec<Vec<String>> {
    seen.iter()
        .map(|s| {
            let v: Value = serde_json::from_slice(&s.body).unwrap();
            v["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["peerId"].as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

async fn pass(d: Duration) {
    tokio::time::sleep(d).await;
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn events_of_a_moment_share_a_batch_in_order_and_are_signed() {
    let transport = Arc::new(Scripted::default());
    let webhooks = Webhooks::start(
        &config(vec![hook(&["presence.joined"], &["room-*"])], |_| {}),
        transport.clone(),
        WebhookMetrics::default(),
    );
    for p in ["a", "b", "c"] {
        assert_eq!(joined(&webhooks, "room-1", p), 1);
    }
    pass(Duration::from_millis(10)).await;
    let seen = transport.seen.lock().unwrap().clone();
    assert_eq!(batches(&seen), [["a", "b", "c"]]);
    let s = &seen[0];
    let key = crate::config::secret_bytes(SECRET).unwrap();
    assert_eq!(
        s.signature,
        sign(&key, &s.id, s.timestamp.parse().unwrap(), &s.body)
    );
    assert!(s.id.starts_with("msg_"));
}

#[tokio::test(start_paused = true)]
async fn a_failing_endpoint_gets_the_same_batch_again_with_backoff_then_the_rest_in_order() {
    let transport = Arc::new(Scripted::default());
    transport
        .statuses
        .lock()
        .unwrap()
        .extend([Ok(500), Err("timed out".to_string()), Ok(503)]);
    let metrics = WebhookMetrics::default();
    let webhooks = Webhooks::start(
        &config(vec![hook(&["presence.joined"], &["**"])], |_| {}),
        transport.clone(),
        metrics.clone(),
    );
    joined(&webhooks, "room", "a");
    pass(Duration::from_millis(10)).await;
    joined(&webhooks, "room", "b");
    // Three failures: about 1 + 2 + 4 s of backoff (each between half and all of that).
    pass(Duration::from_secs(8)).await;
    let seen = transport.seen.lock().unwrap().clone();
    let b = batches(&seen);
    assert_eq!(
        b[..4],
        [["a"], ["a"], ["a"], ["a"]],
        "the same batch until it lands"
    );
    assert!(
        seen[..4].iter().all(|s| s.id == seen[0].id),
        "one webhook-id per batch"
    );
    assert_eq!(b[4], ["b"], "then what came after, in order");
    assert_eq!(metrics.delivered.get(), 2);
    assert_eq!(metrics.retried.get(), 3);
    assert_eq!(metrics.queued_bytes.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_batch_is_dropped_once_its_retry_period_is_over_and_delivery_goes_on() {
    let transport = Arc::new(Scripted::default());
    transport
        .statuses
        .lock()
        .unwrap()
        .extend(std::iter::repeat_n(Ok(500), 1000));
    let metrics = WebhookMetrics::default();
    let webhooks = Webhooks::start(
        &config(vec![hook(&["presence.joined"], &["**"])], |c| {
            c.webhooks.retry_for_secs = 60;
            c.webhooks.max_backoff_secs = 10;
        }),
        transport.clone(),
        metrics.clone(),
    );
    joined(&webhooks, "room", "lost");
    pass(Duration::from_secs(59)).await;
    assert_eq!(metrics.failed.get(), 0, "still inside the retry period");
    // The attempt after the period fails too (at most one backoff, 10 s, later): dropped.
    pass(Duration::from_secs(15)).await;
    assert_eq!(metrics.failed.get(), 1);
    // The endpoint recovers: what comes next is delivered.
    transport.statuses.lock().unwrap().clear();
    joined(&webhooks, "room", "next");
    pass(Duration::from_secs(120)).await;
    let b = batches(&transport.seen.lock().unwrap());
    assert_eq!(b.last().unwrap(), &["next"]);
    assert_eq!(metrics.delivered.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_drops_new_events_and_counts_them() {
    let transport = Arc::new(Scripted::default());
    transport
        .statuses
        .lock()
        .unwrap()
        .extend(std::iter::repeat_n(Ok(500), 1000));
    let metrics = WebhookMetrics::default();
    let webhooks = Webhooks::start(
        &config(vec![hook(&["presence.joined"], &["**"])], |c| {
            c.webhooks.queue_max_bytes = 64 * 1024;
        }),
        transport,
        metrics.clone(),
    );
    let mut queued = 0;
    for i in 0..2000 {
        queued += joined(&webhooks, "room", &format!("peer-{i}"));
    }
    assert!(queued < 2000 && queued > 100, "{queued}");
    assert_eq!(metrics.dropped.get(), 2000 - queued as u64);
    assert!(metrics.queued_bytes.get() <= 64 * 1024);
}

#[tokio::test(start_paused = true)]
async fn each_endpoint_takes_only_its_events_and_channels() {
    let transport = Arc::new(Scripted::default());
    let webhooks = Webhooks::start(
        &config(
            vec![
                hook(&["presence.joined"], &["room-*"]),
                hook(&["peer.online", "message.published"], &["lobby"]),
            ],
            |_| {},
        ),
        transport,
        WebhookMetrics::default(),
    );
    assert_eq!(joined(&webhooks, "room-1", "a"), 1);
    assert_eq!(
        joined(&webhooks, "lobby", "a"),
        0,
        "no endpoint takes lobby joins"
    );
    assert!(webhooks.wants("app", EventType::PeerOnline, None));
    assert!(webhooks.wants("app", EventType::MessagePublished, Some("lobby")));
    assert!(!webhooks.wants("app", EventType::MessagePublished, Some("room-1")));
    assert!(!webhooks.wants("other-app", EventType::PeerOnline, None));
}

#[test]
fn the_default_events_leave_messages_out() {
    let config: WebhookEndpointConfig = toml::from_str(
        "url = \"https://b.test/h\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
    )
    .unwrap();
    assert!(!config.events.iter().any(|e| e == "message.published"));
    assert_eq!(config.events.len(), 6);
    assert_eq!(config.channels, ["**"]);
}
