//! The event: what publishers send, what the log commits, what subscribers receive.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use uuid::Uuid;

use crate::wire::Dialect;

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

    /// A chat message as a room's history lists it in a dialect: the flat message of the room
    /// dialects, the event itself in Herald's.
    pub fn history_entry(&self, dialect: Dialect) -> Value {
        match dialect {
            Dialect::Herald => serde_json::to_value(self).expect("events serialise"),
            _ => self.flat(dialect),
        }
    }

    /// Seed 001: `{"type":"chat","user","text","timestamp","room",..}`; seed 004:
    /// `{"type":"message","from","content","timestamp" (ms),"room",..}`; a private message is
    /// `private_message` in both. `id`, `seq` and `userId` ride along.
    fn flat(&self, dialect: Dialect) -> Value {
        let e = self;
        let private = e.kind == CHAT_PRIVATE;
        let mut m = serde_json::Map::new();
        let kind = match (private, dialect) {
            (true, _) => "private_message",
            (false, Dialect::Chat) => "chat",
            (false, _) => "message",
        };
        m.insert("type".into(), kind.into());
        m.insert("id".into(), e.id.to_string().into());
        m.insert("seq".into(), e.seq.into());
        match dialect {
            Dialect::Chat => {
                m.insert(
                    if private { "from" } else { "user" }.into(),
                    e.chat_author(),
                );
                m.insert("text".into(), e.chat_text());
                m.insert(
                    "timestamp".into(),
                    e.timestamp
                        .to_rfc3339_opts(SecondsFormat::Millis, true)
                        .into(),
                );
            }
            _ => {
                m.insert("from".into(), e.chat_author());
                m.insert("content".into(), e.chat_text());
                m.insert("timestamp".into(), e.timestamp.timestamp_millis().into());
            }
        }
        if let Some(u) = &e.user_id {
            m.insert("userId".into(), u.clone().into());
        }
        if let (Some(r), false) = (&e.room_id, private) {
            m.insert("room".into(), r.clone().into());
            m.insert("roomId".into(), r.clone().into());
        }
        Value::Object(m)
    }

    /// The text of a chat message: `data.text` (or seed 004's `data.content`), else the data.
    fn chat_text(&self) -> Value {
        match self.data.get("text").or_else(|| self.data.get("content")) {
            Some(t) => t.clone(),
            None => self.data.clone(),
        }
    }

    /// Who sent a chat message, as shown to others: `data.user` (a name or a profile object),
    /// else the author's id.
    fn chat_author(&self) -> Value {
        match (self.data.get("user"), &self.user_id) {
            (Some(u @ (Value::String(_) | Value::Object(_))), _) => u.clone(),
            (_, Some(u)) => Value::String(u.clone()),
            _ => Value::Null,
        }
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
    ws_frame: OnceLock<Bytes>,
    sse_frame: OnceLock<Bytes>,
    sse_plain_frame: OnceLock<Bytes>,
    chat_frame: OnceLock<Bytes>,
    rooms_frame: OnceLock<Bytes>,
    edge_frames: [OnceLock<Bytes>; EDGE_FRAMES],
}

/// Encodings a protocol adapter at the edge (Socket.IO) may keep beside the built-in ones.
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
            ws_frame: OnceLock::new(),
            sse_frame: OnceLock::new(),
            sse_plain_frame: OnceLock::new(),
            chat_frame: OnceLock::new(),
            rooms_frame: OnceLock::new(),
            edge_frames: Default::default(),
        })
    }

    /// The WebSocket frame in a connection's dialect: the room dialects render chat and
    /// private messages as the seeds' flat messages; everything else is an `event` frame.
    pub fn ws_frame_in(&self, dialect: Dialect) -> &Bytes {
        let chat = matches!(self.event.kind.as_str(), CHAT_MESSAGE | CHAT_PRIVATE);
        match dialect {
            Dialect::Chat if chat => self.chat_frame.get_or_init(|| self.flat_frame(dialect)),
            Dialect::Rooms if chat => self.rooms_frame.get_or_init(|| self.flat_frame(dialect)),
            _ => self.ws_frame(),
        }
    }

    /// A frame in the wire format of a protocol adapter, built by `build` at most once and
    /// shared by every recipient like the built-in ones; `slot` (below `EDGE_FRAMES`) tells
    /// the adapter's encodings apart.
    pub fn edge_frame(&self, slot: usize, build: impl FnOnce(&Event) -> Bytes) -> &Bytes {
        self.edge_frames[slot].get_or_init(|| build(&self.event))
    }

    fn flat_frame(&self, dialect: Dialect) -> Bytes {
        Bytes::from(serde_json::to_vec(&self.event.flat(dialect)).expect("json values serialise"))
    }

    /// The event object as JSON.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// `{"type":"event","data":<event>}` — the WebSocket text frame.
    pub fn ws_frame(&self) -> &Bytes {
        self.ws_frame.get_or_init(|| {
            let mut out = Vec::with_capacity(self.json.len() + 24);
            out.extend_from_slice(br#"{"type":"event","data":"#);
            out.extend_from_slice(&self.json);
            out.push(b'}');
            Bytes::from(out)
        })
    }

    /// `id: <seq>` / `event: event` / `data: <event>` — the SSE record; the id lets
    /// `EventSource` resume with `Last-Event-ID`.
    pub fn sse_frame(&self) -> &Bytes {
        self.sse_frame.get_or_init(|| {
            let mut out = Vec::with_capacity(self.json.len() + 40);
            out.extend_from_slice(b"id: ");
            out.extend_from_slice(self.event.seq.to_string().as_bytes());
            out.extend_from_slice(b"\nevent: event\ndata: ");
            out.extend_from_slice(&self.json);
            out.extend_from_slice(b"\n\n");
            Bytes::from(out)
        })
    }

    /// The seeds' plain SSE record, for `EventSource` pages that listen by name: the event's
    /// type as the SSE event name (without the private `user.` prefix, so `user.message`
    /// reaches `onmessage`) and only its `data` as the payload; `id:` still carries `seq`.
    pub fn sse_plain_frame(&self) -> &Bytes {
        self.sse_plain_frame.get_or_init(|| {
            let name = self
                .event
                .kind
                .strip_prefix("user.")
                .unwrap_or(&self.event.kind);
            let data = serde_json::to_string(&self.event.data).expect("json values serialise");
            Bytes::from(format!(
                "id: {}\nevent: {name}\ndata: {data}\n\n",
                self.event.seq
            ))
        })
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

    #[test]
    fn wire_frames_wrap_the_same_json() {
        let e = EncodedEvent::new(sample());
        let ws: Value = serde_json::from_slice(e.ws_frame()).unwrap();
        assert_eq!(ws["type"], "event");
        assert_eq!(ws["data"]["seq"], 7);
        let sse = std::str::from_utf8(e.sse_frame()).unwrap();
        assert!(sse.starts_with("id: 7\nevent: event\ndata: {"));
        assert!(sse.ends_with("}\n\n"));
        let plain = std::str::from_utf8(e.sse_plain_frame()).unwrap();
        assert_eq!(
            plain,
            "id: 7\nevent: chat.message\ndata: {\"text\":\"hi\"}\n\n"
        );
    }
}
