//! The wire formats Herald writes: an event's frames on each transport (`EventFrames`, the
//! seeds' flat chat messages among them, chosen by the WebSocket `Dialect`), and
//! `ServerMessage`, the server's messages that are not events, each encoded once per transport,
//! and `CloseReason`, the close codes.
//! Of the domain it knows only the event; `protocol`, which parses client commands, re-exports
//! `Dialect` and `ServerMessage`.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use chrono::SecondsFormat;
use serde_json::{Map, Value, json};

use crate::event::{CHAT_MESSAGE, CHAT_PRIVATE, ENCODINGS, EncodedEvent, Event};

/// How a WebSocket client wants chat rendered, chosen by the path it connected to: Herald's
/// own protocol (`/ws`: chat messages are `event` frames), seed 001's chat (`/`: `chat`
/// messages, greeted with `welcome`) or seed 004's rooms (`/rooms`: `message` messages,
/// greeted with `connected`). Every dialect accepts every command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Herald,
    Chat,
    Rooms,
}

/// The encodings an event is written in, each cached in the event (`EncodedEvent::encoded`)
/// and shared as bytes by every recipient.
#[derive(Clone, Copy)]
enum Encoding {
    /// `{"type":"event","data":<event>}`.
    WebSocket,
    /// The SSE record of Herald's streams.
    Sse,
    /// The seeds' SSE record, named by the event's type.
    SsePlain,
    /// Seed 001's flat chat message.
    Chat,
    /// Seed 004's flat room message.
    Rooms,
}

const _: () = assert!(Encoding::Rooms as usize + 1 == ENCODINGS);

/// An event's frames on each wire, built at most once per event: the fan-out never serialises
/// per subscriber.
pub trait EventFrames {
    /// The WebSocket frame in a connection's dialect: the room dialects render chat and
    /// private messages as the seeds' flat messages; everything else is an `event` frame.
    fn ws_frame_in(&self, dialect: Dialect) -> &Bytes;
    /// `{"type":"event","data":<event>}` — the WebSocket text frame.
    fn ws_frame(&self) -> &Bytes;
    /// `id: <seq>` / `event: event` / `data: <event>` — the SSE record; the id lets
    /// `EventSource` resume with `Last-Event-ID`.
    fn sse_frame(&self) -> &Bytes;
    /// The seeds' plain SSE record, for `EventSource` pages that listen by name: the event's
    /// type as the SSE event name (without the private `user.` prefix, so `user.message`
    /// reaches `onmessage`) and only its `data` as the payload; `id:` still carries `seq`.
    fn sse_plain_frame(&self) -> &Bytes;
}

impl EventFrames for EncodedEvent {
    fn ws_frame_in(&self, dialect: Dialect) -> &Bytes {
        let chat = matches!(self.event.kind.as_str(), CHAT_MESSAGE | CHAT_PRIVATE);
        match dialect {
            Dialect::Chat if chat => {
                self.encoded(Encoding::Chat as usize, |e| flat_frame(e, dialect))
            }
            Dialect::Rooms if chat => {
                self.encoded(Encoding::Rooms as usize, |e| flat_frame(e, dialect))
            }
            _ => self.ws_frame(),
        }
    }

    fn ws_frame(&self) -> &Bytes {
        self.encoded(Encoding::WebSocket as usize, |e| {
            let mut out = Vec::with_capacity(e.json().len() + 24);
            out.extend_from_slice(br#"{"type":"event","data":"#);
            out.extend_from_slice(e.json());
            out.push(b'}');
            Bytes::from(out)
        })
    }

    fn sse_frame(&self) -> &Bytes {
        self.encoded(Encoding::Sse as usize, |e| {
            let mut out = Vec::with_capacity(e.json().len() + 40);
            out.extend_from_slice(b"id: ");
            out.extend_from_slice(e.event.seq.to_string().as_bytes());
            out.extend_from_slice(b"\nevent: event\ndata: ");
            out.extend_from_slice(e.json());
            out.extend_from_slice(b"\n\n");
            Bytes::from(out)
        })
    }

    fn sse_plain_frame(&self) -> &Bytes {
        self.encoded(Encoding::SsePlain as usize, |e| {
            let name = e.event.kind.strip_prefix("user.").unwrap_or(&e.event.kind);
            let data = serde_json::to_string(&e.event.data).expect("json values serialise");
            Bytes::from(format!(
                "id: {}\nevent: {name}\ndata: {data}\n\n",
                e.event.seq
            ))
        })
    }
}

fn flat_frame(e: &EncodedEvent, dialect: Dialect) -> Bytes {
    Bytes::from(serde_json::to_vec(&flat(&e.event, dialect)).expect("json values serialise"))
}

/// A chat message as a room's history lists it in a dialect: the flat message of the room
/// dialects, the event itself in Herald's.
pub fn history_entry(event: &Event, dialect: Dialect) -> Value {
    match dialect {
        Dialect::Herald => serde_json::to_value(event).expect("events serialise"),
        _ => flat(event, dialect),
    }
}

/// Seed 001: `{"type":"chat","user","text","timestamp","room",..}`; seed 004:
/// `{"type":"message","from","content","timestamp" (ms),"room",..}`; a private message is
/// `private_message` in both. `id`, `seq` and `userId` ride along.
fn flat(e: &Event, dialect: Dialect) -> Value {
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
            m.insert(if private { "from" } else { "user" }.into(), chat_author(e));
            m.insert("text".into(), chat_text(e));
            m.insert(
                "timestamp".into(),
                e.timestamp
                    .to_rfc3339_opts(SecondsFormat::Millis, true)
                    .into(),
            );
        }
        _ => {
            m.insert("from".into(), chat_author(e));
            m.insert("content".into(), chat_text(e));
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
fn chat_text(e: &Event) -> Value {
    match e.data.get("text").or_else(|| e.data.get("content")) {
        Some(t) => t.clone(),
        None => e.data.clone(),
    }
}

/// Who sent a chat message, as shown to others: `data.user` (a name or a profile object),
/// else the author's id.
fn chat_author(e: &Event) -> Value {
    match (e.data.get("user"), &e.user_id) {
        (Some(u @ (Value::String(_) | Value::Object(_))), _) => u.clone(),
        (_, Some(u)) => Value::String(u.clone()),
        _ => Value::Null,
    }
}

/// Why a connection is being closed; WebSocket close code and reason, and the SSE/log wording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

impl CloseReason {
    pub const NORMAL: Self = Self {
        code: 1000,
        reason: "closed",
    };
    pub const SHUTDOWN: Self = Self {
        code: 1001,
        reason: "server shutting down",
    };
    pub const POLICY: Self = Self {
        code: 1008,
        reason: "policy violation",
    };
    /// A frame that breaks RFC 6455 (unmasked, bad opcode, bad control frame, ...).
    pub const PROTOCOL_ERROR: Self = Self {
        code: 1002,
        reason: "protocol error",
    };
    pub const INVALID_UTF8: Self = Self {
        code: 1007,
        reason: "text is not valid UTF-8",
    };
    pub const TOO_BIG: Self = Self {
        code: 1009,
        reason: "message too big",
    };
    /// The store failed during a resume: closed rather than left with a gap.
    pub const RESUME_STORE_FAILED: Self = Self {
        code: 1011,
        reason: "event store unavailable: resume from your last seq",
    };
    /// A resume that was dropped before it finished.
    pub const RESUME_INTERRUPTED: Self = Self {
        code: 1011,
        reason: "resume interrupted: resume from your last seq",
    };
    /// The store failed while a document was opened.
    pub const STORE_UNAVAILABLE: Self = Self {
        code: 1011,
        reason: "event store unavailable: reconnect",
    };
    pub const IDLE: Self = Self {
        code: 4000,
        reason: "idle timeout",
    };
    /// The token the connection authenticated with expired: authenticate again.
    pub const TOKEN_EXPIRED: Self = Self {
        code: 4001,
        reason: "token expired: reconnect with a fresh token",
    };
    pub const SLOW_CONSUMER: Self = Self {
        code: 4008,
        reason: "outbound buffer overflow: resume from your last seq",
    };
    pub const RATE_LIMITED: Self = Self {
        code: 4029,
        reason: "too many messages",
    };
}

/// A message from the server that is not an event: replies, errors, notifications. Encoded
/// lazily, once per wire format, so a broadcast notification is serialised once.
#[derive(Debug)]
pub struct ServerMessage {
    pub kind: Cow<'static, str>,
    pub data: Option<Value>,
    /// Fields written beside `type` rather than under `data`: the room protocol's messages are
    /// flat, as the seeds' clients read them (`message.users`, `message.user`).
    pub fields: Option<Map<String, Value>>,
    /// Echo of the client's `id`, so a reply can be matched to its command.
    pub reply_to: Option<Value>,
    ws: OnceLock<Bytes>,
    sse: OnceLock<Bytes>,
}

impl ServerMessage {
    pub fn new(kind: impl Into<Cow<'static, str>>, data: Option<Value>) -> Arc<Self> {
        Self::reply(kind, data, None)
    }

    pub fn reply(
        kind: impl Into<Cow<'static, str>>,
        data: Option<Value>,
        reply_to: Option<Value>,
    ) -> Arc<Self> {
        Self::build(kind, data, None, reply_to)
    }

    fn build(
        kind: impl Into<Cow<'static, str>>,
        data: Option<Value>,
        fields: Option<Map<String, Value>>,
        reply_to: Option<Value>,
    ) -> Arc<Self> {
        Arc::new(Self {
            kind: kind.into(),
            data,
            fields,
            reply_to,
            ws: OnceLock::new(),
            sse: OnceLock::new(),
        })
    }

    /// A flat room-protocol message: `{"type":kind, ...fields}`.
    pub fn flat(
        kind: impl Into<Cow<'static, str>>,
        fields: Value,
        reply_to: Option<Value>,
    ) -> Arc<Self> {
        let fields = match fields {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        Self::build(kind, None, Some(fields), reply_to)
    }

    /// `{"type":"error","message":..,"data":{"error":..,"code":..}}`: the `data` of Herald's
    /// protocol, and the flat `message` seed 001's client shows.
    pub fn error(message: impl Into<String>, code: &str, reply_to: Option<Value>) -> Arc<Self> {
        let message = message.into();
        let mut fields = Map::new();
        fields.insert("message".into(), message.clone().into());
        Self::build(
            "error",
            Some(json!({"error": message, "code": code})),
            Some(fields),
            reply_to,
        )
    }

    /// `{"type":..,<fields>,"data":..,"id":..}`
    pub fn ws_frame(&self) -> &Bytes {
        self.ws.get_or_init(|| {
            let mut out = Vec::with_capacity(64);
            out.extend_from_slice(b"{\"type\":");
            write_json(&mut out, &self.kind.as_ref());
            for (k, v) in self.fields.iter().flatten() {
                out.push(b',');
                write_json(&mut out, k);
                out.push(b':');
                write_json(&mut out, v);
            }
            if let Some(d) = &self.data {
                out.extend_from_slice(b",\"data\":");
                write_json(&mut out, d);
            }
            if let Some(id) = &self.reply_to {
                out.extend_from_slice(b",\"id\":");
                write_json(&mut out, id);
            }
            out.push(b'}');
            Bytes::from(out)
        })
    }

    /// `event: <type>` / `data: <data>`
    pub fn sse_frame(&self) -> &Bytes {
        self.sse.get_or_init(|| {
            let data = match (&self.data, &self.fields) {
                (Some(d), _) => d.to_string(),
                (None, Some(f)) => serde_json::to_string(f).expect("json values serialise"),
                (None, None) => "{}".to_owned(),
            };
            Bytes::from(format!("event: {}\ndata: {}\n\n", self.kind, data))
        })
    }

    pub fn approx_len(&self) -> usize {
        self.ws.get().map_or(128, Bytes::len)
    }
}

fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    serde_json::to_writer(out, v).expect("json values serialise");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::NewEvent;

    fn sample() -> Event {
        NewEvent {
            kind: CHAT_MESSAGE.into(),
            data: json!({"text": "hi"}),
            user_id: Some("alice".into()),
            room_id: Some("lobby".into()),
            metadata: None,
        }
        .commit(
            7,
            chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
        )
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

    #[test]
    fn chat_is_flat_in_the_room_dialects_and_an_event_in_herald() {
        let e = EncodedEvent::new(sample());
        let chat: Value = serde_json::from_slice(e.ws_frame_in(Dialect::Chat)).unwrap();
        assert_eq!(chat["type"], "chat");
        assert_eq!(chat["user"], "alice");
        assert_eq!(chat["text"], "hi");
        assert_eq!(chat["timestamp"], "2023-11-14T22:13:20.123Z");
        let rooms: Value = serde_json::from_slice(e.ws_frame_in(Dialect::Rooms)).unwrap();
        assert_eq!(rooms["type"], "message");
        assert_eq!(rooms["from"], "alice");
        assert_eq!(rooms["content"], "hi");
        assert_eq!(rooms["timestamp"], 1_700_000_000_123_i64);
        assert_eq!(rooms["roomId"], "lobby");
        assert_eq!(e.ws_frame_in(Dialect::Herald), e.ws_frame());
        assert_eq!(history_entry(&e.event, Dialect::Rooms), rooms);
    }
}
