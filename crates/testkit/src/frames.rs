//! The frames tests expect from Herald: exact acks, empty snapshots, error frames, rosters.

use serde_json::{json, Value};

/// Peer ids in a presence array.
pub fn peer_ids(entries: &Value) -> Vec<String> {
    let mut ids: Vec<String> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["peerId"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// Asserts `frame` is exactly an `error` with `code`, carrying `request_id` iff given (spec §4.3).
pub fn assert_error(frame: &Value, code: &str, request_id: Option<&str>) {
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["code"], code, "{frame}");
    match request_id {
        Some(id) => assert_eq!(frame["requestId"], id, "{frame}"),
        None => assert!(
            frame.get("requestId").is_none(),
            "unexpected requestId: {frame}"
        ),
    }
    if let Some(message) = frame.get("message") {
        assert!(message.is_string(), "{frame}");
    }
    for key in frame.as_object().unwrap().keys() {
        assert!(
            matches!(key.as_str(), "type" | "code" | "requestId" | "message"),
            "unexpected key {key}: {frame}"
        );
    }
}

/// The exact `ack` frame for `request_id`.
pub fn ack(request_id: &str) -> Value {
    json!({"type": "ack", "requestId": request_id})
}

/// An empty presence snapshot for `channel`.
pub fn empty_presence(channel: &str) -> Value {
    json!({"type": "presence", "channel": channel, "joined": [], "left": []})
}

/// The offsets of a REST history page's messages, in page order.
pub fn history_offsets(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect()
}
