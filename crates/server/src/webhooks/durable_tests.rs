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

    let ids =
        |names: &[usize]| -> Vec<String> { names.iter().map(|i| events[*i].id.clone()).collect() };
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
    std::fs::write(
        dir.0.join(FILE_NAME),
        b"not a redb file, torn mid-write".repeat(100),
    )
    .unwrap();
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
    async fn post(
        &self,
        _: &str,
        _: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<u16, String> {
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
    assert_eq!(
        seen[..3],
        stored[..],
        "the stored events first, same ids, same order"
    );
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

/// The cost of the durable outbox (not a check: run it in release with `--ignored
/// --nocapture`). `N` events of about 300 bytes are queued from one thread as fast as it can;
/// printed: the queueing cost per event without and with the journal, the rate the disk
/// absorbed them (all of them, as for a down endpoint), and the commits' duration and lag.
#[test]
#[ignore = "a measurement"]
fn measure_the_cost_per_event() {
    const N: usize = 200_000;
    let data =
        serde_json::value::RawValue::from_string(format!("{{\"text\":\"{}\"}}", "x".repeat(160)))
            .unwrap();
    let events: Vec<Event> = (0..N)
        .map(|i| {
            let peer = format!("peer-{i}");
            Event::new(
                EventType::MessagePublished,
                "app",
                1,
                EventFields {
                    channel: Some("room-1"),
                    peer_id: Some(&peer),
                    from: Some(&peer),
                    data: Some(&data),
                    ..EventFields::default()
                },
            )
        })
        .collect();
    let bytes: usize = events.iter().map(|e| e.json.len()).sum();

    let plain = Outbox::new(1 << 30, Gauge::default());
    let started = Instant::now();
    for e in &events {
        plain.push(e.clone());
    }
    let memory_ns = started.elapsed().as_nanos() as f64 / N as f64;

    for every_ms in [0u64, 5, 20] {
        let dir = Dir::new("measure");
        let metrics = DurableMetrics::default();
        let writer = DurableOutbox::open(&dir.0, Duration::from_millis(every_ms))
            .unwrap()
            .start(0, 1, metrics.clone());
        let outbox = Outbox::new(1 << 30, Gauge::default());
        outbox.set_journal(writer.journal("a"));
        let journal = writer.journal("a");
        let started = Instant::now();
        for e in &events {
            outbox.push(e.clone());
        }
        let queued = started.elapsed();
        assert!(journal.sync(Duration::from_secs(300)));
        let on_disk = started.elapsed();
        let commits = metrics.commits.get();
        let (commit_sum, commit_n) = histogram_sum(&metrics.commit_seconds);
        let (lag_sum, _) = histogram_sum(&metrics.commit_lag);
        println!(
            "outbox_commit_ms = {every_ms}: queueing {:.0} ns/event (memory only {memory_ns:.0}); \
             {N} events ({} MB) on disk in {:.2} s = {:.0} events/s; {commits} commits, \
             mean {:.2} ms each (fsync included), mean lag of a commit's oldest event {:.2} ms",
            queued.as_nanos() as f64 / N as f64,
            bytes / 1_000_000,
            on_disk.as_secs_f64(),
            N as f64 / on_disk.as_secs_f64(),
            commit_sum / commit_n.max(1) as f64 * 1000.0,
            lag_sum / commits.max(1) as f64 * 1000.0,
        );
        drop((outbox, journal, writer));
    }

    // A steady trickle, as a live node sees it: 2 000 events/s for 2 s, endpoint down.
    let dir = Dir::new("measure-steady");
    let metrics = DurableMetrics::default();
    let writer = DurableOutbox::open(&dir.0, Duration::from_millis(5))
        .unwrap()
        .start(0, 1, metrics.clone());
    let outbox = Outbox::new(1 << 30, Gauge::default());
    outbox.set_journal(writer.journal("a"));
    let started = Instant::now();
    for (i, e) in events.iter().take(4000).enumerate() {
        let due = started + Duration::from_micros(500 * i as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        outbox.push(e.clone());
    }
    assert!(writer.journal("a").sync(Duration::from_secs(30)));
    let (commit_sum, commit_n) = histogram_sum(&metrics.commit_seconds);
    let (lag_sum, _) = histogram_sum(&metrics.commit_lag);
    println!(
        "steady 2000 events/s, outbox_commit_ms = 5: {} commits, mean {:.2} ms each, mean lag \
         {:.2} ms (the loss window a kill -9 had)",
        metrics.commits.get(),
        commit_sum / commit_n.max(1) as f64 * 1000.0,
        lag_sum / commit_n.max(1) as f64 * 1000.0,
    );
}

/// (sum, count) of a histogram, read through its text encoding.
fn histogram_sum(h: &Histogram) -> (f64, u64) {
    let mut registry = Registry::default();
    registry.register("h", "", h.clone());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let value = |suffix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("h_{suffix} "))?.parse().ok())
            .unwrap_or(0.0)
    };
    (value("sum"), value("count") as u64)
}
