//! Webhook events of the memory engine on a paused clock, through the `Engine` trait and a
//! recording transport: which transitions are announced, in which order, and that a reload
//! or a second tab inside the grace announces nothing.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::Value;

use super::MemoryEngine;
use crate::config::{AppConfig, Config, WebhookEndpointConfig, EVENT_TYPES};
use crate::conn::{Conn, Outbound};
use crate::engine::{Departure, Engine, Publication, SubscribeRequest, Target};
use crate::ids::{AppId, ChannelName, PeerId};
use crate::webhooks::transport::Transport;
use crate::webhooks::{WebhookMetrics, Webhooks};

const GRACE: Duration = Duration::from_millis(500);
const ROOM: &str = "room-1";

/// Every event POSTed, in order (always answers 200).
#[derive(Default)]
struct Recording(Mutex<Vec<Value>>);

#[async_trait]
impl Transport for Recording {
    async fn post(
        &self,
        _: &str,
        _: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<u16, String> {
        let v: Value = serde_json::from_slice(&body).unwrap();
        self.0
            .lock()
            .unwrap()
            .extend(v["events"].as_array().unwrap().iter().cloned());
        Ok(200)
    }
}

struct Setup {
    engine: MemoryEngine,
    seen: Arc<Recording>,
}

impl Setup {
    fn new(channels: &[&str]) -> Setup {
        let mut config = Config::default();
        config.webhooks.batch_delay_ms = 0;
        config.apps.push(AppConfig {
            id: "app".into(),
            suspended: false,
            max_connections: 0,
            secret_keys: Vec::new(),
            publishable_keys: Vec::new(),
            webhooks: vec![WebhookEndpointConfig {
                url: "http://backend.test/hooks".into(),
                secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                events: EVENT_TYPES.iter().map(|e| e.to_string()).collect(),
                channels: channels.iter().map(|c| c.to_string()).collect(),
            }],
        });
        let seen = Arc::new(Recording::default());
        let hooks = Webhooks::start(&config, seen.clone(), WebhookMetrics::default());
        let engine = MemoryEngine::with_grace(GRACE);
        engine.attach_webhooks(Arc::new(hooks));
        Setup { engine, seen }
    }

    async fn connect(&self, peer: &str) -> (Arc<Conn>, Outbound) {
        let metadata = RawValue::from_string(format!(r#"{{"name":"{peer}"}}"#)).unwrap();
        let (conn, rx) = Conn::new(
            AppId::new("app"),
            PeerId::new(peer),
            Some(Arc::from(metadata)),
            true,
            "token",
            64,
        );
        self.engine.register(&conn).await.unwrap();
        (conn, rx)
    }

    async fn join(&self, peer: &str) -> (Arc<Conn>, Outbound) {
        let (conn, rx) = self.connect(peer).await;
        let room = ChannelName::new(ROOM);
        let req = SubscribeRequest {
            conn: &conn,
            channel: &room,
            target: Target::Channel,
            include_sender_metadata: false,
            ack: None,
            max_app_patterns: usize::MAX,
        };
        assert!(self.engine.subscribe(req).await.unwrap());
        (conn, rx)
    }

    async fn end(&self, conn: &Arc<Conn>, departure: Departure) {
        self.engine
            .disconnect(conn, vec![ChannelName::new(ROOM)], departure)
            .await;
    }

    /// "type peer" of every event delivered since the last call, once delivery has run.
    async fn events(&self) -> Vec<String> {
        settle().await;
        self.seen
            .0
            .lock()
            .unwrap()
            .drain(..)
            .map(|e| {
                let peer = e["peerId"].as_str().unwrap_or("-");
                format!("{} {peer}", e["type"].as_str().unwrap())
            })
            .collect()
    }
}

/// Lets the delivery task run (the clock is paused: no real time passes).
async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_reload_inside_the_grace_announces_nothing_and_a_leave_everything_in_order() {
    let s = Setup::new(&["room-*"]);
    let (a, _rx) = s.join("ann").await;
    assert_eq!(
        s.events().await,
        [
            "peer.online ann",
            "channel.occupied ann",
            "presence.joined ann"
        ]
    );

    // A reload: the socket drops, a new one connects and subscribes inside the grace.
    s.end(&a, Departure::Dropped).await;
    tokio::time::sleep(GRACE / 2).await;
    let (a2, _rx2) = s.join("ann").await;
    tokio::time::sleep(GRACE * 2).await;
    assert!(s.events().await.is_empty(), "a reload is no transition");

    s.end(&a2, Departure::Left).await;
    assert_eq!(
        s.events().await,
        [
            "presence.left ann",
            "channel.vacated ann",
            "peer.offline ann"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn two_tabs_give_one_online_and_one_offline_after_the_grace_of_the_last() {
    let s = Setup::new(&["room-*"]);
    let (tab1, _rx1) = s.join("ann").await;
    let (tab2, _rx2) = s.join("ann").await;
    let (bob, _rx3) = s.join("bob").await;
    assert_eq!(
        s.events().await,
        [
            "peer.online ann",
            "channel.occupied ann",
            "presence.joined ann",
            "peer.online bob",
            "presence.joined bob"
        ]
    );
    s.end(&tab1, Departure::Left).await;
    assert!(s.events().await.is_empty(), "the other tab is still there");

    s.end(&tab2, Departure::Dropped).await;
    // (Reading the events lets 1 ms pass.)
    tokio::time::sleep(GRACE - Duration::from_millis(10)).await;
    assert!(s.events().await.is_empty(), "held for the grace");
    tokio::time::sleep(Duration::from_millis(9)).await;
    assert_eq!(s.events().await, ["presence.left ann", "peer.offline ann"]);

    s.end(&bob, Departure::Dropped).await;
    tokio::time::sleep(GRACE).await;
    assert_eq!(
        s.events().await,
        [
            "presence.left bob",
            "channel.vacated bob",
            "peer.offline bob"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn channel_events_follow_the_endpoint_channels_and_messages_carry_what_was_said() {
    let s = Setup::new(&["room-*"]);
    let (a, _rx) = s.join("ann").await;
    // A connection with no channel in the endpoint's patterns: peer events only.
    let (_other, _rx2) = s.connect("bob").await;
    s.events().await;
    let data = RawValue::from_string(r#"{"text":"hi"}"#.into()).unwrap();
    for channel in [ROOM, "lobby"] {
        s.engine
            .publish(Publication {
                app: &AppId::new("app"),
                channel: &ChannelName::new(channel),
                from: &a.peer_id,
                from_metadata: a.peer_metadata.as_deref(),
                data: &data,
                exclude: Some(&a),
            })
            .await
            .unwrap();
    }
    settle().await;
    let events: Vec<Value> = s.seen.0.lock().unwrap().drain(..).collect();
    assert_eq!(events.len(), 1, "lobby is not the endpoint's: {events:?}");
    let e = &events[0];
    assert_eq!(e["type"], "message.published");
    assert_eq!(e["channel"], ROOM);
    assert_eq!(e["from"], "ann");
    assert_eq!(e["fromMetadata"]["name"], "ann");
    assert_eq!(e["data"]["text"], "hi");
    assert!(e.get("offset").is_none(), "the channel keeps no history");
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_ends_the_roster_for_the_backend() {
    let s = Setup::new(&["**"]);
    let (a, _rx) = s.join("ann").await;
    s.events().await;
    s.end(&a, Departure::Shutdown).await;
    assert_eq!(
        s.events().await,
        [
            "presence.left ann",
            "channel.vacated ann",
            "peer.offline ann"
        ]
    );
}
