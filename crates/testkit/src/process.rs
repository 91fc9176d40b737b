//! A real `herald` process, for the tests that need what an in-process server cannot give: a
//! `kill -9` in the middle of things, or a restart that really ends the process (so files and
//! ports are released as in production). The binary's path comes from the calling test crate
//! (`env!("CARGO_BIN_EXE_herald")` exists only in the CLI crate's tests).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `herald serve`, killed (SIGKILL) when dropped.
pub struct HeraldProcess {
    child: Child,
    /// The address it listens on, as it logged it (`host:port`).
    pub listen: String,
}

impl HeraldProcess {
    /// Writes `config` (TOML; it must log as JSON, `[log] format = "json"`, at info or below)
    /// to `config_path` and starts `bin serve --config config_path`; returns once the node
    /// logged the address it listens on.
    pub fn start(bin: &Path, config_path: &Path, config: &str) -> HeraldProcess {
        std::fs::write(config_path, config).unwrap();
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads stderr to its end, so the node never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sent {
                    continue;
                }
                if let Some(listen) = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v["fields"]["listen"].as_str().map(str::to_owned))
                {
                    let _ = tx.send(listen);
                    sent = true;
                }
            }
        });
        let listen = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("herald did not report its address");
        HeraldProcess { child, listen }
    }

    /// `ws://host:port`, what the SDKs take as `url`.
    pub fn origin(&self) -> String {
        format!("ws://{}", self.listen)
    }

    /// `http://host:port`, the base of REST and the health endpoints.
    pub fn http(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a host:port address")
    }

    /// SIGKILL, and waits for the process to be gone (its sockets and files are released).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (a graceful shutdown), and waits for the process to exit.
    pub fn terminate(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    /// Waits until `/readyz` answers 200, as a load balancer would before sending clients.
    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.http());
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = reqwest::Client::new();
        while !client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < deadline, "{url} never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The configuration of a Redis-engine node `id` (`engine`: its `redis_url` lines, e.g.
/// `Backend::engine_config`) serving app `app` with one secret key, logging JSON at info;
/// `extra` is appended (`[[history.channels]]`, `[[apps.webhooks]]`, ...).
pub fn redis_node_config(
    engine: &str,
    id: &str,
    lease_ms: u64,
    (app, kid, secret): (&str, &str, &str),
    extra: &str,
) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
[log]
format = "json"
level = "info"
[engine]
kind = "redis"
{engine}
node_id = "{id}"
lease_ttl_ms = {lease_ms}
[[apps]]
id = "{app}"
[[apps.secret_keys]]
id = "{kid}"
secret = "{secret}"
{extra}
"#
    )
}
