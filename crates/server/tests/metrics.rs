//! `/metrics` is valid OpenMetrics (checked by the official Prometheus client's strict parser)
//! and its counters move by exactly the right amounts under a scripted session.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use herald_testkit::prelude::*;
use serde_json::json;

fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Scrapes `/metrics` and parses it with `tests/compat/py/parse_metrics.py`.
async fn scrape(server: &TestServer) -> BTreeMap<String, f64> {
    let resp = reqwest::get(format!("http://{}/metrics", server.addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = resp.text().await.unwrap();
    let python = workspace().join("tests/compat/py/.venv/bin/python");
    assert!(
        python.exists(),
        "missing {}: run tests/compat/install.sh",
        python.display()
    );
    let mut child = Command::new(python)
        .arg(workspace().join("tests/compat/py/parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "invalid exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, key: &str) -> f64 {
    let a = after
        .get(key)
        .copied()
        .unwrap_or_else(|| panic!("no sample {key} in {after:?}"));
    a - before.get(key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn counters_follow_a_scripted_session() {
    let mut config = test_config();
    config.limits.rate_burst = 40.0;
    config.limits.rate_per_second = 1.0;
    let server = TestServer::start_with(config).await;
    let before = scrape(&server).await;

    let mut a = server.client_with_meta("a", r#"{"username":"A"}"#).await;
    let mut b = server.client("b").await;
    a.subscribe("room").await;
    b.subscribe("room").await;
    a.recv().await; // b joined
    for i in 0..3 {
        a.request(
            json!({"type": "publish", "channel": "room", "data": i}),
            &format!("p{i}"),
        )
        .await;
        b.recv().await;
    }
    a.request(json!({"type": "send", "to": "b", "data": 1}), "s1")
        .await;
    b.recv().await;
    let err = a
        .request(json!({"type": "send", "to": "nobody", "data": 1}), "s2")
        .await;
    assert_eq!(err["code"], "peer_not_found");
    a.send_text("garbage").await;
    assert_eq!(a.recv().await["code"], "malformed_message");
    a.send_json(json!({"type": "ping"})).await;
    a.recv().await;

    // A third connection floods and is closed with 4011.
    let mut flooder = Client::connect(&server.url(&format!("key={PK}"))).await;
    flooder.recv().await;
    for _ in 0..45 {
        flooder
            .send_json(json!({"type": "unsubscribe", "channel": "x"}))
            .await;
    }
    assert_eq!(flooder.recv_close().await.0, 4011);

    // The metrics scrape races the flooder's teardown; wait until its gauge is gone.
    let mut after = scrape(&server).await;
    for _ in 0..50 {
        if after.get("herald_connections{app=app_test,kind=publishable}") == Some(&0.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        after = scrape(&server).await;
    }

    let d = |key: &str| delta(&before, &after, key);
    assert_eq!(d("herald_messages_in_total{type=subscribe}"), 2.0);
    assert_eq!(d("herald_messages_in_total{type=publish}"), 3.0);
    assert_eq!(d("herald_messages_in_total{type=send}"), 2.0);
    assert_eq!(d("herald_messages_in_total{type=ping}"), 1.0);
    assert_eq!(d("herald_messages_in_total{type=invalid}"), 1.0);
    // 40 fit the bucket; the 41st closes the connection and nothing after it is read.
    assert_eq!(d("herald_messages_in_total{type=unsubscribe}"), 41.0);
    assert_eq!(d("herald_messages_out_total{type=welcome}"), 3.0);
    assert_eq!(d("herald_messages_out_total{type=message}"), 3.0);
    assert_eq!(d("herald_messages_out_total{type=direct}"), 1.0);
    assert_eq!(d("herald_messages_out_total{type=pong}"), 1.0);
    // 2 snapshots + 1 joined delta.
    assert_eq!(d("herald_messages_out_total{type=presence}"), 3.0);
    assert_eq!(d("herald_errors_total{code=peer_not_found}"), 1.0);
    assert_eq!(d("herald_errors_total{code=malformed_message}"), 1.0);
    assert_eq!(d("herald_closes_total{code=4011}"), 1.0);
    assert_eq!(d("herald_rate_limited_total{limit=message_rate}"), 1.0);
    assert_eq!(d("herald_slow_consumer_disconnects_total{}"), 0.0);
    assert_eq!(d("herald_fanout_seconds_count{}"), 3.0);
    assert_eq!(after["herald_connections{app=app_test,kind=token}"], 2.0);
    assert_eq!(after["herald_subscriptions{}"], 2.0);
    assert_eq!(after["herald_channels{}"], 1.0);
    server.shutdown().await;
}

#[tokio::test]
async fn auth_refusals_and_quota_closes_are_counted() {
    let mut config = test_config();
    config.limits.max_connections = 1;
    let server = TestServer::start_with(config).await;
    let before = scrape(&server).await;
    let mut bad = Client::connect(&server.url("key=pk_live_unknown")).await;
    assert_eq!(bad.recv_close().await.0, 4001);
    let _first = server.client("a").await;
    let mut second = Client::connect(&server.token_url(&token("b"))).await;
    assert_eq!(second.recv_close().await.0, 4010);
    let after = scrape(&server).await;
    assert_eq!(
        delta(&before, &after, "herald_closes_total{code=4001}"),
        1.0
    );
    assert_eq!(
        delta(&before, &after, "herald_closes_total{code=4010}"),
        1.0
    );
}
