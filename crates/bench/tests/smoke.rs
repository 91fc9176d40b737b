//! A few-second smoke run of every scenario, so the benchmark cannot rot: Herald in-process on
//! 127.0.0.1:0 with bench/herald.toml, and the Socket.IO reference server when its
//! node_modules are installed (bench/socketio/install.sh, run by scripts/test).
//!
//! These tests check that the tool works and that nothing is lost at tiny sizes; they make no
//! timing assertions.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use herald_bench::proto::{Proto, Target};
use herald_bench::report;
use herald_bench::suite::{self, SuiteOpts, SuiteResult};
use herald_testkit::config::load_toml;
use herald_testkit::server::TestServer;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn check(result: &SuiteResult) {
    let c = &result.connections[0];
    assert_eq!(c.failures, 0, "connection failures");
    assert_eq!(c.connected, c.opts.count);
    let max = result.fanout_max.as_ref().unwrap();
    assert!(max.published > 0, "nothing published");
    assert_eq!(max.subscribers_connected, max.opts.subscribers);
    assert_eq!(max.missing, 0, "fan-out lost deliveries: {max:?}");
    assert_eq!(max.delivered, max.expected);
    assert!(max.latency.samples > 0);
    for run in &result.fanout_curve {
        assert_eq!(
            run.missing, 0,
            "fan-out at a fixed rate lost deliveries: {run:?}"
        );
    }
    let probe = result.fanout_probe.as_ref().unwrap();
    assert_eq!(probe.missing, 0, "fan-out probe lost deliveries: {probe:?}");
    assert_eq!(result.direct_probe.as_ref().unwrap().missing, 0);
    let presence = result.presence.as_ref().unwrap();
    assert!(presence.cycles > 0, "no presence cycle completed");
    assert_eq!(presence.joins_seen, presence.joins_expected);
    let direct = result.direct.as_ref().unwrap();
    assert!(direct.sent > 0);
    assert_eq!(direct.missing, 0, "direct messages lost: {direct:?}");
    assert!(!result.fanout_fixed.is_empty(), "no fixed-rate curve point");
    for run in &result.fanout_fixed {
        assert_eq!(run.missing, 0, "curve point lost deliveries: {run:?}");
    }
    let chat = &result.chat[0];
    assert!(chat.chat_sent > 0 && chat.typing_sent > 0 && chat.directs_sent > 0);
    assert!(chat.churn_cycles > 0, "no presence churn in the chat run");
    assert_eq!(chat.missing, 0, "chat lost deliveries: {chat:?}");
    assert!(chat.latency.samples > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_herald() {
    let server = TestServer::start_with(load_toml(repo().join("bench/herald.toml"))).await;
    let target = Target {
        proto: Proto::Herald,
        addrs: vec![server.addr],
        key: "pk_bench".into(),
        quiet_key: "pk_bench_quiet".into(),
        pids: vec![std::process::id()],
        signing_key: None,
    };
    let result = suite::run("herald", &target, &SuiteOpts::smoke())
        .await
        .unwrap();
    check(&result);
    server.shutdown().await;

    // The report renders from the JSON it writes.
    let dir = std::env::temp_dir().join(format!("herald-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = serde_json::to_vec(&result).unwrap();
    let back: SuiteResult = serde_json::from_slice(&json).unwrap();
    let table = report::markdown(&[back.clone(), back.clone()]);
    assert!(
        table.contains("| Fan-out S×P, max: deliveries/s |"),
        "{table}"
    );
    let png = dir.join("fanout-latency.png");
    if report::plot_latency(&[back], &png).unwrap() {
        assert!(std::fs::metadata(&png).unwrap().len() > 1000);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kills the reference server when the test ends, however it ends.
struct Node(std::process::Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_socketio() {
    let dir = repo().join("bench/socketio");
    if !dir.join("node_modules/socket.io").is_dir() {
        eprintln!(
            "skipped: bench/socketio/node_modules is missing (run bench/socketio/install.sh)"
        );
        return;
    }
    let mut child = Command::new("node")
        .arg("server.js")
        .arg("0")
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node is required when bench/socketio/node_modules exists");
    let stdout = child.stdout.take().unwrap();
    let pid = child.id();
    let node = Node(child);
    let port: u16 = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line.trim()
            .strip_prefix("listening ")
            .unwrap()
            .parse()
            .unwrap()
    })
    .await
    .unwrap();
    let target = Target {
        proto: Proto::Socketio,
        addrs: vec![format!("127.0.0.1:{port}").parse().unwrap()],
        key: String::new(),
        quiet_key: String::new(),
        pids: vec![pid],
        signing_key: None,
    };
    let result = suite::run("socketio", &target, &SuiteOpts::smoke())
        .await
        .unwrap();
    check(&result);
    drop(node);
}

/// Sockudo (Pusher protocol), when bench/sockudo/install.sh has built it: every scenario
/// through the Pusher adapter, with the config bench/run.sh uses on a free port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_suite_against_sockudo() {
    let root = repo();
    let bin = root.join("bench/sockudo/.bin/bin/sockudo");
    if !bin.is_file() {
        eprintln!("skipped: Sockudo is not installed (run bench/sockudo/install.sh)");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("herald-bench-sockudo-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = std::fs::read_to_string(root.join("bench/sockudo/config.toml"))
        .unwrap()
        .replace("port = 6001", &format!("port = {port}"));
    std::fs::write(dir.join("sockudo.toml"), config).unwrap();
    let child = Command::new(&bin)
        .arg("--config")
        .arg(dir.join("sockudo.toml"))
        .current_dir(&dir)
        .env_clear()
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let node = Node(child);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        up,
        "Sockudo did not listen on the configured port: the config did not apply"
    );
    let target = Target {
        proto: Proto::Pusher,
        addrs: vec![addr],
        key: String::new(),
        quiet_key: String::new(),
        pids: vec![pid],
        signing_key: None,
    };
    herald_bench::scenarios::probe(&target).await.unwrap();
    let result = suite::run("sockudo", &target, &SuiteOpts::smoke())
        .await
        .unwrap();
    check(&result);
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
