//! Official JS SDK clients on different nodes of a Redis-backed cluster (single Redis, and Redis
//! Cluster) chat, see each other's presence and direct-message each other
//! (`tests/compat/js/cluster_mixed.mjs`).
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use herald_testkit::cluster::Cluster;
use herald_testkit::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_js_clients_on_different_nodes() {
    mixed_scenario(Cluster::redis(2).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_js_clients_on_different_nodes_of_a_redis_cluster() {
    mixed_scenario(Cluster::redis_cluster(2).await).await;
}

async fn mixed_scenario(cluster: Cluster) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    assert!(
        root.join("tests/compat/js/node_modules/@metered-ca/realtime")
            .exists(),
        "the official JS SDK is not installed: run tests/compat/install.sh"
    );
    let child = tokio::process::Command::new("node")
        .arg("tests/compat/js/cluster_mixed.mjs")
        .current_dir(&root)
        .env("HERALD_URL", cluster.node(0).origin())
        .env("HERALD_URL_B", cluster.node(1).origin())
        .env("HERALD_APP", APP)
        .env("HERALD_SK_ID", SK_ID)
        .env("HERALD_SK_SECRET", SK_SECRET)
        .env("HERALD_PK", PK)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("scenario did not finish in 60 s")
        .unwrap();
    assert!(
        out.status.success(),
        "scenario failed: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
