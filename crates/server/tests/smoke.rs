//! A first end-to-end check that the harness and the server agree.
use herald_testkit::prelude::*;
use serde_json::json;

#[tokio::test]
async fn subscribe_publish_roundtrip() {
    let server = TestServer::start().await;
    let mut a = server
        .client_with_meta("alice", r#"{"username":"Alice"}"#)
        .await;
    let mut b = server.client("bob").await;
    let (_, snap) = a.subscribe("room/1").await;
    assert_eq!(
        snap,
        json!({"type":"presence","channel":"room/1","joined":[],"left":[]})
    );
    let (_, snap) = b.subscribe_opts("room/1", true).await;
    assert_eq!(peer_ids(&snap["joined"]), vec!["alice"]);
    let delta = a.recv().await;
    assert_eq!(peer_ids(&delta["joined"]), vec!["bob"]);
    let ack = a
        .request(
            json!({"type":"publish","channel":"room/1","data":{"n":1500.0}}),
            "p1",
        )
        .await;
    assert_eq!(ack, json!({"type":"ack","requestId":"p1"}));
    let msg = b.recv_text().await;
    assert_eq!(
        msg,
        r#"{"type":"message","channel":"room/1","from":"alice","data":{"n":1500.0},"fromMetadata":{"username":"Alice"}}"#
    );
    server.shutdown().await;
}
