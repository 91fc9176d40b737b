//! The durable outbox: order and ids across a restart, deletion on release, the byte bound on
//! restore, a torn file set aside, and delivery of what was stored before anything new.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Mutex as StdMutex;

use async_trait::async_trait;
use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;

use super::*;
use crate::config::{AppConfig, Config, WebhookEndpointConfig};
use crate::webhooks::event::EventFields;
use crate::webhooks::outbox::Outbox;
use crate::webhooks::transport::Transport;
use crate::webhooks::{WebhookMetrics, Webhooks};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const EVERY: Duration = Duration::from_millis(2);

/// A fresh directory, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        Dir(std::env::temp_dir().join(format!(
            "herald-outbox-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        )))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn event(peer: &str) -> Event {
    Event::new(
        EventType::PresenceJoined,
        "app",
        1,
        EventFields {
            channel: Some("room-1"),
            peer_id: Some(peer),
            ..EventFields::default()
        },
    )
}

/// (endpoint, id) of every stored event, in sequence order.
fn on_disk(dir: &Dir) -> Vec<(String, String)> {
    let outbox = DurableOutbox::open(&dir.0, EVERY).unwrap();
    outbox
        .stored()
        .unwrap()
        .into_iter()
        .map(|s| (s.endpoint, s.event.id))
        .collect()
}

#[test]
fn queued_events_are_kept_in_queue_order_with_their_ids_until_released() {
    let dir = Dir::new("order");
    let metrics = DurableMetrics::default();
    let writer = DurableOutbox::open(&dir.0, EVERY)
        .unwrap()
        .start(0, 1, metrics.clone());
    let (a, b) = (
        Outbox::new(1 << 20, Gauge::default()),
        Outbox::new(1 << 20, Gauge::default()),
    );
    a.set_journal(writer.journal("a"));
    b.set_journal(writer.journal("b"));
    let names = ["a1", "b1", "a2", "b2", "a3"];
    let events: Vec<Event> = names.map(event).into();
    for (name, e) in names.iter().zip(&events) {
        let outbox = if name.starts_with('a') { &a } else { &b };
        assert!(outbox.push(e.clone()));
    }
    let batch = a.take(2);
    assert_eq!(batch.len(), 2);
    a.release(&batch);
    let journal = writer.journal("a");
    assert!(journal.sync(Duration::from_secs(5)));
    assert_eq!(metrics.uncommitted.get(), 0);
    assert_eq!(metrics.stored.get(), 3);
    assert!(metrics.commits.get() >= 1);
    drop((a, b, writer, journal));

    let ids = |names: &[usize]| -> Vec<String> {
        names.iter().map(|i| events[*i].id.clone()).collect()
    };
    let stored = on_disk(&dir);
    assert_eq!(
        stored.iter().map(|s| s.1.clone()).collect::<Vec<_>>(),
        ids(&[1, 3, 4])
    );
    assert_eq!(
        stored.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        ["b", "b", "a"]
    );
}

#[test]
fn a_file_that_is_not_a_database_is_set_aside_and_a_new_one_begins() {
    let dir = Dir::new("torn");
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(dir.0.join(FILE_NAME), b"not a redb file, torn mid-write".repeat(100)).unwrap();
    let outbox = DurableOutbox::open(&dir.0, EVERY).unwrap();
    assert!(outbox.stored().unwrap().is_empty());
    let aside: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("webhooks.redb.unusable-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    // The new database works.
    let writer = outbox.start(0, 1, DurableMetrics::default());
    let journal = writer.journal("a");
    journal.put(&event("x"));
    assert!(journal.sync(Duration::from_secs(5)));
    drop((writer, journal));
    assert_eq!(on_disk(&dir).len(), 1);
}

/// Fails every POST (the endpoint is down), or records and accepts them.
struct Endpoint {
    up: bool,
    seen: StdMutex<Vec<String>>,
}

#[async_trait]
impl Transport for Endpoint {
    async fn post(&self, _: &str, _: &[(&'static str, String)], body: Bytes) -> Result<u16, String> {
        if !self.up {
            return Err("connection refused".into());
        }
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let mut seen = self.seen.lock().unwrap();
        for e in v["events"].as_array().unwrap() {
            seen.push(e["id"].as_str().unwrap().to_string());
        }
        Ok(204)
    }
}

fn config(queue_max_bytes: usize) -> Config {
    let mut config = Config::default();
    config.apps.push(AppConfig {
        id: "app".into(),
        suspended: false,
        max_connections: 0,
        secret_keys: Vec::new(),
        publishable_keys: Vec::new(),
        webhooks: vec![WebhookEndpointConfig {
            url: "http://backend.test/hooks".into(),
            secret: SECRET.into(),
            events: vec!["presence.joined".into()],
            channels: vec!["**".into()],
        }],
    });
    config.webhooks.queue_max_bytes = queue_max_bytes;
    config.webhooks.batch_delay_ms = 0;
    config
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

fn join(webhooks: &Webhooks, peer: &str) -> usize {
    webhooks.emit(
        "app",
        EventType::PresenceJoined,
        EventFields {
            channel: Some("room-1"),
            peer_id: Some(peer),
            ..EventFields::default()
        },
    )
}

/// Runs a node's webhooks on `dir` with the endpoint up or down: emits one event per peer,
/// lets delivery run for `run`, and returns what the endpoint accepted. Ending the runtime
/// drops the delivery tasks, which closes the outbox as a stopped node would.
fn node(dir: &Dir, queue_max_bytes: usize, up: bool, peers: &[&str]) -> Vec<String> {
    let transport = Arc::new(Endpoint {
        up,
        seen: StdMutex::default(),
    });
    let rt = paused_runtime();
    rt.block_on(async {
        let webhooks = Webhooks::start(
            &config(queue_max_bytes),
            transport.clone(),
            WebhookMetrics::default(),
        );
        webhooks.make_durable(DurableOutbox::open(&dir.0, EVERY).unwrap());
        for p in peers {
            join(&webhooks, p);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    });
    drop(rt);
    let seen = transport.seen.lock().unwrap().clone();
    seen
}

#[test]
fn events_stored_while_the_endpoint_was_down_go_first_after_a_restart_then_are_deleted() {
    let dir = Dir::new("restart");
    assert!(node(&dir, 1 << 20, false, &["a", "b", "c"]).is_empty());
    let stored: Vec<String> = on_disk(&dir).into_iter().map(|s| s.1).collect();
    assert_eq!(stored.len(), 3);

    let seen = node(&dir, 1 << 20, true, &["d"]);
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[..3], stored[..], "the stored events first, same ids, same order");
    assert!(on_disk(&dir).is_empty(), "delivered events are deleted");
}

#[test]
fn stored_events_that_no_longer_fit_the_queue_are_dropped_and_deleted() {
    let dir = Dir::new("bound");
    let peers: Vec<String> = (0..2000).map(|i| format!("peer-{i:04}")).collect();
    let peers: Vec<&str> = peers.iter().map(String::as_str).collect();
    node(&dir, 1 << 20, false, &peers);
    assert_eq!(on_disk(&dir).len(), 2000);
    // A smaller queue on restart: the oldest that fit come back, the rest are gone.
    let seen = node(&dir, 64 * 1024, true, &[]);
    assert!(!seen.is_empty() && seen.len() < 2000, "{}", seen.len());
    assert!(on_disk(&dir).is_empty());
}
