//! The hub on its own: delivery rules both engines rely on.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use herald_protocol::glob::Pattern;
use serde_json::value::RawValue;

use super::*;
use crate::close::CloseReason;
use crate::conn::{Conn, Frame, Outbound};
use crate::ids::PeerId;

fn conn(app: &str, peer: &str) -> (Arc<Conn>, Outbound) {
    Conn::new(
        AppId::new(app.to_string()),
        PeerId::new(peer.to_string()),
        None,
        true,
        "publishable",
        64,
    )
}

fn drain(rx: &mut Outbound) -> Vec<String> {
    std::iter::from_fn(|| rx.try_recv())
        .map(|f| f.as_str().to_string())
        .collect()
}

fn key(app: &str, channel: &str) -> ChannelKey {
    (
        AppId::new(app.to_string()),
        ChannelName::new(channel.to_string()),
    )
}

fn data() -> Box<RawValue> {
    RawValue::from_string("{\"n\":1}".into()).unwrap()
}

#[test]
fn a_publication_reaches_each_connection_once_and_never_the_publisher() {
    let hub: Hub<()> = Hub::default();
    let (a, mut a_rx) = conn("app", "a");
    let (b, mut b_rx) = conn("app", "b");
    let (c, mut c_rx) = conn("app", "c");
    let room = key("app", "room/1");
    for conn in [&a, &b] {
        hub.channels
            .with_or_create(&room, |ch| ch.subscribe(conn, false, 0));
    }
    // b and c also listen through a pattern; b must not get the message twice.
    let pattern = Pattern::parse("room/*");
    let name = ChannelName::new("room/*".to_string());
    for conn in [&b, &c] {
        hub.patterns.add(conn, &name, &pattern, false, 100, |_| {});
    }
    let data = data();
    let mut frames = MessageFrames::new("room/1", "a", &data, None);
    assert_eq!(hub.fan_out(&room, &mut frames, Some(a.id), |_| {}), 2);
    assert!(drain(&mut a_rx).is_empty());
    assert_eq!(drain(&mut b_rx).len(), 1);
    assert_eq!(drain(&mut c_rx).len(), 1);

    // A channel nobody subscribes to exactly still reaches pattern subscribers.
    let other = key("app", "room/2");
    let mut frames = MessageFrames::new("room/2", "a", &data, None);
    assert_eq!(hub.fan_out(&other, &mut frames, None, |_| {}), 2);
    // Another app's channel of the same name reaches nobody here.
    let mut frames = MessageFrames::new("room/1", "a", &data, None);
    assert_eq!(
        hub.fan_out(&key("other", "room/1"), &mut frames, None, |_| {}),
        0
    );
}

#[test]
fn sender_metadata_goes_only_to_subscribers_that_asked_and_is_encoded_once_per_variant() {
    let hub: Hub<()> = Hub::default();
    let (plain, mut plain_rx) = conn("app", "p");
    let (rich, mut rich_rx) = conn("app", "r");
    let (rich2, mut rich2_rx) = conn("app", "r2");
    let room = key("app", "room");
    hub.channels.with_or_create(&room, |ch| {
        ch.subscribe(&plain, false, 0);
        ch.subscribe(&rich, true, 0);
        ch.subscribe(&rich2, true, 0);
    });
    let data = data();
    let meta = RawValue::from_string("{\"name\":\"Ann\"}".into()).unwrap();
    let mut frames = MessageFrames::new("room", "x", &data, Some(&meta));
    hub.fan_out(&room, &mut frames, None, |_| {});
    let plain_frame = drain(&mut plain_rx).remove(0);
    let rich_frame = drain(&mut rich_rx).remove(0);
    assert!(!plain_frame.contains("fromMetadata"));
    assert!(rich_frame.contains("fromMetadata"));
    assert_eq!(drain(&mut rich2_rx), vec![rich_frame]);
    // Both receivers of the rich variant share one buffer.
    let (a, b): (Frame, Frame) = (frames.get(true), frames.get(true));
    assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr());
}

#[test]
fn an_idle_channel_is_dropped_and_a_late_holder_starts_over() {
    let hub: Hub<u32> = Hub::default();
    let room = key("app", "room");
    let (a, _a_rx) = conn("app", "a");
    hub.channels.with_or_create(&room, |ch| {
        ch.subscribe(&a, false, 0);
        ch.slot = 7;
    });
    // A channel with a subscriber stays, whatever the engine says.
    hub.channels.remove_if_idle(&room, |_| true);
    assert_eq!(hub.channels.with(&room, |ch| ch.slot), Some(7));
    hub.channels.with(&room, |ch| ch.unsubscribe(a.id));
    // The engine keeps it while its slot holds something.
    hub.channels.remove_if_idle(&room, |slot| *slot == 0);
    assert!(hub.channels.with(&room, |_| ()).is_some());
    hub.channels.remove_if_idle(&room, |_| true);
    assert!(hub.channels.with(&room, |_| ()).is_none());
    // Created afresh on the next subscribe.
    assert_eq!(hub.channels.with_or_create(&room, |ch| ch.slot), 0);
}

#[test]
fn directs_reach_every_connection_of_the_peer_but_the_sender_and_encode_only_when_needed() {
    let hub: Hub<()> = Hub::default();
    let (a1, mut a1_rx) = conn("app", "a");
    let (a2, mut a2_rx) = conn("app", "a");
    hub.peers.register(&a1);
    hub.peers.register(&a2);
    let app = AppId::new("app".to_string());
    let peer = PeerId::new("a".to_string());
    let frame = || Frame::from("{\"type\":\"direct\"}".to_string());
    assert_eq!(hub.peers.deliver_direct(&app, &peer, Some(a1.id), frame), 1);
    assert!(drain(&mut a1_rx).is_empty());
    assert_eq!(drain(&mut a2_rx).len(), 1);

    hub.peers.unregister(&a2);
    let mut encoded = false;
    let n = hub.peers.deliver_direct(&app, &peer, Some(a1.id), || {
        encoded = true;
        frame()
    });
    assert_eq!((n, encoded), (0, false), "nobody to reach, nothing encoded");

    assert_eq!(
        hub.peers.close(&app, &peer, CloseReason::ADMIN_DISCONNECT),
        1
    );
    assert!(a1.close_requested().is_some());
    hub.peers.unregister(&a1);
    assert!(hub.peers.connections_of(&app, &peer).is_empty());
}

#[test]
fn operator_views_list_channels_patterns_and_connections_sorted() {
    let hub: Hub<()> = Hub::default();
    let (a, _a_rx) = conn("app", "a");
    let (b, _b_rx) = conn("app", "b");
    let (other, _o_rx) = conn("other", "a");
    for c in [&a, &b, &other] {
        hub.peers.register(c);
    }
    for (c, name) in [
        (&a, "zeta"),
        (&a, "alpha"),
        (&b, "alpha"),
        (&other, "alpha"),
    ] {
        hub.channels
            .with_or_create(&key(c.app.as_str(), name), |ch| ch.subscribe(c, false, 0));
    }
    let name = ChannelName::new("room/*".to_string());
    hub.patterns
        .add(&b, &name, &Pattern::parse("room/*"), false, 10, |_| {});
    let app = AppId::new("app".to_string());
    let channels = hub.channel_summaries(&app, |ch| ch.subscriber_count());
    let listed: Vec<(&str, usize)> = channels
        .iter()
        .map(|c| (c.channel.as_str(), c.subscribers))
        .collect();
    assert_eq!(listed, vec![("alpha", 2), ("room/*", 1), ("zeta", 1)]);
    let conns = hub.connection_summaries(&app, None);
    assert_eq!(conns.len(), 2);
    assert_eq!(conns[0].0.id, a.id.min(b.id));
    let of_b = hub.connection_summaries(&app, Some(&b.peer_id));
    let names: Vec<&str> = of_b[0].1.iter().map(ChannelName::as_str).collect();
    assert_eq!(names, vec!["alpha", "room/*"]);
    assert_eq!(hub.channel_count(), 3, "alpha in two apps, zeta");
}
