//! Browser tests: headless Debian Chromium, driven by playwright-core from Node, against the real
//! `herald` binary. Each test runs one suite of `tests/browser` with Node's test runner:
//!
//! - `app.test.mjs`: the demo app at `/` (roster, chat, DMs, typing, reactions, a user leaving,
//!   a server restart, hostile input, the app's own video call, dev tokens switched off);
//! - `call.test.mjs`: a WebRTC call between two official `@metered-ca/realtime` MeteredPeers;
//! - `history.test.mjs`: the demo app's room history (rewind on join, "Load older", a reload).
//!
//! The Node side starts (and restarts) Herald itself from `HERALD_BIN`. When the machine allows
//! it, the suite runs in a network namespace of its own with only loopback, so Chromium, Herald
//! and the WebRTC media stay on 127.0.0.1. Screenshots and logs go to `artifacts/browser/`.
//!
//! Prerequisites (`bash tests/browser/install.sh`): Node 20, the npm packages in
//! `tests/browser/node_modules`, and `/usr/bin/chromium`. Missing ones fail the test with a
//! message saying what to install; they are never skipped.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A whole suite gets this long; it normally needs well under a minute.
const SUITE_TIMEOUT: Duration = Duration::from_secs(240);

/// One suite at a time under `cargo test` (nextest gets the same from .config/nextest.toml):
/// the app suite holds a roster update to a one-second bound.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn chromium() -> PathBuf {
    std::env::var_os("HERALD_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

fn check_prerequisites(root: &Path) {
    let mut missing = Vec::new();
    let node = Command::new("node").arg("--version").output();
    match node {
        Ok(out) if out.status.success() => {}
        _ => missing.push("Node.js 20 (`node` on PATH)".to_string()),
    }
    let modules = root.join("tests/browser/node_modules");
    for package in ["playwright-core", "@metered-ca/realtime", "ws"] {
        if !modules.join(package).join("package.json").is_file() {
            missing.push(format!("npm package {package} in {}", modules.display()));
        }
    }
    let browser = chromium();
    if !browser.is_file() {
        missing.push(format!(
            "Chromium at {} (Debian package `chromium`)",
            browser.display()
        ));
    }
    assert!(
        missing.is_empty(),
        "the browser tests need:\n  - {}\nRun `bash tests/browser/install.sh` (scripts/test and .ci/run do).",
        missing.join("\n  - ")
    );
}

/// How to enter a fresh network namespace with loopback up, if this machine lets us: as root
/// directly, otherwise through a user namespace. `None` runs the suite in the host namespace.
fn netns_prefix() -> Option<Vec<&'static str>> {
    if std::env::var_os("HERALD_BROWSER_NO_NETNS").is_some() {
        return None;
    }
    let candidates: [&[&'static str]; 2] = [
        &["unshare", "--net", "--"],
        &["unshare", "--map-root-user", "--net", "--"],
    ];
    candidates.into_iter().find_map(|prefix| {
        let ok = Command::new(prefix[0])
            .args(&prefix[1..])
            .args(["sh", "-c", "ip link set lo up"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| prefix.to_vec())
    })
}

fn run_suite(file: &str) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let root = repo_root();
    check_prerequisites(&root);
    let artifacts = root.join("artifacts/browser");
    std::fs::create_dir_all(&artifacts).unwrap();
    let node = [
        "node",
        "--test",
        "--test-reporter=spec",
        "--test-concurrency=1",
        file,
    ];
    let netns = netns_prefix();
    let mut cmd = match &netns {
        Some(prefix) => {
            let mut c = Command::new(prefix[0]);
            c.args(&prefix[1..])
                .args(["sh", "-c", "ip link set lo up && exec \"$@\"", "sh"])
                .args(node);
            c
        }
        None => {
            let mut c = Command::new(node[0]);
            c.args(&node[1..]);
            c
        }
    };
    let log_path = artifacts.join(format!("{}.log", file.trim_end_matches(".test.mjs")));
    let log = std::fs::File::create(&log_path).unwrap();
    cmd.current_dir(root.join("tests/browser"))
        .env("HERALD_BIN", env!("CARGO_BIN_EXE_herald"))
        .env("HERALD_CHROMIUM", chromium())
        .env("HERALD_ARTIFACTS", &artifacts)
        .env("HERALD_NETNS", if netns.is_some() { "1" } else { "0" })
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // Its own process group, so a timeout takes Node, Chromium and Herald down together.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let started = Instant::now();
    let mut child = cmd.spawn().expect("cannot start node");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > SUITE_TIMEOUT {
            let _ = Command::new("kill")
                .args(["-KILL", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut output = String::new();
    std::fs::File::open(&log_path)
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    let namespace = if netns.is_some() {
        "own network namespace (loopback only)"
    } else {
        "host network namespace"
    };
    let took = started.elapsed().as_secs_f64();
    match status {
        Some(s) if s.success() => {
            println!("{output}");
            println!("{file}: passed in {took:.1} s ({namespace})");
        }
        Some(s) => panic!(
            "{file} failed ({s}) after {took:.1} s ({namespace}); log in {}, screenshots in {}:\n{output}",
            log_path.display(),
            artifacts.display()
        ),
        None => panic!(
            "{file} did not finish within {} s and was killed; log in {}:\n{output}",
            SUITE_TIMEOUT.as_secs(),
            log_path.display()
        ),
    }
}

#[test]
fn demo_app_in_chromium() {
    run_suite("app.test.mjs");
}

#[test]
fn metered_peer_video_call_in_chromium() {
    run_suite("call.test.mjs");
}

#[test]
fn demo_app_history_in_chromium() {
    run_suite("history.test.mjs");
}
