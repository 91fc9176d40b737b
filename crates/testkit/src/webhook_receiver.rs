//! The webhook receiver the webhook tests share (the server's and the CLI's): `tests/compat/py/webhook_receiver.py`, a real
//! HTTP server that verifies every signature with the Standard Webhooks reference library
//! (`standardwebhooks`, PyPI) and fails a share of requests on purpose; and what it recorded,
//! de-duplicated by event id.
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

fn compat_py() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/compat/py")
}

/// A fresh `whsec_` secret.
pub fn new_secret() -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    )
}

/// The receiver process; killed when dropped.
pub struct Receiver {
    child: Child,
    pub port: u16,
    out: PathBuf,
}

impl Receiver {
    /// A receiver that fails `fail` of requests with a 500 and holds about 5 % more for
    /// `hold_secs` (none when `fail` is 0).
    pub fn start(secret: &str, hold_secs: f64, fail: f64) -> Receiver {
        let python = compat_py().join(".venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run tests/compat/install.sh (scripts/test does)",
            python.display()
        );
        let out = std::env::temp_dir().join(format!(
            "herald-webhooks-{}-{}.jsonl",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = std::fs::remove_file(&out);
        let mut child = Command::new(python)
            .arg("-u")
            .arg(compat_py().join("webhook_receiver.py"))
            .args([secret, out.to_str().unwrap(), &hold_secs.to_string(), "11"])
            .arg(fail.to_string())
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

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks", self.port)
    }

    /// How many de-duplicated events have `type` `kind` and `key` equal to `value`.
    pub fn count(&self, kind: &str, key: &str, value: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| e["type"] == kind && e[key] == value)
            .count()
    }

    /// Every line recorded so far (`{"webhook_id", "event"}` or `{"bad_signature": true}`).
    pub fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The events received, each once (first arrival), in order of arrival; panics on a bad
    /// signature.
    pub fn events(&self) -> Vec<Value> {
        let lines = self.lines();
        assert!(
            !lines.iter().any(|l| l.get("bad_signature").is_some()),
            "the reference library refused a signature"
        );
        let mut seen = HashSet::new();
        lines
            .into_iter()
            .filter_map(|l| {
                let e = l.get("event")?.clone();
                seen.insert(e["id"].as_str()?.to_string()).then_some(e)
            })
            .collect()
    }

    /// Waits until `done` holds for the de-duplicated events, or `within` passes; the events.
    pub async fn wait_for(&self, within: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let events = self.events();
            if done(&events) || tokio::time::Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
    }
}

/// "type channel peer" of each event (`-` where absent), for comparing sequences.
pub fn summary(e: &Value) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or("-").to_string();
    format!("{} {} {}", s("type"), s("channel"), s("peerId"))
}
