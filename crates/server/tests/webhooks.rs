//! Webhook delivery against a real HTTP receiver that fails about 30 % of requests with 500s
//! and holds some past Herald's timeout, and that verifies every signature with the Standard
//! Webhooks reference library (`standardwebhooks`, PyPI): every event arrives, signed, exactly
//! once after de-duplication by id, and in order per channel.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use herald_server::config::{AppConfig, Config, WebhookEndpointConfig};
use herald_server::webhooks::transport::HttpTransport;
use herald_server::webhooks::{EventFields, EventType, WebhookMetrics, Webhooks};

fn compat_py() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/compat/py")
}

/// The receiver process; killed when dropped.
struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Receiver {
    fn start(secret: &str, hold_secs: f64) -> Receiver {
        let python = compat_py().join(".venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run tests/compat/install.sh (scripts/test does)",
            python.display()
        );
        let out =
            std::env::temp_dir().join(format!("herald-webhooks-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&out);
        let mut child = Command::new(python)
            .arg("-u")
            .arg(compat_py().join("webhook_receiver.py"))
            .args([secret, out.to_str().unwrap(), &hold_secs.to_string(), "11"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .unwrap()
            .parse()
            .unwrap();
        Receiver { child, port, out }
    }

    fn lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_once_and_in_order_per_channel_through_failures() {
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    );
    let receiver = Receiver::start(&secret, 1.0);
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
            url: format!("http://127.0.0.1:{}/hooks", receiver.port),
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

    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let lines = loop {
        let lines = receiver.lines();
        let ids: HashSet<&str> = lines
            .iter()
            .filter_map(|l| l["event"]["id"].as_str())
            .collect();
        if ids.len() >= EVENTS || tokio::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !lines.iter().any(|l| l.get("bad_signature").is_some()),
        "the reference library refused a signature"
    );
    // De-duplicated by event id, in order of first arrival.
    let mut seen = HashSet::new();
    let mut received: HashMap<String, Vec<String>> = HashMap::new();
    let mut duplicates = 0;
    for l in &lines {
        let e = &l["event"];
        if !seen.insert(e["id"].as_str().unwrap().to_string()) {
            duplicates += 1;
            continue;
        }
        assert_eq!(e["type"], "presence.joined");
        assert_eq!(e["app"], "app");
        received
            .entry(e["channel"].as_str().unwrap().to_string())
            .or_default()
            .push(e["peerId"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), EVENTS, "every event arrived");
    assert_eq!(received, sent, "in order per channel, each once");
    assert!(
        metrics.retried.get() > 0,
        "the receiver failed some attempts"
    );
    eprintln!(
        "{EVENTS} events: {} deliveries recorded ({duplicates} duplicates), {} events retried",
        lines.len(),
        metrics.retried.get()
    );
}
