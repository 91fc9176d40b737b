//! The events webhooks carry, encoded once when they happen. Every event has a unique `id`
//! (receivers de-duplicate by it: delivery is at least once), a `type`, the `app`, `channel`
//! and `peerId` where they apply, and the server time `ts` in milliseconds.

use serde::Serialize;
use serde_json::value::RawValue;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// A peer's first connection in the app (after a reconnect grace: not for a reload).
    PeerOnline,
    /// A peer's last connection in the app is gone.
    PeerOffline,
    /// A peer joined a channel's presence, as subscribers see it.
    PresenceJoined,
    /// A peer left a channel's presence, as subscribers see it.
    PresenceLeft,
    /// A channel's first member arrived.
    ChannelOccupied,
    /// A channel's last member left.
    ChannelVacated,
    /// A message was published on a channel (opt-in).
    MessagePublished,
    /// Sent on request to check an endpoint.
    Test,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PeerOnline => "peer.online",
            EventType::PeerOffline => "peer.offline",
            EventType::PresenceJoined => "presence.joined",
            EventType::PresenceLeft => "presence.left",
            EventType::ChannelOccupied => "channel.occupied",
            EventType::ChannelVacated => "channel.vacated",
            EventType::MessagePublished => "message.published",
            EventType::Test => "webhook.test",
        }
    }

    /// Channel events are filtered by an endpoint's channel patterns; peer events are not.
    pub fn is_channel_event(self) -> bool {
        !matches!(
            self,
            EventType::PeerOnline | EventType::PeerOffline | EventType::Test
        )
    }
}

/// An event as it is about to be encoded. Optional parts are left out of the JSON.
#[derive(Debug, Default)]
pub struct EventFields<'a> {
    pub channel: Option<&'a str>,
    pub peer_id: Option<&'a str>,
    /// The peer's metadata (peer and presence events).
    pub metadata: Option<&'a RawValue>,
    /// `message.published`: the sender, its metadata, the data as published, and the message's
    /// position where the channel keeps history.
    pub from: Option<&'a str>,
    pub from_metadata: Option<&'a RawValue>,
    pub data: Option<&'a RawValue>,
    pub message_id: Option<&'a str>,
    pub offset: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    app: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_id: Option<&'a str>,
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from_metadata: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
}

/// An encoded event, ready to join a batch.
#[derive(Debug, Clone)]
pub struct Event {
    /// The event's `id`, as in its JSON.
    pub id: String,
    pub kind: EventType,
    pub channel: Option<String>,
    /// The event's JSON object.
    pub json: String,
}

impl Event {
    /// Encodes an event of `app` with a fresh id, at server time `ts` (ms).
    pub fn new(kind: EventType, app: &str, ts: u64, fields: EventFields<'_>) -> Event {
        let id = format!("evt_{}", uuid::Uuid::new_v4().simple());
        let wire = Wire {
            id: &id,
            kind: kind.as_str(),
            app,
            channel: fields.channel,
            peer_id: fields.peer_id,
            ts,
            metadata: fields.metadata,
            from: fields.from,
            from_metadata: fields.from_metadata,
            data: fields.data,
            message_id: fields.message_id,
            offset: fields.offset,
        };
        // Serializing borrowed strings and raw JSON cannot fail.
        let json = serde_json::to_string(&wire).unwrap_or_default();
        Event {
            id,
            kind,
            channel: fields.channel.map(str::to_string),
            json,
        }
    }

    /// The bytes it holds in a queue.
    pub fn cost(&self) -> usize {
        self.json.len() + self.id.len() + self.channel.as_ref().map_or(0, String::len) + 64
    }
}

/// The body of one POST: `{"events":[…]}`.
pub fn batch_body<'a>(events: impl Iterator<Item = &'a Event>) -> Vec<u8> {
    let mut body = b"{\"events\":[".to_vec();
    for (i, e) in events.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e.json.as_bytes());
    }
    body.extend_from_slice(b"]}");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_what_applies_and_batches_are_json() {
        let meta = RawValue::from_string(r#"{"name":"Ann"}"#.into()).unwrap_or_default();
        let joined = Event::new(
            EventType::PresenceJoined,
            "app1",
            1_700_000_000_000,
            EventFields {
                channel: Some("room-1"),
                peer_id: Some("ann"),
                metadata: Some(&meta),
                ..EventFields::default()
            },
        );
        let online = Event::new(
            EventType::PeerOnline,
            "app1",
            1_700_000_000_001,
            EventFields {
                peer_id: Some("ann"),
                ..EventFields::default()
            },
        );
        let body: serde_json::Value =
            serde_json::from_slice(&batch_body([&joined, &online].into_iter())).unwrap_or_default();
        let events = body["events"].as_array().cloned().unwrap_or_default();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["type"], "presence.joined");
        assert_eq!(events[0]["channel"], "room-1");
        assert_eq!(events[0]["peerId"], "ann");
        assert_eq!(events[0]["metadata"]["name"], "Ann");
        assert_eq!(events[0]["ts"], 1_700_000_000_000u64);
        assert!(events[0]["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("evt_")));
        assert_ne!(events[0]["id"], events[1]["id"]);
        assert_eq!(events[1]["type"], "peer.online");
        assert!(events[1].get("channel").is_none());
    }
}
