//! The wire formats the domain writes: the WebSocket `Dialect` in which an `EncodedEvent`
//! renders chat, and `ServerMessage`, the server's messages that are not events, each encoded
//! once per transport. A leaf: the domain (`event`, `outbox`, `room`, `hub`) writes through it
//! without depending on `protocol`, which parses client commands and re-exports both.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::{Map, Value, json};

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
