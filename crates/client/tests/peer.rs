//! `Peer` against a real Herald: roster with metadata, broadcast and per-peer data, signal
//! routing, leave, and join errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use herald_client::{
    DataKind, Error, Peer, PeerOptions, PeerState, RemotePeer, SdpType, Signal, SignalHandler,
    SignallingClient, SubscribeOptions,
};
use herald_testkit::prelude::*;
use serde_json::json;

const WITH_META: SubscribeOptions = SubscribeOptions {
    include_sender_metadata: true,
};

fn new_peer(server: &TestServer, sub: &str) -> Peer {
    Peer::new(PeerOptions::new(options_for(&server.origin(), sub))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_see_each_other_and_exchange_data() {
    let server = TestServer::start().await;
    let alice = new_peer(&server, "alice");
    let mut alice_joined = alice.peer_joined();
    let mut alice_data = alice.data();
    let mut alice_states = alice.states();
    alice.join_with("room", WITH_META).await.unwrap();
    assert_eq!(alice.state(), PeerState::Joined);
    assert_eq!(alice.channel().as_deref(), Some("room"));
    assert_eq!(alice.peer_id().as_deref(), Some("alice"));
    assert_eq!(next(&mut alice_states, "joining").await, PeerState::Joining);
    assert_eq!(next(&mut alice_states, "joined").await, PeerState::Joined);

    let bob = new_peer(&server, "bob");
    let mut bob_joined = bob.peer_joined();
    let mut bob_data = bob.data();
    bob.join("room").await.unwrap();

    // Bob finds alice in the snapshot, alice gets bob as a delta; both with metadata.
    let alice_at_bob = next(&mut bob_joined, "alice at bob").await;
    assert_eq!(alice_at_bob.peer_id(), "alice");
    assert_eq!(alice_at_bob.metadata().unwrap()["username"], "alice");
    assert_eq!(alice_at_bob.polite(), Some(false), "\"bob\" > \"alice\"");
    let bob_at_alice = next(&mut alice_joined, "bob at alice").await;
    assert_eq!(bob_at_alice.metadata().unwrap()["username"], "bob");
    assert_eq!(bob_at_alice.polite(), Some(true));
    assert_eq!(alice.remote_peers(), vec![bob_at_alice.clone()]);

    // Broadcast: no echo; sender metadata only for the peer that joined with it.
    bob.send(json!({"type": "chat", "text": "hello room"}))
        .await
        .unwrap();
    let d = next(&mut alice_data, "bob's broadcast").await;
    assert_eq!(d.kind, DataKind::Broadcast);
    assert_eq!(d.from, "bob");
    assert_eq!(d.from_metadata.unwrap()["username"], "bob");
    assert_eq!(d.remote.as_ref(), Some(&bob_at_alice));
    alice.send(json!({"text": "hi bob"})).await.unwrap();
    let d = next(&mut bob_data, "alice's broadcast").await;
    assert_eq!(d.from_metadata, None, "bob joined without sender metadata");
    expect_quiet(&mut alice_data, 150, "an echo").await;

    // Per-peer data both ways: RemotePeer::send and Peer::send_to.
    bob_at_alice.send(json!({"dm": 1})).await.unwrap();
    let d = next(&mut bob_data, "alice's direct").await;
    assert_eq!(d.kind, DataKind::Direct);
    assert_eq!(d.data, json!({"dm": 1}));
    assert_eq!(d.from_metadata.unwrap()["username"], "alice");
    assert_eq!(d.remote.as_ref(), Some(&alice_at_bob));
    bob.send_to("alice", json!({"dm": 2})).await.unwrap();
    assert_eq!(
        next(&mut alice_data, "bob's direct").await.data,
        json!({"dm": 2})
    );

    assert_eq!(alice.send_to("alice", json!(1)).await, Err(Error::SelfSend));
    let err = alice.send_to("nobody", json!(1)).await.unwrap_err();
    assert_eq!(err.server_code(), Some("peer_not_found"));

    alice.leave().await;
    bob.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_is_seen_by_others_and_ends_the_streams() {
    let server = TestServer::start().await;
    let alice = new_peer(&server, "alice");
    let mut alice_left = alice.peer_left();
    alice.join("room").await.unwrap();
    let bob = new_peer(&server, "bob");
    let mut bob_joined = bob.peer_joined();
    let mut bob_left = bob.peer_left();
    let mut bob_data = bob.data();
    let mut bob_states = bob.states();
    let mut bob_events = bob.client().connection_events();
    bob.join("room").await.unwrap();
    let alice_at_bob = next(&mut bob_joined, "alice").await;

    bob.leave().await;
    assert_eq!(bob.state(), PeerState::Closed);
    assert_eq!(bob.channel(), None);
    // Bob's own roster is emptied with a final peer_left, then every stream ends.
    assert_eq!(next(&mut bob_left, "final peer_left").await, alice_at_bob);
    assert!(!alice_at_bob.is_present());
    expect_end(&mut bob_left, "peer_left").await;
    expect_end(&mut bob_joined, "peer_joined").await;
    expect_end(&mut bob_data, "data").await;
    expect_end(&mut bob_states, "states").await;
    expect_end(&mut bob_events, "the client's events").await;
    assert_eq!(bob.send(json!(1)).await, Err(Error::NotJoined));
    assert_eq!(
        alice_at_bob.send(json!(1)).await,
        Err(Error::PeerGone("alice".into()))
    );
    assert!(matches!(
        bob.join("room").await,
        Err(Error::InvalidState { .. })
    ));
    bob.leave().await; // idempotent

    let gone = next(&mut alice_left, "bob left").await;
    assert_eq!(gone.peer_id(), "bob");
    assert!(alice.remote_peers().is_empty());
    alice.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_errors() {
    let server = TestServer::start().await;
    let peer = new_peer(&server, "alice");
    assert_eq!(
        peer.join("_Metered/room").await,
        Err(Error::ReservedChannel("_Metered/room".into()))
    );
    assert!(matches!(peer.join("").await, Err(Error::InvalidChannel(_))));
    assert_eq!(peer.send(json!(1)).await, Err(Error::NotJoined));
    assert_eq!(peer.state(), PeerState::Idle);

    // A join the server refuses returns to Idle and may be retried.
    let narrow = herald_protocol::jwt::sign(
        SK_NARROW_ID,
        SK_NARROW_SECRET.as_bytes(),
        &herald_protocol::Claims {
            sub: "narrow".into(),
            exp: Some(now() + 3600),
            ..Default::default()
        },
    );
    let limited = Peer::new(PeerOptions::new(
        herald_client::SignallingClientOptions::token_provider(move || {
            std::future::ready(Ok::<_, std::io::Error>(narrow.clone()))
        })
        .with_url(server.origin()),
    ))
    .unwrap();
    let err = limited.join("lobby").await.unwrap_err();
    assert_eq!(err.server_code(), Some("channel_not_authorized"));
    assert_eq!(limited.state(), PeerState::Idle);
    assert!(limited.client().subscriptions().is_empty());
    limited.join("room/1").await.unwrap();
    assert_eq!(limited.state(), PeerState::Joined);
    assert!(matches!(
        limited.join("room/2").await,
        Err(Error::InvalidState { .. })
    ));

    // Peer needs the automatic resubscribe.
    let mut options = options_for(&server.origin(), "x");
    options.auto_resubscribe = false;
    assert!(matches!(
        Peer::new(PeerOptions::new(options)),
        Err(Error::InvalidOptions(_))
    ));
    limited.leave().await;
}

/// Records signals, as a WebRTC layer would receive them.
#[derive(Default)]
struct Signals {
    got: Mutex<Vec<(String, Signal)>>,
}

impl SignalHandler for Signals {
    fn signal(&self, remote: &RemotePeer, signal: Signal) {
        self.got
            .lock()
            .unwrap()
            .push((remote.peer_id().to_string(), signal));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_signals_are_routed_not_surfaced() {
    let server = TestServer::start().await;
    let signals = Arc::new(Signals::default());
    let alice = Peer::new(
        PeerOptions::new(options_for(&server.origin(), "alice"))
            .with_signal_handler(signals.clone()),
    )
    .unwrap();
    let mut data = alice.data();
    let mut joined = alice.peer_joined();
    alice.join("call").await.unwrap();

    // A raw client plays an official MeteredPeer: it joins and sends the SDK's wire shapes.
    let js = SignallingClient::new(options_for(&server.origin(), "remote")).unwrap();
    js.connect().await.unwrap();
    js.subscribe("call", SubscribeOptions::default())
        .await
        .unwrap();
    let remote = next(&mut joined, "remote").await;
    let shapes = [
        json!({"__meteredTrackMeta": {"trackId": "t1", "metadata": {"role": "camera"}, "streamId": "s1", "kind": "video"}}),
        json!({"type": "rtc-description", "description": {"type": "offer", "sdp": "v=0\r\n"}}),
        json!({"type": "rtc-ice", "candidate": {"candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host", "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "abcd"}}),
        json!({"type": "rtc-ice", "candidate": null}),
        // Not signals: wrong description type, and a plain payload.
        json!({"type": "rtc-description", "description": {"type": "pranswer", "sdp": ""}}),
        json!({"type": "chat", "text": "after the signals"}),
    ];
    for shape in &shapes {
        js.send("alice", shape).await.unwrap();
    }
    let first = next(&mut data, "the pranswer falls through as data").await;
    assert_eq!(first.data, shapes[4]);
    let second = next(&mut data, "the chat payload").await;
    assert_eq!(second.data, shapes[5]);
    assert_eq!(second.kind, DataKind::Direct);

    let got = signals.got.lock().unwrap().clone();
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got.iter().all(|(from, _)| from == "remote"));
    assert!(matches!(&got[0].1, Signal::TrackMeta(t) if t.track_id == "t1"));
    assert_eq!(
        got[1].1,
        Signal::Description {
            sdp_type: SdpType::Offer,
            sdp: "v=0\r\n".into()
        }
    );
    assert!(matches!(&got[2].1, Signal::Ice(Some(c)) if c.sdp_m_line_index == Some(0)));
    assert_eq!(got[3].1, Signal::Ice(None));
    let track = remote.track_metadata("t1").unwrap();
    assert_eq!(track.metadata.unwrap()["role"], "camera");
    assert_eq!(remote.track_metadata("s1").unwrap().track_id, "t1");

    // Alice answers in the same wire shape.
    let mut js_directs = js.directs();
    remote
        .send_signal(&Signal::Description {
            sdp_type: SdpType::Answer,
            sdp: "v=0\r\n".into(),
        })
        .await
        .unwrap();
    let answer = next(&mut js_directs, "the answer").await;
    assert_eq!(
        answer.data,
        json!({"type": "rtc-description", "description": {"type": "answer", "sdp": "v=0\r\n"}})
    );

    // Direct data from a peer outside the roster is dropped (signals too).
    let stranger = SignallingClient::new(options_for(&server.origin(), "stranger")).unwrap();
    stranger.connect().await.unwrap();
    stranger
        .send("alice", json!({"type": "chat", "text": "psst"}))
        .await
        .unwrap();
    stranger
        .send("alice", json!({"type": "rtc-ice", "candidate": null}))
        .await
        .unwrap();
    // Then a broadcast from the roster member, to know the stranger's frames were processed.
    js.publish("call", json!("marker")).await.unwrap();
    let d = next(&mut data, "the marker").await;
    assert_eq!(d.data, json!("marker"));
    assert_eq!(signals.got.lock().unwrap().len(), 4);

    alice.leave().await;
    js.close().await;
    stranger.close().await;
}
