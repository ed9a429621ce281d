//! The client/server message protocol shared by every transport: parsing client commands
//! (both the `{type, data}` envelope and the flat form of the seeds) and encoding server
//! messages for WebSocket and SSE.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::subscription::Filters;

/// Machine-readable error codes, shared by WebSocket `error` messages and HTTP error bodies.
pub mod code {
    pub const INVALID_JSON: &str = "INVALID_JSON";
    pub const INVALID_MESSAGE: &str = "INVALID_MESSAGE";
    pub const UNKNOWN_TYPE: &str = "UNKNOWN_TYPE";
    pub const VALIDATION_ERROR: &str = "VALIDATION_ERROR";
    pub const AUTH_FAILED: &str = "AUTH_FAILED";
    pub const AUTH_REQUIRED: &str = "AUTH_REQUIRED";
    pub const FORBIDDEN: &str = "FORBIDDEN";
    pub const NOT_FOUND: &str = "NOT_FOUND";
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    pub const UNAVAILABLE: &str = "UNAVAILABLE";
    pub const INTERNAL: &str = "INTERNAL_ERROR";
}

/// A message from the server that is not an event: replies, errors, notifications. Encoded
/// lazily, once per wire format, so a broadcast notification is serialised once.
#[derive(Debug)]
pub struct ServerMessage {
    pub kind: Cow<'static, str>,
    pub data: Option<Value>,
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
        Arc::new(Self {
            kind: kind.into(),
            data,
            reply_to,
            ws: OnceLock::new(),
            sse: OnceLock::new(),
        })
    }

    pub fn error(message: impl Into<String>, code: &str, reply_to: Option<Value>) -> Arc<Self> {
        Self::reply(
            "error",
            Some(json!({"error": message.into(), "code": code})),
            reply_to,
        )
    }

    /// `{"type":..,"data":..,"id":..}`
    pub fn ws_frame(&self) -> &Bytes {
        self.ws.get_or_init(|| {
            let mut out = Vec::with_capacity(64);
            out.extend_from_slice(b"{\"type\":");
            write_json(&mut out, &self.kind.as_ref());
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
            let data = self
                .data
                .as_ref()
                .map_or_else(|| "{}".to_owned(), Value::to_string);
            Bytes::from(format!("event: {}\ndata: {}\n\n", self.kind, data))
        })
    }

    pub fn approx_len(&self) -> usize {
        self.ws.get().map_or(128, Bytes::len)
    }
}

/// A parsed client command with the optional `id` to echo on the reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub id: Option<Value>,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Authenticate { token: String },
    Subscribe(SubscribeArgs),
    Unsubscribe { subscription_id: String },
    Publish(PublishArgs),
    Ping,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SubscribeArgs {
    pub event_types: Vec<String>,
    #[serde(default)]
    pub filters: Option<Filters>,
    /// WebSocket only: resume after this `seq` — the matching events after it are replayed,
    /// then live delivery follows without gap or duplicate.
    #[serde(default)]
    pub since: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PublishArgs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: Value,
    #[serde(default)]
    pub room_id: Option<String>,
    /// Only privileged identities (admin, API key) may publish on behalf of a user.
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct TokenArgs {
    token: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UnsubscribeArgs {
    subscription_id: String,
}

/// A command that could not be parsed: the error text and code to answer with.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub id: Option<Value>,
    pub message: String,
    pub code: &'static str,
}

impl Envelope {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ParseError {
            id: None,
            message: format!("invalid JSON: {e}"),
            code: code::INVALID_JSON,
        })?;
        let Value::Object(mut obj) = value else {
            return Err(ParseError {
                id: None,
                message: "a message must be a JSON object with a \"type\"".into(),
                code: code::INVALID_MESSAGE,
            });
        };
        let id = obj.remove("id");
        let fail = |message: String, code| ParseError {
            id: id.clone(),
            message,
            code,
        };
        let kind = match obj.remove("type") {
            Some(Value::String(s)) => s,
            _ => {
                return Err(fail(
                    "missing string field \"type\"".into(),
                    code::INVALID_MESSAGE,
                ));
            }
        };
        let args = payload(obj);
        let command = match kind.as_str() {
            "authenticate" => {
                args_as::<TokenArgs>(args).map(|a| Command::Authenticate { token: a.token })
            }
            "subscribe" => args_as(args).map(Command::Subscribe),
            "unsubscribe" => args_as::<UnsubscribeArgs>(args).map(|a| Command::Unsubscribe {
                subscription_id: a.subscription_id,
            }),
            "publish" => args_as(args).map(Command::Publish),
            "ping" => Ok(Command::Ping),
            other => {
                return Err(fail(
                    format!("unknown message type: {other}"),
                    code::UNKNOWN_TYPE,
                ));
            }
        }
        .map_err(|e| {
            fail(
                format!("invalid {kind} message: {e}"),
                code::VALIDATION_ERROR,
            )
        })?;
        Ok(Self { id, command })
    }
}

/// The command's arguments: the `data` object of an envelope, or the flat top-level fields.
fn payload(mut obj: Map<String, Value>) -> Value {
    match obj.remove("data") {
        Some(Value::Object(data)) => Value::Object(data),
        Some(other) => {
            obj.insert("data".into(), other);
            Value::Object(obj)
        }
        None => Value::Object(obj),
    }
}

fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    serde_json::to_writer(out, v).expect("json values serialise");
}

fn args_as<T: DeserializeOwned>(v: Value) -> Result<T, serde_json::Error> {
    serde_json::from_value(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_and_flat_forms() {
        let a = Envelope::parse(r#"{"type":"subscribe","data":{"eventTypes":["a.*"]},"id":3}"#)
            .unwrap();
        let b = Envelope::parse(r#"{"type":"subscribe","eventTypes":["a.*"]}"#).unwrap();
        assert_eq!(a.command, b.command);
        assert_eq!(a.id, Some(json!(3)));
    }

    #[test]
    fn publish_envelope_keeps_inner_data() {
        let e = Envelope::parse(
            r#"{"type":"publish","data":{"type":"chat.message","data":{"text":"hi"},"roomId":"r"}}"#,
        )
        .unwrap();
        let Command::Publish(p) = e.command else {
            panic!()
        };
        assert_eq!(p.kind, "chat.message");
        assert_eq!(p.data, json!({"text":"hi"}));
        assert_eq!(p.room_id.as_deref(), Some("r"));
    }

    #[test]
    fn errors_have_codes() {
        assert_eq!(
            Envelope::parse("{nope").unwrap_err().code,
            code::INVALID_JSON
        );
        assert_eq!(
            Envelope::parse("[1]").unwrap_err().code,
            code::INVALID_MESSAGE
        );
        let e = Envelope::parse(r#"{"type":"dance","id":"x"}"#).unwrap_err();
        assert_eq!((e.code, e.id), (code::UNKNOWN_TYPE, Some(json!("x"))));
        let e = Envelope::parse(r#"{"type":"subscribe","data":{"filters":{}}}"#).unwrap_err();
        assert_eq!(e.code, code::VALIDATION_ERROR);
    }

    #[test]
    fn server_message_frames() {
        let m = ServerMessage::reply("pong", None, Some(json!(1)));
        assert_eq!(&m.ws_frame()[..], br#"{"type":"pong","id":1}"#);
        assert_eq!(&m.sse_frame()[..], b"event: pong\ndata: {}\n\n");
    }
}
