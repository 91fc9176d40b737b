//! Lossless reconnect on the memory engine, through the `Engine` trait: a resuming subscribe
//! meets live messages with no gap and no duplicate while others publish, and directs to a
//! parked peer wait for its next registration.

use std::sync::Arc;
use std::time::Duration;

use herald_server::engine::memory::{MemoryEngine, MemorySettings};
use herald_server::engine::{Direct, Engine, SubscribeRequest, Target};
use herald_server::history::History;
use herald_server::ids::{AppId, ChannelName, PeerId};
use herald_server::resume::book::Queued;
use herald_server::resume::{Recovery, ResumeFrom, ResumeSettings, Since};
use serde_json::json;
use serde_json::value::RawValue;

use crate::harness::{connect, ClientSpec, Nodes, APP};
use crate::history::rooms;

const ROOM: &str = "room/1";

/// A memory engine with `room/*` history (rewind 20, so a rewind would show) and resume on.
pub fn nodes() -> Nodes {
    let engine = MemoryEngine::with_settings(MemorySettings {
        history: History::from_config(&rooms(20, 1000)),
        resume: ResumeSettings {
            window: Duration::from_secs(30),
            inbox_ttl: Duration::from_secs(30),
            inbox_max_messages: 10,
            inbox_max_bytes: 64 * 1024,
            max_replay: 1000,
            confirm_after: Duration::from_secs(1),
        },
        ..MemorySettings::default()
    });
    let engine: Arc<dyn Engine> = Arc::new(engine);
    Nodes::from_engines(vec![engine])
}

/// Subscribers resuming from "before any history" while four publishers run get every offset
/// from 1 to the last, consecutively: the replay and the live messages meet exactly, with no
/// rewind in between.
pub async fn a_resume_meets_live_messages_with_no_gap_and_no_duplicate(nodes: Nodes) {
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 150;
    let engine = nodes.engine();
    let started = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let engine = engine.clone();
        let started = started.clone();
        tasks.push(tokio::spawn(async move {
            let publisher = connect(&engine, &format!("pub{p}")).await;
            for i in 1..=EACH {
                publisher
                    .publish(ROOM, &format!("{{\"p\":{p},\"i\":{i}}}"), None)
                    .await;
                if p == 0 && i == 20 {
                    started.notify_one();
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    started.notified().await;
    let mut subscribers = Vec::new();
    let channel = ChannelName::new(ROOM.to_string());
    for s in 0..8 {
        let client = ClientSpec::new(&format!("sub{s}"))
            .without_presence()
            .connect(&engine)
            .await;
        let request = SubscribeRequest {
            conn: &client.conn,
            channel: &channel,
            target: Target::Channel,
            include_sender_metadata: false,
            ack: None,
            max_app_patterns: usize::MAX,
        };
        let from = ResumeFrom {
            since: Since {
                epoch: None,
                offset: 0,
            },
            acks: None,
            max_replay: 1000,
        };
        let (is_new, recovery) = engine.subscribe_from(request, from).await.unwrap();
        assert!(is_new);
        assert!(
            matches!(recovery, Recovery::Recovered { .. }),
            "{recovery:?}"
        );
        subscribers.push(client);
        tokio::task::yield_now().await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    for client in &mut subscribers {
        for want in 1..=PUBLISHERS * EACH {
            let frame = client.next().await;
            assert_eq!(frame["offset"], json!(want), "{}: {frame}", client.peer());
        }
        client.expect_nothing_queued();
    }
}

/// A direct to a parked peer is queued (not lost, not `peer_not_found`) and is the first
/// thing its next connection gets, in order; after a deliberate leave nothing is parked.
pub async fn directs_wait_for_a_parked_peer(nodes: Nodes) {
    let engine = nodes.engine();
    let sender = connect(&engine, "bob").await;
    let alice = connect(&engine, "alice").await;
    engine.park(&alice.conn, Vec::new()).await;
    let (app, to) = (
        AppId::new(APP.to_string()),
        PeerId::new("alice".to_string()),
    );
    let from = PeerId::new("bob".to_string());
    for n in 1..=2 {
        let data = RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap();
        let direct = Direct {
            app: &app,
            to: &to,
            from: &from,
            from_metadata: None,
            data: &data,
            exclude: Some(&sender.conn),
        };
        assert_eq!(
            engine.send_direct(direct).await.unwrap(),
            0,
            "parked: not live"
        );
        assert_eq!(engine.queue_direct(direct).await.unwrap(), Queued::Queued);
    }
    assert_eq!(engine.resume_stats().inbox_directs, 2);
    let mut back = connect(&engine, "alice").await;
    for n in 1..=2 {
        back.expect(json!({"type": "direct", "from": "bob", "data": {"n": n}}))
            .await;
    }
    back.expect_nothing_queued();
    assert_eq!(engine.resume_stats().inbox_directs, 0);
}
