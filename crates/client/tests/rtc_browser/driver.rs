//! The browser side of the call tests: `tests/browser/rtc-driver.mjs` started as a child, which
//! runs Herald, Chromium and the test page, and answers this side's commands line by line.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

pub const WAIT: Duration = Duration::from_secs(20);

/// One scenario at a time in this binary (nextest runs each alone as well).
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn herald_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("HERALD_BIN") {
        return PathBuf::from(bin);
    }
    // target/<profile>/deps/rtc_browser-… -> target/<profile>/herald
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("herald");
    assert!(
        bin.is_file(),
        "the herald binary is not at {} (run `cargo build -p herald` first, or set HERALD_BIN)",
        bin.display()
    );
    bin
}

pub struct Driver {
    child: Child,
    stdin: ChildStdin,
    replies: mpsc::UnboundedReceiver<Value>,
    next: u64,
    pub ws: String,
    pub http: String,
}

impl Driver {
    pub async fn start() -> Driver {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let root = repo_root();
        let dir = root.join("tests/browser");
        assert!(
            dir.join("node_modules/playwright-core/package.json")
                .is_file()
                && dir
                    .join("node_modules/@metered-ca/realtime/package.json")
                    .is_file(),
            "tests/browser/node_modules is missing: run `bash tests/browser/install.sh`"
        );
        let artifacts = root.join("artifacts/browser");
        std::fs::create_dir_all(&artifacts).unwrap();
        let mut child = Command::new("node")
            .arg("rtc-driver.mjs")
            .current_dir(&dir)
            .env("HERALD_BIN", herald_bin())
            .env("HERALD_ARTIFACTS", &artifacts)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start node (Node 20 is needed)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, replies) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match line.strip_prefix("@@ ") {
                    Some(json) => {
                        let _ = tx.send(serde_json::from_str::<Value>(json).unwrap());
                    }
                    None => eprintln!("driver: {line}"),
                }
            }
        });
        let mut driver = Driver {
            child,
            stdin,
            replies,
            next: 1,
            ws: String::new(),
            http: String::new(),
        };
        let ready = driver.reply(0, Duration::from_secs(60)).await.unwrap();
        driver.ws = ready["ws"].as_str().unwrap().to_owned();
        driver.http = ready["http"].as_str().unwrap().to_owned();
        driver
    }

    pub async fn reply(&mut self, id: u64, within: Duration) -> Result<Value, String> {
        let msg = tokio::time::timeout(within, self.replies.recv())
            .await
            .map_err(|_| format!("no reply to command {id} within {within:?}"))?
            .ok_or("the driver exited")?;
        assert_eq!(msg["id"], id, "replies come in order");
        if msg["ok"] == true {
            Ok(msg["result"].clone())
        } else {
            Err(msg["error"].as_str().unwrap_or("?").to_owned())
        }
    }

    pub async fn call(&mut self, mut cmd: Value) -> Value {
        let id = self.next;
        self.next += 1;
        cmd["id"] = json!(id);
        let line = format!("{cmd}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.reply(id, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("driver command {cmd} failed: {e}"))
    }

    pub async fn open(&mut self, name: &str, room: &str, camera: bool) -> String {
        let id = self
            .call(json!({"cmd": "open", "name": name, "room": room, "camera": camera}))
            .await;
        id.as_str().unwrap().to_owned()
    }

    pub async fn eval(&mut self, name: &str, expr: &str) -> Value {
        self.call(json!({"cmd": "eval", "name": name, "expr": expr}))
            .await
    }

    /// Polls `expr` in the page until it is truthy.
    pub async fn until(&mut self, name: &str, expr: &str, what: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.eval(name, expr).await;
            if !(v.is_null() || v == false || v == 0) {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                let events = self.eval(name, "window.rtc.events").await;
                panic!("{name}: {what} did not happen within {WAIT:?}; page events: {events:#}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}
