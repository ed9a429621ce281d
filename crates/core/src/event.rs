//! The event: what publishers send, what the log commits, what subscribers receive.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use uuid::Uuid;

/// A committed event. `seq` is its position in the log: strictly increasing, never reused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: Uuid,
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    #[serde(serialize_with = "iso_millis")]
    pub timestamp: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// Timestamps are written as JavaScript's `Date.toISOString()` does, so browser code can parse them.
pub fn iso_millis<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// An event before the log has given it a position.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: String,
    pub data: Value,
    pub user_id: Option<String>,
    pub room_id: Option<String>,
    pub metadata: Option<Value>,
}

impl NewEvent {
    pub fn commit(self, seq: u64, timestamp: DateTime<Utc>) -> Event {
        Event {
            id: Uuid::new_v4(),
            seq,
            kind: self.kind,
            data: self.data,
            user_id: self.user_id,
            room_id: self.room_id,
            timestamp,
            metadata: self.metadata,
        }
    }
}

/// The type of chat messages sent in rooms (`chat`, `message`).
pub const CHAT_MESSAGE: &str = "chat.message";
/// The type of private messages (`private_message`), published to the recipient's personal room.
pub const CHAT_PRIVATE: &str = "chat.private";

impl Event {
    /// Whether `other` has the same type, room and user: everything but `data` that decides
    /// who receives an event (subscriptions' patterns and filters, room members, privacy).
    pub fn same_route(&self, other: &Event) -> bool {
        self.kind == other.kind && self.room_id == other.room_id && self.user_id == other.user_id
    }
}

/// A committed event together with its wire encodings, each built at most once and shared as
/// bytes by every recipient: the fan-out never serialises per subscriber.
#[derive(Debug)]
pub struct EncodedEvent {
    pub event: Event,
    /// The connection that sent it, when it must not receive it back (seed 004's `message`
    /// goes to everyone in the room but the sender). Not part of the event.
    pub skip: Option<Uuid>,
    json: Bytes,
    /// Its encodings on the wires, built at most once each: `wire`'s first (numbered by
    /// `wire::Encoding`), then those of protocol adapters at the edge (`edge_frame`).
    encodings: [OnceLock<Bytes>; ENCODINGS + EDGE_FRAMES],
}

/// How many wire encodings of `wire` an event can cache (`wire::Encoding` numbers them).
pub const ENCODINGS: usize = 5;
/// Encodings a protocol adapter at the edge (Socket.IO) may keep beside `wire`'s.
pub const EDGE_FRAMES: usize = 2;

impl EncodedEvent {
    pub fn new(event: Event) -> Arc<Self> {
        Self::skipping(event, None)
    }

    pub fn skipping(event: Event, skip: Option<Uuid>) -> Arc<Self> {
        let json = Bytes::from(serde_json::to_vec(&event).expect("events serialise"));
        Arc::new(Self {
            event,
            skip,
            json,
            encodings: Default::default(),
        })
    }

    /// The event's JSON, as stored and as every wire format embeds it.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// The encoding in cache slot `slot` (below `ENCODINGS`), built by `encode` the first time
    /// it is asked for (`wire::EventFrames` names the slots and builds the frames).
    pub fn encoded(&self, slot: usize, encode: impl FnOnce(&Self) -> Bytes) -> &Bytes {
        self.encodings[slot].get_or_init(|| encode(self))
    }

    /// A frame in the wire format of a protocol adapter, built by `build` at most once and
    /// shared by every recipient like `wire`'s; `slot` (below `EDGE_FRAMES`) tells the
    /// adapter's encodings apart.
    pub fn edge_frame(&self, slot: usize, build: impl FnOnce(&Event) -> Bytes) -> &Bytes {
        self.encodings[ENCODINGS + slot].get_or_init(|| build(&self.event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Event {
        NewEvent {
            kind: "chat.message".into(),
            data: json!({"text": "hi"}),
            user_id: Some("alice".into()),
            room_id: None,
            metadata: None,
        }
        .commit(
            7,
            DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
        )
    }

    #[test]
    fn serialises_like_the_seed_with_seq_and_iso_time() {
        let v: Value = serde_json::from_slice(EncodedEvent::new(sample()).json()).unwrap();
        assert_eq!(v["type"], "chat.message");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["userId"], "alice");
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.123Z");
        assert!(v.get("roomId").is_none());
    }
}
