//! Hostile wildcard subscriptions: an attacker holding a publishable key crafts as many costly
//! patterns as the caps let it, publishes to channels that look like matches, and disconnects
//! all at once; or floods subscribes whose scope check is expensive. Everyone else must keep
//! their latency, and the caps must refuse with the spec's error frames.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use herald_testkit::prelude::*;
use serde_json::{json, Value};

const PK_FLEET: &str = "pk_live_fleet";
/// Generous for a loaded 2-core machine, far below the seconds the attack used to cost.
const RESPONSIVE: Duration = Duration::from_millis(500);

fn config() -> herald_server::config::Config {
    let mut config = test_config();
    let mut fleet = config.apps[0].publishable_keys[0].clone();
    fleet.id = PK_FLEET.into();
    fleet.channel_patterns = vec!["fleet/*/telemetry".into(), "fleet/*/status".into()];
    config.apps[0].publishable_keys.push(fleet);
    config
}

/// A long, floating pattern with the most wildcards allowed (8): it cannot be filed under a
/// literal segment, so every publish of the app must inspect it.
fn crafted(id: usize) -> String {
    format!(
        "**{id}*{}/**{}**{}*/*x*a*",
        "a".repeat(70),
        "b".repeat(70),
        "c".repeat(40)
    )
}

/// A channel that passes the cheap prefilters of the crafted patterns but matches none.
fn lookalike(i: usize) -> String {
    format!(
        "{i}{}/{}{}/x",
        "a".repeat(80),
        "b".repeat(80),
        "c".repeat(50)
    )
}

async fn healthz_latency(server: &TestServer) -> Duration {
    let started = Instant::now();
    let response = reqwest::get(format!("http://{}/healthz", server.addr))
        .await
        .unwrap();
    assert!(response.status().is_success());
    started.elapsed()
}

/// An unrelated publish → receive round trip.
async fn round_trip(publisher: &mut Client, subscriber: &mut Client, n: usize) -> Duration {
    let started = Instant::now();
    publisher
        .publish("chat/room-1", json!({ "n": n }), &format!("rt-{n}"))
        .await;
    let message = subscriber.recv_within(RESPONSIVE * 4).await;
    assert_eq!(message["data"]["n"], n, "{message}");
    started.elapsed()
}

/// Reads frames until `count` acks or errors arrived (presence snapshots are skipped).
async fn outcomes(client: &mut Client, count: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < count {
        let frame = client.recv_within(Duration::from_secs(20)).await;
        if frame["type"] != "presence" {
            out.push(frame);
        }
    }
    out
}

fn code(frame: &Value) -> &str {
    if frame["type"] == "ack" {
        "ack"
    } else {
        frame["code"].as_str().unwrap_or("?")
    }
}

async fn assert_responsive(
    server: &TestServer,
    publisher: &mut Client,
    sub: &mut Client,
    n: usize,
) {
    assert_responsive_within(server, publisher, sub, n, RESPONSIVE).await;
}

async fn assert_responsive_within(
    server: &TestServer,
    publisher: &mut Client,
    sub: &mut Client,
    n: usize,
    bound: Duration,
) {
    let health = healthz_latency(server).await;
    assert!(health < bound, "/healthz took {health:?}");
    let trip = round_trip(publisher, sub, n).await;
    assert!(trip < bound, "round trip took {trip:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_wildcards_cost_the_node_little_and_are_capped() {
    let config = config();
    let per_conn = config.limits.max_wildcard_subscriptions_per_connection;
    let per_app = config.limits.max_wildcard_patterns_per_app;
    let server = TestServer::start_with(config).await;
    let mut victim = server.client("victim").await;
    victim.subscribe("chat/room-1").await;
    let mut victim_pub = server.client("victim-pub").await;

    // Enough attackers that the per-app cap bites, each trying more than its own cap.
    let attackers_n = per_app / per_conn + 8;
    let tries = per_conn + 4;
    let mut attackers = Vec::new();
    for _ in 0..attackers_n {
        attackers.push(server.pk_client(PK).await.0);
    }
    let mut next_id = 0;
    for attacker in &mut attackers {
        for t in 0..tries {
            let channel = crafted(next_id);
            next_id += 1;
            let frame =
                json!({"type": "subscribe", "channel": channel, "requestId": format!("s{t}")});
            attacker.send_json(frame).await;
        }
        // One more wildcard than allowed: refused as an invalid channel before any scope check.
        let too_complex = "*a".repeat(herald_protocol::glob::MAX_WILDCARDS + 1);
        attacker
            .send_json(json!({"type": "subscribe", "channel": too_complex, "requestId": "x"}))
            .await;
    }
    let (mut accepted, mut capped, mut invalid) = (0, 0, 0);
    for attacker in &mut attackers {
        for frame in outcomes(attacker, tries + 1).await {
            match code(&frame) {
                "ack" => accepted += 1,
                "channel_limit_exceeded" => capped += 1,
                "invalid_channel" => invalid += 1,
                other => panic!("unexpected {other}: {frame}"),
            }
        }
    }
    assert_eq!(
        accepted, per_app,
        "the app holds exactly its cap of distinct patterns"
    );
    assert_eq!(capped, attackers_n * tries - per_app);
    assert_eq!(invalid, attackers_n);
    assert_responsive(&server, &mut victim_pub, &mut victim, 0).await;

    // Every attacker publishes to lookalike channels while others measure their latency.
    for (i, attacker) in attackers.iter_mut().enumerate() {
        for k in 0..3 {
            let frame = json!({"type": "publish", "channel": lookalike(i * 3 + k), "data": 1});
            attacker.send_json(frame).await;
        }
    }
    for n in 1..=5 {
        assert_responsive(&server, &mut victim_pub, &mut victim, n).await;
    }

    // All attackers leave at once: removal must not stall the node either.
    for attacker in attackers {
        attacker.close().await;
    }
    for n in 6..=10 {
        assert_responsive(&server, &mut victim_pub, &mut victim, n).await;
    }
    // Their patterns are gone: a newcomer may file new ones.
    let (mut newcomer, _) = server.pk_client(PK).await;
    let started = Instant::now();
    loop {
        let reply = newcomer
            .request(
                json!({"type": "subscribe", "channel": crafted(usize::MAX)}),
                "late",
            )
            .await;
        if reply["type"] == "ack" {
            break;
        }
        assert_eq!(code(&reply), "channel_limit_exceeded", "{reply}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "patterns never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costly_scope_checks_are_refused_quickly() {
    let server = TestServer::start_with(config()).await;
    let mut victim = server.client("victim").await;
    victim.subscribe("chat/room-1").await;
    let mut victim_pub = server.client("victim-pub").await;

    // Many distinct literal characters and wildcards within one segment: the subset
    // construction against `fleet/*/telemetry` is expensive, so it is cut off (fail closed).
    let alphabet: Vec<char> = (0..100u32)
        .filter_map(|i| char::from_u32(0x100 + i))
        .collect();
    let frames_per_conn = 100;
    let mut attackers = Vec::new();
    for c in 0..2 {
        let (mut attacker, _) = server.pk_client(PK_FLEET).await;
        for i in 0..frames_per_conn {
            let body: String = alphabet.iter().cycle().skip(i + c).take(60).collect();
            let channel = if i % 2 == 0 {
                format!("fleet/*{body}*a*b*c*d*e*/telemetry")
            } else {
                format!(
                    "fleet/{}/telemetry",
                    "*a".repeat(herald_protocol::glob::MAX_WILDCARDS + 1)
                )
            };
            attacker
                .send_json(
                    json!({"type": "subscribe", "channel": channel, "requestId": format!("{i}")}),
                )
                .await;
        }
        attackers.push(attacker);
    }
    // Each refused check is cut off at about 1 ms of CPU in a release build (tests run
    // unoptimised, about ten times slower), and the search work is charged to the attacker's
    // own rate bucket, so the node stays responsive while the attackers pay.
    for n in 0..5 {
        assert_responsive_within(&server, &mut victim_pub, &mut victim, n, RESPONSIVE).await;
    }
    for attacker in &mut attackers {
        let (close, replies) = attacker.recv_close().await;
        assert_eq!(
            close, 4011,
            "a connection that forces costly scope searches runs out of rate budget"
        );
        assert!(
            replies.len() < frames_per_conn,
            "it is closed before all its crafted frames were searched ({} replies)",
            replies.len()
        );
        for frame in replies.iter().filter(|f| f["type"] != "presence") {
            let code = code(frame);
            assert!(
                [
                    "ack",
                    "channel_not_authorized",
                    "invalid_channel",
                    "channel_limit_exceeded"
                ]
                .contains(&code),
                "{frame}"
            );
        }
    }
    assert_responsive(&server, &mut victim_pub, &mut victim, 5).await;
    // Honest patterns within the scope still pass.
    let (mut honest, _) = server.pk_client(PK_FLEET).await;
    honest.subscribe("fleet/*/telemetry").await;
    honest.subscribe("fleet/sensor-*/status").await;
    let reply = honest
        .request(json!({"type": "subscribe", "channel": "fleet/**"}), "wide")
        .await;
    assert_error(&reply, "channel_not_authorized", Some("wide"));
    server.shutdown().await;
}
