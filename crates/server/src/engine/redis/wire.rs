//! What Herald nodes publish to each other through Redis pub/sub. Payloads are compact JSON;
//! client `data` and metadata stay raw, so each node encodes client frames once, byte-for-byte.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One event on a channel topic (`m` message, `j` joined, `l` left), an app's wildcard topic
/// (`m`), or a node topic (`d` direct, `x` kick). Presence events are written by the Lua scripts, in the same shape.
#[derive(Debug, Serialize, Deserialize)]
pub struct Event<'a> {
    pub k: Cow<'a, str>,
    /// Presence sequence number (j/l).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s: Option<u64>,
    /// Peer id: the presence subject (j/l), the kicked peer (x).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub p: Option<Cow<'a, str>>,
    /// Metadata: the member's (j/l), the sender's (m/d).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub m: Option<&'a RawValue>,
    /// Sender peer id (m/d).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub f: Option<Cow<'a, str>>,
    /// Client data, forwarded verbatim (m/d). `null` is a value here, not an absence.
    #[serde(
        default,
        borrow,
        deserialize_with = "herald_protocol::frames::present",
        skip_serializing_if = "Option::is_none"
    )]
    pub d: Option<&'a RawValue>,
    /// App id (d/x).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub a: Option<Cow<'a, str>>,
    /// Target peer (d).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub t: Option<Cow<'a, str>>,
    /// Origin node and connection excluded from delivery, as `node/conn` (m/d).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub x: Option<Cow<'a, str>>,
    /// Close code (x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c: Option<u16>,
    /// Channel name (m), set when the message also goes to the app's wildcard topic.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub n: Option<Cow<'a, str>>,
}

impl<'a> Event<'a> {
    pub fn new(kind: &'a str) -> Event<'a> {
        Event {
            k: Cow::Borrowed(kind),
            s: None,
            p: None,
            m: None,
            f: None,
            d: None,
            a: None,
            t: None,
            x: None,
            c: None,
            n: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// `m`/`l`/`j` metadata, treating JSON `null` as none.
    pub fn metadata(&self) -> Option<&'a RawValue> {
        self.m.filter(|m| m.get() != "null")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_raw_data_and_null() {
        let data = RawValue::from_string("{\"n\": 1500.0}".into()).unwrap();
        let mut e = Event::new("m");
        e.f = Some("alice".into());
        e.d = Some(&data);
        let json = e.to_json();
        let back: Event<'_> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.d.unwrap().get(), "{\"n\": 1500.0}");
        let null: Event<'_> = serde_json::from_str(r#"{"k":"m","d":null}"#).unwrap();
        assert_eq!(null.d.unwrap().get(), "null");
        // The Lua side escapes `/` as `\/` in peer ids.
        let lua: Event<'_> =
            serde_json::from_str(r#"{"k":"j","s":3,"p":"a\/b","m":null}"#).unwrap();
        assert_eq!(
            (lua.p.as_deref().unwrap(), lua.s, lua.metadata().is_none()),
            ("a/b", Some(3), true)
        );
    }
}
