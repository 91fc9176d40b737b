//! The Peer's reaction to what its client observes, fed event by event without a socket:
//! lifecycle, roster deltas, the post-reconnect reconcile as the application and the
//! [`SignalHandler`] see it, the roster gate on directs, and the terminal close.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use serde_json::json;

use super::*;
use crate::options::SignallingClientOptions;
use crate::types::{ChannelMessage, DirectMessage, PresenceEvent, PresencePeer};

/// Records every hook call as (hook, peer id).
#[derive(Default)]
struct Recorder(Mutex<Vec<(&'static str, String)>>);

impl Recorder {
    fn take(&self) -> Vec<(&'static str, String)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl SignalHandler for Recorder {
    fn peer_joined(&self, remote: &RemotePeer) {
        self.0
            .lock()
            .unwrap()
            .push(("joined", remote.peer_id().into()));
    }
    fn peer_left(&self, remote: &RemotePeer) {
        self.0
            .lock()
            .unwrap()
            .push(("left", remote.peer_id().into()));
    }
    fn connection_reset(&self, remote: &RemotePeer) {
        self.0
            .lock()
            .unwrap()
            .push(("reset", remote.peer_id().into()));
    }
    fn signal(&self, remote: &RemotePeer, _signal: Signal) {
        self.0
            .lock()
            .unwrap()
            .push(("signal", remote.peer_id().into()));
    }
}

fn hook(kind: &'static str, id: &str) -> (&'static str, String) {
    (kind, id.to_owned())
}

/// A peer in `room` as `join` leaves it, with a recording handler. Its client never connects.
fn joined_peer() -> (Peer, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let options =
        PeerOptions::new(SignallingClientOptions::api_key("pk_test").with_url("ws://127.0.0.1:1"))
            .with_signal_handler(recorder.clone());
    let peer = Peer::new(options).unwrap();
    {
        let mut shared = lock(&peer.inner.shared);
        shared.phase = PeerState::Joined;
        shared.channel = Some("room".into());
    }
    (peer, recorder)
}

fn entry(id: &str) -> PresencePeer {
    PresencePeer {
        peer_id: id.into(),
        metadata: None,
    }
}

fn presence(channel: &str, joined: &[&str], left: &[&str]) -> PresenceEvent {
    PresenceEvent {
        channel: channel.into(),
        joined: joined.iter().map(|id| entry(id)).collect(),
        left: left.iter().map(|id| entry(id)).collect(),
    }
}

fn drop_connection(peer: &Peer, code: u16, will_reconnect: bool) {
    peer.inner.on_event(Observed::Disconnected {
        code,
        reason: "gone",
        will_reconnect,
    });
}

fn ids(peer: &Peer) -> Vec<String> {
    peer.remote_peers()
        .iter()
        .map(|r| r.peer_id().to_owned())
        .collect()
}

fn drain<T>(stream: &mut EventStream<T>) -> Vec<T> {
    std::iter::from_fn(|| stream.try_recv()).collect()
}

#[tokio::test]
async fn presence_fills_and_empties_the_roster() {
    let (peer, hooks) = joined_peer();
    let mut joined = peer.peer_joined();
    let mut left = peer.peer_left();
    peer.inner
        .on_event(Observed::Presence(&presence("room", &["a", "b"], &[])));
    peer.inner
        .on_event(Observed::Presence(&presence("room", &["c"], &["a", "zed"])));
    // Another channel of the same client is not this peer's business.
    peer.inner
        .on_event(Observed::Presence(&presence("elsewhere", &["x"], &["b"])));
    assert_eq!(ids(&peer), ["b", "c"]);
    let joined: Vec<String> = drain(&mut joined)
        .iter()
        .map(|r| r.peer_id().to_owned())
        .collect();
    assert_eq!(joined, ["a", "b", "c"]);
    let left = drain(&mut left);
    assert_eq!(left.len(), 1);
    assert!(!left[0].is_present());
    assert_eq!(
        hooks.take(),
        [
            hook("joined", "a"),
            hook("joined", "b"),
            hook("joined", "c"),
            hook("left", "a")
        ],
        "the handler hears of a remote before the stream does, and only once"
    );
}

#[tokio::test]
async fn presence_before_join_or_after_leave_is_ignored() {
    let (peer, _hooks) = joined_peer();
    lock(&peer.inner.shared).phase = PeerState::Idle;
    peer.inner
        .on_event(Observed::Presence(&presence("room", &["a"], &[])));
    assert!(peer.remote_peers().is_empty());
}

#[tokio::test]
async fn a_reconnect_reconciles_the_roster_from_the_next_snapshot() {
    let (peer, hooks) = joined_peer();
    let mut states = peer.states();
    peer.inner
        .on_event(Observed::Presence(&presence("room", &["a", "b"], &[])));
    let b = peer.remote_peer("b").unwrap();
    hooks.take();

    drop_connection(&peer, 1006, true);
    assert_eq!(peer.state(), PeerState::Reconnecting);
    assert_eq!(ids(&peer), ["a", "b"], "the roster is kept over the drop");
    peer.inner
        .on_event(Observed::Connected { is_reconnect: true });
    assert_eq!(peer.state(), PeerState::Reconnecting, "until the snapshot");
    peer.inner
        .on_event(Observed::Presence(&presence("room", &["b", "d"], &[])));
    assert_eq!(peer.state(), PeerState::Joined);
    assert_eq!(ids(&peer), ["b", "d"]);
    assert_eq!(
        peer.remote_peer("b").unwrap(),
        b,
        "a survivor keeps its handle"
    );
    assert_eq!(
        hooks.take(),
        [hook("left", "a"), hook("reset", "b"), hook("joined", "d")]
    );
    assert_eq!(
        drain(&mut states),
        [PeerState::Reconnecting, PeerState::Joined]
    );
    // The next presence is a delta again.
    peer.inner
        .on_event(Observed::Presence(&presence("room", &["e"], &[])));
    assert_eq!(ids(&peer), ["b", "d", "e"]);
}

#[tokio::test]
async fn a_reconnect_with_an_empty_roster_has_nothing_to_reconcile() {
    let (peer, hooks) = joined_peer();
    drop_connection(&peer, 1006, true);
    peer.inner
        .on_event(Observed::Connected { is_reconnect: true });
    assert_eq!(peer.state(), PeerState::Joined);
    peer.inner
        .on_event(Observed::Presence(&presence("room", &["a"], &[])));
    assert_eq!(hooks.take(), [hook("joined", "a")]);
}

#[tokio::test]
async fn a_terminal_close_empties_the_roster_reports_and_ends_the_streams() {
    let (peer, hooks) = joined_peer();
    let mut errors = peer.errors();
    let mut joined = peer.peer_joined();
    peer.inner
        .on_event(Observed::Presence(&presence("room", &["a"], &[])));
    hooks.take();
    drop_connection(&peer, 4020, false);
    assert_eq!(peer.state(), PeerState::Closed);
    assert_eq!(peer.channel(), None);
    assert!(peer.remote_peers().is_empty());
    assert_eq!(hooks.take(), [hook("left", "a")]);
    assert_eq!(
        errors.recv().await,
        Some(PeerError::Closed {
            code: 4020,
            reason: "gone".into()
        })
    );
    assert_eq!(errors.recv().await, None, "the stream ended");
    assert_eq!(
        joined.recv().await.map(|r| r.peer_id().to_owned()),
        Some("a".into())
    );
    assert!(joined.recv().await.is_none());
}

#[tokio::test]
async fn only_roster_members_may_send_directs_and_signals_go_to_the_handler() {
    let (peer, hooks) = joined_peer();
    let mut data = peer.data();
    peer.inner
        .on_event(Observed::Presence(&presence("room", &["a"], &[])));
    hooks.take();
    let direct = |from: &str, data: serde_json::Value| DirectMessage {
        from: from.into(),
        from_metadata: None,
        data,
    };
    peer.inner
        .on_event(Observed::Direct(&direct("stranger", json!({"hi": 1}))));
    peer.inner
        .on_event(Observed::Direct(&direct("a", json!({"hi": 2}))));
    let ice = Signal::Ice(None).to_data();
    peer.inner.on_event(Observed::Direct(&direct("a", ice)));
    peer.inner.on_event(Observed::Message(&ChannelMessage {
        channel: "room".into(),
        from: "stranger".into(),
        from_metadata: None,
        data: json!("broadcast"),
        id: None,
        offset: None,
        epoch: None,
        ts: None,
    }));
    let got = drain(&mut data);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (got[0].kind, got[0].data.clone()),
        (DataKind::Direct, json!({"hi": 2}))
    );
    assert_eq!(got[0].remote, peer.remote_peer("a"));
    assert_eq!(got[1].kind, DataKind::Broadcast);
    assert_eq!(
        got[1].remote, None,
        "broadcasts come from anyone in the channel"
    );
    assert_eq!(hooks.take(), [hook("signal", "a")]);
}

/// Makes the peer's client look connected on a connection whose outbound queue the test
/// reads, so requests the peer makes show up as frames.
fn fake_connection(peer: &Peer) -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut shared = lock(&peer.inner.client.inner.shared);
    shared.state = ConnectionState::Connected;
    shared.conn = Some(crate::shared::LiveConn { id: 1, tx });
    rx
}

/// Lets spawned tasks run up to their next wait; the paused clock stays where it is.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

fn subscribes(frames: &mut tokio::sync::mpsc::Receiver<String>) -> usize {
    let mut count = 0;
    while let Ok(frame) = frames.try_recv() {
        let frame: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            (&frame["type"], &frame["channel"]),
            (&json!("subscribe"), &json!("room"))
        );
        count += 1;
    }
    count
}

/// Reconnects a peer whose roster holds `a`, with a 10 s reconcile timeout.
async fn reconnected_with_a_roster() -> (Peer, tokio::sync::mpsc::Receiver<String>) {
    let (peer, _hooks) = joined_peer();
    peer.inner
        .on_event(Observed::Presence(&presence("room", &["a"], &[])));
    drop_connection(&peer, 1006, true);
    let frames = fake_connection(&peer);
    peer.inner
        .on_event(Observed::Connected { is_reconnect: true });
    settle().await;
    (peer, frames)
}

#[tokio::test(start_paused = true)]
async fn a_missing_snapshot_is_asked_for_twice_then_reported() {
    let (peer, mut frames) = reconnected_with_a_roster().await;
    let mut errors = peer.errors();
    let second = Duration::from_secs(1);
    let milli = Duration::from_millis(1);
    for round in 1..=2 {
        tokio::time::advance(second * 10 - milli).await;
        settle().await;
        assert_eq!(subscribes(&mut frames), 0, "round {round}: not before 10 s");
        tokio::time::advance(milli).await;
        settle().await;
        assert_eq!(
            subscribes(&mut frames),
            1,
            "round {round}: subscribed again"
        );
        assert!(errors.try_recv().is_none());
    }
    tokio::time::advance(second * 10).await;
    settle().await;
    assert_eq!(errors.try_recv(), Some(PeerError::ReconcileTimeout));
    assert_eq!(subscribes(&mut frames), 0, "no third subscribe");
    assert_eq!(peer.state(), PeerState::Reconnecting);
    // A late snapshot still completes the reconcile.
    peer.inner
        .on_event(Observed::Presence(&presence("room", &["a"], &[])));
    assert_eq!(peer.state(), PeerState::Joined);
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_in_time_disarms_the_watchdog() {
    let (peer, mut frames) = reconnected_with_a_roster().await;
    let mut errors = peer.errors();
    tokio::time::advance(Duration::from_secs(9)).await;
    peer.inner
        .on_event(Observed::Presence(&presence("room", &["a"], &[])));
    assert_eq!(peer.state(), PeerState::Joined);
    tokio::time::advance(Duration::from_secs(60)).await;
    settle().await;
    assert_eq!(subscribes(&mut frames), 0);
    assert!(errors.try_recv().is_none());
}
