//! A few-second run of `presence-storm` against Herald in-process (bench/herald.toml plus the
//! benchmark's secret key): the scenario completes, and its completeness check finds every
//! roster exact on a correct server and flags rosters that do not match the membership.
//! No timing assertions.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use herald_bench::proto::Client;
use herald_bench::storm::{self, StormOpts, StormResult, StormTarget};
use herald_bench::token::SigningKey;
use herald_testkit::config::load_toml;
use herald_testkit::server::TestServer;

const KID: &str = "sk_id_bench_storm";
const SECRET: &str = "sk_secret_bench_storm_loopback_only";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

async fn server() -> TestServer {
    let base = std::fs::read_to_string(repo().join("bench/herald.toml")).unwrap();
    // One file per server: tests of this binary run side by side under `cargo test`, and one
    // removing the file while another still read it failed that one's setup.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("herald-storm-{}-{n}.toml", std::process::id()));
    let text = format!("{base}\n[[apps.secret_keys]]\nid = \"{KID}\"\nsecret = \"{SECRET}\"\n");
    std::fs::write(&path, text).unwrap();
    let config = load_toml(&path);
    let _ = std::fs::remove_file(&path);
    TestServer::start_with(config).await
}

fn target(server: &TestServer, channel: &str) -> StormTarget {
    StormTarget {
        addr: server.addr,
        pids: vec![std::process::id()],
        key: SigningKey::parse(&format!("{KID}:{SECRET}")).unwrap(),
        channel: channel.into(),
    }
}

fn check_ran(r: &StormResult, opts: &StormOpts) {
    assert_eq!(r.members_connected, opts.members, "{r:#?}");
    assert_eq!(r.member_failures, 0);
    assert_eq!(r.storm.joins_acked, opts.joins, "{r:#?}");
    assert_eq!(r.completeness.watchers_checked, opts.members);
    assert!(r.completeness.watchers_closed_by_server.is_empty());
    assert_eq!(r.snapshots.len(), opts.snapshot_samples);
    for s in &r.snapshots {
        assert!(s.latency_ms.is_some(), "no snapshot: {s:?}");
        assert!(s.entries >= opts.members, "snapshot too small: {s:?}");
        assert!(s.head.starts_with(r#"{"type":"presence""#), "{s:?}");
    }
    // Today every join and leave is its own frame to every watcher.
    assert!(r.storm.watcher_bytes.median > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_runs_and_every_roster_is_exact() {
    let server = server().await;
    let opts = StormOpts::smoke();
    let r = storm::run("smoke", &target(&server, "bench/storm-smoke"), &opts)
        .await
        .unwrap();
    check_ran(&r, &opts);
    assert_eq!(r.setup_converged, opts.members, "{r:#?}");
    let c = &r.completeness;
    assert_eq!(c.watchers_exact, opts.members, "{c:?}");
    assert_eq!(
        (c.missing_entries, c.extra_entries, c.duplicate_joins),
        (0, 0, 0)
    );
    assert_eq!((c.absent_lefts, c.foreign_entries), (0, 0));
    let every = 2.0 * opts.joins as f64;
    assert_eq!(r.storm.watcher_churn_events.median, every, "{:?}", r.storm);
    assert_eq!(r.storm.watcher_churn_events.max, every);
    // The JSON round-trips, and the summary renders.
    let back: StormResult = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
    assert!(back
        .summary()
        .contains("completeness: 40 of 40 rosters exact"));
    server.shutdown().await;
}

/// An outside connection holds churner 0's peer id in the room for the whole run: reference
/// counting hides that churner's join and leave, so every watcher ends with a peer the
/// generator believes gone, and the check must say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completeness_flags_a_roster_that_differs_from_the_membership() {
    let server = server().await;
    let channel = "bench/storm-intruder";
    let key = SigningKey::parse(&format!("{KID}:{SECRET}")).unwrap();
    let path = format!("/v1?token={}", key.token("j0", None, true));
    let mut intruder = Client::connect_herald(server.addr, &path, 0).await.unwrap();
    let id = intruder.tx.queue_subscribe(channel, true);
    intruder.await_ack(id).await.unwrap();
    // It must keep reading, or the server would close it as a slow consumer.
    let reader = tokio::spawn(async move {
        while let Ok(f) = intruder.rd.next().await {
            if f == herald_bench::ws::Frame::Closed {
                break;
            }
        }
    });

    let opts = StormOpts::smoke();
    let r = storm::run("intruder", &target(&server, channel), &opts)
        .await
        .unwrap();
    check_ran(&r, &opts);
    let c = &r.completeness;
    assert_eq!(c.watchers_mismatched, opts.members, "{c:?}");
    assert_eq!(c.watchers_exact, 0);
    assert_eq!(c.extra_entries, opts.members as u64, "{c:?}");
    assert_eq!(c.missing_entries, 0);
    let seen = 2.0 * (opts.joins - 1) as f64;
    assert_eq!(r.storm.watcher_churn_events.max, seen, "{:?}", r.storm);
    reader.abort();
    server.shutdown().await;
}

/// Members without presence are in every roster but are no watchers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_without_presence_are_counted_but_not_checked() {
    let server = server().await;
    let opts = StormOpts {
        watchers: 10,
        ..StormOpts::smoke()
    };
    let r = storm::run("silent", &target(&server, "bench/storm-silent"), &opts)
        .await
        .unwrap();
    assert_eq!(r.members_connected, opts.members);
    assert_eq!(r.setup_converged, 10, "{r:#?}");
    let c = &r.completeness;
    assert_eq!((c.watchers_checked, c.watchers_exact), (10, 10), "{c:?}");
    assert_eq!(c.members_at_end, opts.members);
    for s in &r.snapshots {
        assert!(s.entries >= opts.members, "{s:?}");
    }
    assert_eq!(r.storm.watcher_churn_events.median, 2.0 * opts.joins as f64);
    server.shutdown().await;
}
