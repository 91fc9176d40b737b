//! `SignallingClient::history` and the history positions on received messages, against a real
//! Herald whose `room/*` channels keep history and rewind 5.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use herald_client::{
    ChannelMessage, Error, EventStream, HistoryRequest, SignallingClient, SignallingClientOptions,
    SubscribeOptions,
};
use herald_protocol::jwt;
use herald_testkit::prelude::*;
use serde_json::json;

async fn server() -> TestServer {
    TestServer::start_with(config_with(|c| {
        // One group, reshaped from dev mode's.
        c.history.enable_for_dev();
        let group = &mut c.history.channels[0];
        group.patterns = vec!["room/*".into()];
        group.max_messages = 100;
        group.rewind = 5;
    }))
    .await
}

fn username(name: &str) -> serde_json::Map<String, serde_json::Value> {
    json!({ "username": name }).as_object().unwrap().clone()
}

async fn next(stream: &mut EventStream<ChannelMessage>) -> ChannelMessage {
    tokio::time::timeout(Duration::from_secs(5), stream.recv())
        .await
        .expect("a message within 5 s")
        .expect("the stream is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_on_messages_and_history_pages() {
    let server = server().await;
    let alice = SignallingClient::new(options_for(&server.origin(), "alice")).unwrap();
    alice.connect().await.unwrap();
    for n in 1..=12 {
        alice.publish("room/1", json!({ "n": n })).await.unwrap();
    }
    let (provider, calls) = counting_provider("bob", 3600);
    let bob = SignallingClient::new(
        SignallingClientOptions::token_provider(provider).with_url(server.origin()),
    )
    .unwrap();
    let mut messages = bob.messages();
    bob.connect().await.unwrap();
    let with_meta = SubscribeOptions {
        include_sender_metadata: true,
    };
    bob.subscribe("room/1", with_meta).await.unwrap();
    let mut received = Vec::new();
    for n in 8..=12 {
        let m = next(&mut messages).await;
        assert_eq!((m.offset, &m.data), (Some(n), &json!({ "n": n })));
        assert_eq!(m.from_metadata, Some(username("alice")));
        received.push(m);
    }
    alice.publish("room/1", json!({"n": 13})).await.unwrap();
    let live = next(&mut messages).await;
    assert_eq!(live.offset, Some(13));
    received.push(live);
    let epoch = received[0].epoch.clone().expect("an epoch");
    for m in &received {
        let offset = m.offset.unwrap();
        assert_eq!(m.epoch.as_deref(), Some(epoch.as_str()));
        assert_eq!(m.id.as_deref(), Some(format!("{epoch}-{offset}").as_str()));
        assert!(m.ts.unwrap() > 1_700_000_000_000);
    }

    // The newest page, then paging back: every message exactly once, same ids as live.
    let page = bob
        .history("room/1", HistoryRequest::default())
        .await
        .unwrap();
    assert_eq!(
        (page.channel.as_str(), page.epoch.as_deref()),
        ("room/1", Some(epoch.as_str()))
    );
    assert_eq!(page.messages.len(), 13);
    assert!(!page.has_more);
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let request = HistoryRequest {
            limit: Some(4),
            before,
            after: None,
        };
        let page = bob.history("room/1", request).await.unwrap();
        seen.splice(0..0, page.messages.iter().map(|m| m.offset));
        if !page.has_more {
            break;
        }
        before = page.messages.first().map(|m| m.offset);
    }
    assert_eq!(seen, (1..=13).collect::<Vec<_>>());
    let tail = bob
        .history(
            "room/1",
            HistoryRequest {
                after: Some(7),
                ..HistoryRequest::default()
            },
        )
        .await
        .unwrap();
    for (listed, live) in tail.messages.iter().zip(&received) {
        assert_eq!(Some(&listed.id), live.id.as_ref());
        assert_eq!((listed.from.as_str(), &listed.data), ("alice", &live.data));
        assert_eq!(listed.from_metadata, Some(username("alice")));
    }
    // The connect's token was reused: the provider was asked once.
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A channel without history, and one outside the credential's scope.
    match bob.history("lobby", HistoryRequest::default()).await {
        Err(Error::Rest { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (404, "history_not_enabled"))
        }
        other => panic!("{other:?}"),
    }
    let mut narrow = claims("carol");
    narrow.channels = Some(vec!["room/2".into()]);
    let token = jwt::sign(SK_ID, SK_SECRET.as_bytes(), &narrow);
    let carol = SignallingClient::new(
        SignallingClientOptions::token_provider(move || {
            std::future::ready(Ok::<_, std::io::Error>(token.clone()))
        })
        .with_url(server.origin()),
    )
    .unwrap();
    match carol.history("room/1", HistoryRequest::default()).await {
        Err(Error::Rest { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (403, "channel_not_authorized"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        carol
            .history("room/2", HistoryRequest::default())
            .await
            .unwrap()
            .epoch,
        None
    );

    // A publishable key reads without ever connecting.
    let guest =
        SignallingClient::new(SignallingClientOptions::api_key(PK).with_url(server.origin()))
            .unwrap();
    let page = guest
        .history(
            "room/1",
            HistoryRequest {
                limit: Some(1),
                ..HistoryRequest::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.messages[0].offset, 13);
    assert!(page.has_more);
    alice.close().await;
    bob.close().await;
    server.shutdown().await;
}
