//! A few-second soak against an in-process Herald (bench/herald.toml on 127.0.0.1:0), so the
//! soak cannot rot: every check must find every roster right and every delivery to a stable
//! peer accounted for. It makes no timing or memory assertions (the server shares this
//! process); scripts/soak measures those against real server processes.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use herald_bench::soak::{self, SoakOpts, SoakTarget};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_finds_every_roster_right() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/herald.toml");
    let config =
        herald_server::config::Config::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(herald_server::run(listener, config, async move {
        let _ = stopped.await;
    }));
    let target = SoakTarget {
        addrs: vec![addr],
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
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
