//! Helpers shared by Herald's fuzz targets (see docs/fuzzing.md).

use herald_core::protocol::{Command, Envelope};
use serde_json::{Map, Value, json};

/// The message types `Envelope::parse` knows, aliases included.
pub const COMMAND_TYPES: &[&str] = &[
    "authenticate",
    "subscribe",
    "unsubscribe",
    "publish",
    "ping",
    "join",
    "join_room",
    "leave",
    "leave_room",
    "chat",
    "message",
    "typing",
    "typing_start",
    "typing_stop",
    "stream.subscribe",
    "stream.unsubscribe",
    "private_message",
    "document.join",
    "document.leave",
    "document.change",
    "text_change",
    "cursor_move",
];

/// A command's type and arguments, written the canonical way (no aliases).
pub fn command_parts(command: &Command) -> (&'static str, Map<String, Value>) {
    let mut args = Map::new();
    let mut put = |k: &str, v: Value| {
        args.insert(k.to_owned(), v);
    };
    let opt = |v: &Option<String>| v.clone().map(Value::String);
    let kind = match command {
        Command::Authenticate { token } => {
            put("token", json!(token));
            "authenticate"
        }
        Command::Subscribe(a) => {
            put("eventTypes", json!(a.event_types));
            if let Some(f) = &a.filters {
                put(
                    "filters",
                    serde_json::to_value(f).expect("filters serialise"),
                );
            }
            if let Some(s) = a.since {
                put("since", json!(s));
            }
            "subscribe"
        }
        Command::Unsubscribe { subscription_id } => {
            put("subscriptionId", json!(subscription_id));
            "unsubscribe"
        }
        Command::Publish(p) => {
            put("type", json!(p.kind));
            put("data", p.data.clone());
            if let Some(r) = opt(&p.room_id) {
                put("roomId", r);
            }
            if let Some(u) = opt(&p.user_id) {
                put("userId", u);
            }
            if let Some(m) = &p.metadata {
                put("metadata", Value::Object(m.clone()));
            }
            "publish"
        }
        Command::Ping => "ping",
        Command::Join(j) => {
            put("room", json!(j.room));
            if let Some(u) = &j.user {
                put("user", u.clone());
            }
            "join"
        }
        Command::Leave { room } => {
            if let Some(r) = opt(room) {
                put("room", r);
            }
            "leave"
        }
        Command::Chat {
            room,
            text,
            to_others,
        } => {
            if let Some(r) = opt(room) {
                put("room", r);
            }
            put("text", json!(text));
            if *to_others { "message" } else { "chat" }
        }
        Command::Typing { room, typing } => {
            if let Some(r) = opt(room) {
                put("room", r);
            }
            put("isTyping", json!(typing));
            "typing"
        }
        Command::PrivateMessage { target, text } => {
            put("target", json!(target));
            put("text", json!(text));
            "private_message"
        }
        Command::StreamSubscribe { stream, last_id } => {
            put("stream", json!(stream));
            if let Some(l) = opt(last_id) {
                put("lastId", l);
            }
            "stream.subscribe"
        }
        Command::StreamUnsubscribe { stream } => {
            put("stream", json!(stream));
            "stream.unsubscribe"
        }
        Command::DocumentJoin { document, version } => {
            put("documentId", json!(document));
            if let Some(v) = version {
                put("version", json!(v));
            }
            "document.join"
        }
        Command::DocumentLeave { document } => {
            put("documentId", json!(document));
            "document.leave"
        }
        Command::DocumentChange {
            document,
            base_version,
            position,
            length,
            text,
            change_id,
        } => {
            put("documentId", json!(document));
            put("baseVersion", json!(base_version));
            put("position", json!(position));
            put("length", json!(length));
            put("text", json!(text));
            if let Some(c) = change_id {
                put("changeId", json!(c));
            }
            "document.change"
        }
        Command::DocumentCursor { document, cursor } => {
            put("documentId", json!(document));
            put("cursor", cursor.clone());
            "cursor_move"
        }
    };
    (kind, args)
}

/// `{"type":..,"data":{..},"id":..}`
pub fn envelope_form(env: &Envelope) -> Value {
    let (kind, args) = command_parts(&env.command);
    let mut obj = Map::new();
    obj.insert("type".into(), json!(kind));
    obj.insert("data".into(), Value::Object(args));
    if let Some(id) = &env.id {
        obj.insert("id".into(), id.clone());
    }
    Value::Object(obj)
}

/// `{"type":..,<args>,"id":..}`, for the commands whose arguments can be written beside
/// `type` (not `publish`, whose event type is itself a `type` field).
pub fn flat_form(env: &Envelope) -> Option<Value> {
    let (kind, args) = command_parts(&env.command);
    if args.contains_key("type") || args.contains_key("id") || args.contains_key("data") {
        return None;
    }
    let mut obj = args;
    obj.insert("type".into(), json!(kind));
    if let Some(id) = &env.id {
        obj.insert("id".into(), id.clone());
    }
    Some(Value::Object(obj))
}
