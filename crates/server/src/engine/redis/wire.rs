//! What Herald nodes publish to each other through Redis pub/sub. Payloads are JSON with
//! readable field names; client `data` and metadata stay raw, so each node encodes client
//! frames once, byte-for-byte. Presence events are also written by the Lua scripts
//! (`scripts.rs`), in the same shape.
//!
//! | kind | topic | fields |
//! |---|---|---|
//! | `message` | a channel's (and, in cluster mode, its app's wildcard topic) | `from`, `meta`, `data`, `exclude`, `channel`; on a channel that keeps history also `offset`, `epoch`, `ts` (added by the publish script) |
//! | `joined`, `left`, `meta` | a channel's | `seq`, `peer`, `meta` |
//! | `direct` | a node's | `app`, `to`, `from`, `meta`, `data`, `exclude` |
//! | `kick` | a node's | `app`, `peer`, `code` |

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The kinds of event.
pub mod kind {
    pub const MESSAGE: &str = "message";
    pub const JOINED: &str = "joined";
    pub const LEFT: &str = "left";
    /// A member's metadata changed without a join (a reconnect within the grace): nodes update
    /// their mirror of the roster; subscribers are not told.
    pub const META: &str = "meta";
    pub const DIRECT: &str = "direct";
    pub const KICK: &str = "kick";
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Event<'a> {
    /// One of [`kind`].
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    /// Presence sequence number of the channel (joined/left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The presence subject (joined/left), the kicked peer (kick).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Cow<'a, str>>,
    /// Metadata: the member's (joined/left), the sender's (message/direct).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub meta: Option<&'a RawValue>,
    /// Sender peer id (message/direct).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub from: Option<Cow<'a, str>>,
    /// Client data, forwarded verbatim (message/direct). `null` is a value here, not an absence.
    #[serde(
        default,
        borrow,
        deserialize_with = "herald_protocol::frames::present",
        skip_serializing_if = "Option::is_none"
    )]
    pub data: Option<&'a RawValue>,
    /// App id (direct/kick).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub app: Option<Cow<'a, str>>,
    /// Target peer (direct).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub to: Option<Cow<'a, str>>,
    /// Origin node and connection excluded from delivery, as `node/conn` (message/direct).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Cow<'a, str>>,
    /// Close code (kick).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// Channel name (message), set when the message also goes to the app's wildcard topic.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Cow<'a, str>>,
    /// History position (message on a channel that keeps history): written by the publish
    /// script, which is what makes offsets and the fan-out order agree (`history.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
}

impl<'a> Event<'a> {
    pub fn new(kind: &'a str) -> Event<'a> {
        Event {
            kind: Cow::Borrowed(kind),
            seq: None,
            peer: None,
            meta: None,
            from: None,
            data: None,
            app: None,
            to: None,
            exclude: None,
            code: None,
            channel: None,
            offset: None,
            epoch: None,
            ts: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Metadata, treating JSON `null` as none.
    pub fn metadata(&self) -> Option<&'a RawValue> {
        self.meta.filter(|m| m.get() != "null")
    }

    /// The connection to skip on `node`, if the event was sent by one of its connections.
    pub fn excluded_on(&self, node: &str) -> Option<crate::ids::ConnId> {
        let (origin, id) = self.exclude.as_deref()?.split_once('/')?;
        (origin == node)
            .then(|| id.parse().ok().map(crate::ids::ConnId))
            .flatten()
    }
}

/// The `exclude` field for a connection of `node`.
pub fn exclusion(node: &str, conn: Option<&crate::conn::Conn>) -> Option<String> {
    conn.map(|c| format!("{node}/{}", c.id.0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_raw_data_and_null() {
        let data = RawValue::from_string("{\"n\": 1500.0}".into()).unwrap();
        let mut e = Event::new(kind::MESSAGE);
        e.from = Some("alice".into());
        e.data = Some(&data);
        let json = e.to_json();
        assert!(json.contains(r#""kind":"message""#), "{json}");
        let back: Event<'_> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.data.unwrap().get(), "{\"n\": 1500.0}");
        let null: Event<'_> = serde_json::from_str(r#"{"kind":"message","data":null}"#).unwrap();
        assert_eq!(null.data.unwrap().get(), "null");
        // The Lua side escapes `/` as `\/` in peer ids.
        let lua: Event<'_> =
            serde_json::from_str(r#"{"kind":"joined","seq":3,"peer":"a\/b","meta":null}"#).unwrap();
        assert_eq!(
            (
                lua.peer.as_deref().unwrap(),
                lua.seq,
                lua.metadata().is_none()
            ),
            ("a/b", Some(3), true)
        );
    }

    #[test]
    fn exclusion_names_the_origin_node_and_connection() {
        let mut e = Event::new(kind::MESSAGE);
        e.exclude = Some("n1/42".into());
        assert_eq!(e.excluded_on("n1"), Some(crate::ids::ConnId(42)));
        assert_eq!(e.excluded_on("n2"), None);
    }
}
