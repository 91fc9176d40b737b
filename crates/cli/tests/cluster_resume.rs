//! Lossless reconnect across a three-node Redis cluster of real `herald` processes, with the
//! OFFICIAL JS and Python SDKs, unmodified (`tests/compat/{js,py}/resume.*`, installed by
//! `bash tests/compat/install.sh`).
//!
//! The subscriber connects with a JWT through a TCP proxy to node A. After 5 messages and a
//! confirmed watermark, the proxy cuts its socket (no close frame) and from then on forwards
//! to node B. While it is away, 200 messages are published on node C and a direct is sent
//! from C (its ack says `queued`). The SDK reconnects by itself, now to node B, and
//! resubscribes: it must hold every message 1..=205 in publish order, the only duplicates
//! being pre-drop messages no pong had confirmed (at most 5), and the direct after the
//! reconnect. The second run kills node A with SIGKILL during the drop, once it parked the
//! peer: positions and inbox are in Redis, so nothing is lost with it. The third kills node A
//! first (the socket dies with it, so it never parks): the positions it wrote lazily resume
//! the peer, and the direct, sent once the survivors reaped node A, waits for it.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use herald_testkit::process::{redis_node_config, HeraldProcess};
use herald_testkit::proxy::TcpProxy;
use herald_testkit::redis::{Backend, RedisCluster, RedisServer};
use herald_testkit::ws::Client;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const APP: &str = "app_resume";
const KID: &str = "sk_id_resume";
const SECRET: &str = "sk_secret_resume_0123456789abcdef";
const CHANNEL: &str = "room/resume";
const BEFORE: u64 = 5;
const LAST: u64 = BEFORE + 200;
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

fn start_node(dir: &Path, redis: &Backend, id: &str) -> HeraldProcess {
    // A rewind of 3 would show as extra duplicates: a resume must not rewind.
    let history =
        "[[history.channels]]\npatterns = [\"room/*\"]\nmax_messages = 1000\nrewind = 3\n";
    let config = redis_node_config(
        &redis.engine_config(),
        id,
        5000,
        (APP, KID, SECRET),
        history,
    );
    HeraldProcess::start(
        Path::new(env!("CARGO_BIN_EXE_herald")),
        &dir.join(format!("{id}.toml")),
        &config,
    )
}

/// A client of `node` as peer `sub`, with a token of this file's key.
async fn connect(node: &HeraldProcess, sub: &str) -> Client {
    Client::connect_jwt(&node.origin(), KID, SECRET, sub).await
}

/// Sends `frame` (if any) and returns the next text frame.
async fn request_reply(ws: &mut Client, frame: Option<Value>) -> Value {
    if let Some(frame) = frame {
        ws.send_json(frame).await;
    }
    ws.recv_within(Duration::from_secs(10)).await
}

async fn publish(ws: &mut Client, n: u64) {
    let id = format!("p{n}");
    let ack = request_reply(
        ws,
        Some(json!({"type": "publish", "channel": CHANNEL, "data": {"n": n}, "requestId": id})),
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
}

async fn metric(node: &HeraldProcess, name: &str) -> f64 {
    let Ok(response) = reqwest::get(format!("{}/metrics", node.http())).await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Polls until `name` on `node` reaches `want` (a barrier on the server's own account).
async fn wait_metric(node: &HeraldProcess, name: &str, want: f64) {
    for _ in 0..800 {
        if metric(node, name).await >= want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{name} never reached {want}");
}

#[derive(Clone, Copy, Debug)]
enum Sdk {
    Js,
    Py,
}

fn sdk_command(sdk: Sdk) -> tokio::process::Command {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/compat");
    let hint = "Run `bash tests/compat/install.sh` from the workspace root first.";
    match sdk {
        Sdk::Js => {
            let sdk = dir.join("js/node_modules/@metered-ca/realtime/package.json");
            assert!(sdk.exists(), "the JS SDK is missing. {hint}");
            let mut cmd = tokio::process::Command::new("node");
            cmd.arg(dir.join("js/resume.mjs"));
            cmd
        }
        Sdk::Py => {
            let python = dir.join("py/.venv/bin/python");
            assert!(python.exists(), "the Python SDK venv is missing. {hint}");
            let mut cmd = tokio::process::Command::new(python);
            cmd.arg("-u").arg(dir.join("py/resume.py"));
            cmd
        }
    }
}

/// What happens to node A, which the subscriber dropped from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum NodeA {
    Lives,
    /// Killed after it saw the socket end and parked the peer.
    KilledDuringTheDrop,
    /// Killed first: the socket dies with it, so it never parks the peer. Its lazily written
    /// positions resume the peer; the direct is sent once the survivors reaped node A.
    KilledBeforeItSeesTheDrop,
}

/// One command on the single redis-server (`redis-cli --raw`), its reply lines.
fn redis_cli(redis: &Backend, args: &[&str]) -> Vec<String> {
    let Backend::Single(server) = redis else {
        panic!("a single redis-server only");
    };
    let out = std::process::Command::new("redis-cli")
        .arg("-u")
        .arg(server.url())
        .arg("--raw")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Polls (bounded) until `check` holds on the reply of a redis-cli command.
async fn wait_redis(redis: &Backend, args: &[&str], what: &str, check: impl Fn(&[String]) -> bool) {
    for _ in 0..800 {
        if check(&redis_cli(redis, args)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never: {what}");
}

async fn run(sdk: Sdk, redis: Backend, a: NodeA) {
    let label = format!("{sdk:?}-{a:?}").to_lowercase();
    let dir = std::env::temp_dir().join(format!("herald-resume-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut nodes: Vec<HeraldProcess> = ["resume-a", "resume-b", "resume-c"]
        .iter()
        .map(|id| start_node(&dir, &redis, id))
        .collect();
    for node in &nodes {
        node.wait_ready().await;
    }
    let proxy = TcpProxy::start(nodes[0].port()).await;
    let peer = format!("resume-{label}");
    let mut child = sdk_command(sdk)
        .env("HERALD_URL", format!("ws://127.0.0.1:{}", proxy.port))
        .env("HERALD_APP", APP)
        .env("HERALD_SK_ID", KID)
        .env("HERALD_SK_SECRET", SECRET)
        .env("HERALD_PK", "pk_unused")
        .env("RESUME_PEER", &peer)
        .env("RESUME_CHANNEL", CHANNEL)
        .env("RESUME_LAST", LAST.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut output = Vec::new();
    let mut wait_line = async |prefix: &str| -> String {
        let deadline = tokio::time::Instant::now() + SCRIPT_TIMEOUT;
        loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {prefix}:\n{}", output.join("\n")))
                .unwrap()
                .unwrap_or_else(|| panic!("script ended before {prefix}:\n{}", output.join("\n")));
            output.push(line.clone());
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_string();
            }
        }
    };
    wait_line("@READY").await;

    let mut publisher = connect(&nodes[2], "publisher").await;
    for n in 1..=BEFORE {
        publish(&mut publisher, n).await;
    }
    // The SDK answers the watermark pings by itself (any WebSocket client does).
    wait_metric(&nodes[0], "herald_watermark_confirmed_total", 1.0).await;

    proxy.point_at(nodes[1].port());
    let lazy_key = format!("*{peer}}}:lpos");
    if a == NodeA::KilledBeforeItSeesTheDrop {
        // Node A wrote the confirmed positions (lazily, within a second of the pong).
        wait_redis(&redis, &["KEYS", &lazy_key], "positions written", |k| {
            k.len() == 1
        })
        .await;
        proxy.refuse_new();
        nodes[0].kill9();
    } else {
        proxy.cut();
        // Node A saw the connection end and parked the peer in Redis.
        wait_metric(&nodes[0], "herald_resume_parked_peers", 1.0).await;
        if a == NodeA::KilledDuringTheDrop {
            nodes[0].kill9();
        }
    }
    for n in BEFORE + 1..=LAST {
        publish(&mut publisher, n).await;
    }
    if a == NodeA::KilledBeforeItSeesTheDrop {
        // Until the survivors reap node A, the route still names it (docs/resume.md).
        let route = format!("herald:{{p:{APP}:{peer}}}:route");
        wait_redis(&redis, &["HKEYS", &route], "node A reaped", |k| {
            k.iter().all(|i| !i.starts_with("resume-a#"))
        })
        .await;
    }
    let ack = request_reply(
        &mut publisher,
        Some(json!({"type": "send", "to": peer, "data": {"d": 1}, "requestId": "d"})),
    )
    .await;
    assert_eq!(
        ack,
        json!({"type": "ack", "requestId": "d", "queued": true})
    );
    proxy.restore();

    stdin.write_all(b"dump\n").await.unwrap();
    stdin.flush().await.unwrap();
    let result: Value = serde_json::from_str(&wait_line("@RESULT ").await).unwrap();
    wait_line("@DONE").await;
    assert!(child.wait().await.unwrap().success());

    let ns: Vec<u64> = result["ns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(ns[..BEFORE as usize], (1..=BEFORE).collect::<Vec<_>>()[..]);
    let resumed_from = ns[BEFORE as usize];
    assert!(
        (1..=BEFORE + 1).contains(&resumed_from),
        "{label}: the replay starts at {resumed_from}"
    );
    assert_eq!(
        ns[BEFORE as usize..],
        (resumed_from..=LAST).collect::<Vec<_>>()[..],
        "{label}: every message after the confirmed position, in publish order, once"
    );
    let duplicates = BEFORE + 1 - resumed_from;
    assert!(duplicates <= BEFORE);
    assert_eq!(result["directs"], json!([{"d": 1}]), "{label}");
    // It resumed on node B, replaying the gap there; node C held the direct.
    assert_eq!(
        metric(
            &nodes[1],
            "herald_resume_succeeded_total{kind=\"transparent\"}"
        )
        .await,
        1.0
    );
    let replayed = metric(&nodes[1], "herald_resume_replayed_messages_total").await;
    assert_eq!(replayed, (LAST + 1 - resumed_from) as f64, "{label}");
    assert_eq!(
        metric(&nodes[2], "herald_direct_inbox_queued_total").await,
        1.0
    );
    println!(
        "{label}: resumed on another node with all {} missed messages in order; {duplicates} \
         duplicates (bound: the {BEFORE} written before the drop); the held direct after the \
         reconnect",
        LAST - BEFORE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_sdk_resumes_on_another_node() {
    run(Sdk::Js, Backend::Single(RedisServer::start()), NodeA::Lives).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_resumes_on_another_node() {
    run(Sdk::Py, Backend::Single(RedisServer::start()), NodeA::Lives).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_sdk_resumes_on_another_node_after_a_kill_9() {
    let backend = Backend::Single(RedisServer::start());
    run(Sdk::Js, backend, NodeA::KilledDuringTheDrop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_sdk_resumes_on_another_node_when_its_node_dies_first() {
    let backend = Backend::Single(RedisServer::start());
    run(Sdk::Js, backend, NodeA::KilledBeforeItSeesTheDrop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_resumes_on_another_node_when_its_node_dies_first() {
    let backend = Backend::Single(RedisServer::start());
    run(Sdk::Py, backend, NodeA::KilledBeforeItSeesTheDrop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_resumes_on_another_node_after_a_kill_9() {
    let backend = Backend::Single(RedisServer::start());
    run(Sdk::Py, backend, NodeA::KilledDuringTheDrop).await;
}

/// The same on a three-master Redis Cluster (sharded pub/sub, keys in three slots' owners).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_cluster_js_sdk_resumes_on_another_node_after_a_kill_9() {
    let backend = Backend::Cluster(RedisCluster::start());
    run(Sdk::Js, backend, NodeA::KilledDuringTheDrop).await;
}
