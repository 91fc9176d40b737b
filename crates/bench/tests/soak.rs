//! A few-second soak against an in-process Herald (bench/herald.toml on 127.0.0.1:0), so the
//! soak cannot rot: every check must find every roster right and every delivery to a stable
//! peer accounted for. It makes no timing or memory assertions (the server shares this
//! process); scripts/soak measures those against real server processes.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use herald_bench::soak::{self, SoakOpts, SoakTarget};
use herald_testkit::config::load_toml;
use herald_testkit::server::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_finds_every_roster_right() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/herald.toml");
    let server = TestServer::start_with(load_toml(path)).await;
    let target = SoakTarget {
        addrs: vec![server.addr],
        key: "pk_bench".into(),
        quiet_key: "pk_bench_quiet".into(),
        procs: Vec::new(),
    };
    let report = soak::run(&target, &SoakOpts::smoke()).await.unwrap();
    let summary = report.render();
    println!("{summary}");
    assert!(report.checks >= 3, "{summary}");
    assert!(report.rosters_compared > 0, "{summary}");
    assert_eq!(report.wrong_rosters, 0, "{summary}");
    assert_eq!(report.presence_anomalies, 0, "{summary}");
    assert!(
        report.room_publishes > 0 && report.directs_sent > 0,
        "{summary}"
    );
    assert!(report.passed(), "{summary}");
    assert!(summary.contains("wrong rosters: 0 "), "{summary}");
    server.shutdown().await;
}
