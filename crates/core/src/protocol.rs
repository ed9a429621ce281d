//! The client/server message protocol shared by every transport: parsing client commands
//! (both the `{type, data}` envelope and the flat form of the seeds), the error codes, and —
//! re-exported from `wire` — the server's messages and the WebSocket dialects.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::subscription::Filters;
pub use crate::wire::{Dialect, ServerMessage};

/// Machine-readable error codes, shared by WebSocket `error` messages and HTTP error bodies.
pub mod code {
    pub const INVALID_JSON: &str = "INVALID_JSON";
    pub const INVALID_MESSAGE: &str = "INVALID_MESSAGE";
    pub const UNKNOWN_TYPE: &str = "UNKNOWN_TYPE";
    pub const VALIDATION_ERROR: &str = "VALIDATION_ERROR";
    pub const AUTH_FAILED: &str = "AUTH_FAILED";
    pub const AUTH_REQUIRED: &str = "AUTH_REQUIRED";
    pub const FORBIDDEN: &str = "FORBIDDEN";
    pub const ACCESS_DENIED: &str = "ACCESS_DENIED";
    pub const NOT_IN_ROOM: &str = "NOT_IN_ROOM";
    pub const CONFLICT: &str = "CONFLICT";
    pub const NOT_FOUND: &str = "NOT_FOUND";
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    pub const UNAVAILABLE: &str = "UNAVAILABLE";
    pub const INTERNAL: &str = "INTERNAL_ERROR";
}

/// A parsed client command with the optional `id` to echo on the reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub id: Option<Value>,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Authenticate {
        token: String,
    },
    Subscribe(SubscribeArgs),
    Unsubscribe {
        subscription_id: String,
    },
    Publish(PublishArgs),
    Ping,
    Join(JoinArgs),
    Leave {
        room: Option<String>,
    },
    /// Seed 001's `chat {text}` (to the current room, or `room`), seed 004's
    /// `message {room, content}` (`to_others`: everyone in the room but the sender).
    Chat {
        room: Option<String>,
        text: String,
        to_others: bool,
    },
    Typing {
        room: Option<String>,
        typing: bool,
    },
    PrivateMessage {
        target: String,
        text: String,
    },
    /// Subscribe to a stream route; with `lastId`, only its retained messages after that one.
    StreamSubscribe {
        stream: String,
        last_id: Option<String>,
    },
    StreamUnsubscribe {
        stream: String,
    },
    /// Join a collaborative document; with `version`, catch up from there.
    DocumentJoin {
        document: String,
        version: Option<u64>,
    },
    DocumentLeave {
        document: String,
    },
    /// A text change made on `base_version`: delete `length` UTF-16 code units at `position`,
    /// insert `text` there. `change_id`: the id the client gave it (at most
    /// `MAX_CHANGE_ID_BYTES`), echoed with the change wherever it is sent.
    DocumentChange {
        document: String,
        base_version: u64,
        position: usize,
        length: usize,
        text: String,
        change_id: Option<String>,
    },
    /// The participant's cursor (volatile): any small JSON value, e.g. `{position, selectionEnd}`.
    DocumentCursor {
        document: String,
        cursor: Value,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DocumentArgs {
    document_id: String,
    #[serde(default)]
    version: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChangeArgs {
    document_id: String,
    base_version: u64,
    position: usize,
    #[serde(default)]
    length: usize,
    #[serde(default)]
    text: String,
    #[serde(default)]
    change_id: Option<String>,
}

/// The longest `changeId` a `document.change` may carry, in bytes.
pub const MAX_CHANGE_ID_BYTES: usize = 64;

impl ChangeArgs {
    fn checked(self) -> Result<Self, serde_json::Error> {
        use serde::de::Error;
        match self.change_id.as_deref().map(str::len) {
            Some(0) => Err(Error::custom("changeId must not be empty")),
            Some(n) if n > MAX_CHANGE_ID_BYTES => Err(Error::custom(format!(
                "changeId is {n} bytes; a change id is at most {MAX_CHANGE_ID_BYTES}"
            ))),
            _ => Ok(self),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CursorArgs {
    document_id: String,
    #[serde(alias = "position")]
    cursor: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamArgs {
    stream: String,
    #[serde(default)]
    last_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct JoinArgs {
    #[serde(alias = "roomId")]
    pub room: String,
    /// How the client wants to be shown (seed 001): a name, or an object with a `name`.
    #[serde(default)]
    pub user: Option<Value>,
}

#[derive(Deserialize)]
struct RoomArgs {
    #[serde(default, alias = "roomId")]
    room: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChatArgs {
    #[serde(default, alias = "roomId")]
    room: Option<String>,
    #[serde(alias = "content")]
    text: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypingArgs {
    #[serde(default, alias = "roomId")]
    room: Option<String>,
    is_typing: bool,
}

#[derive(Deserialize)]
struct PrivateArgs {
    #[serde(alias = "to", alias = "userId")]
    target: String,
    #[serde(alias = "content")]
    text: String,
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
    /// Dot-separated segments of letters, digits, `_`, `-` and `:`; at most 128 characters.
    #[serde(rename = "type")]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[A-Za-z0-9_:-]+(\.[A-Za-z0-9_:-]+)*$", max_length = 128)
    )]
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
            "join" | "join_room" => args_as(args).map(Command::Join),
            "leave" | "leave_room" => {
                args_as::<RoomArgs>(args).map(|a| Command::Leave { room: a.room })
            }
            "chat" | "message" => args_as::<ChatArgs>(args).map(|a| Command::Chat {
                room: a.room,
                text: a.text,
                to_others: kind == "message",
            }),
            "typing" => args_as::<TypingArgs>(args).map(|a| Command::Typing {
                room: a.room,
                typing: a.is_typing,
            }),
            "typing_start" | "typing_stop" => args_as::<RoomArgs>(args).map(|a| Command::Typing {
                room: a.room,
                typing: kind == "typing_start",
            }),
            "stream.subscribe" => args_as::<StreamArgs>(args).map(|a| Command::StreamSubscribe {
                stream: a.stream,
                last_id: a.last_id,
            }),
            "stream.unsubscribe" => {
                args_as::<StreamArgs>(args).map(|a| Command::StreamUnsubscribe { stream: a.stream })
            }
            "private_message" => args_as::<PrivateArgs>(args).map(|a| Command::PrivateMessage {
                target: a.target,
                text: a.text,
            }),
            "document.join" => args_as::<DocumentArgs>(args).map(|a| Command::DocumentJoin {
                document: a.document_id,
                version: a.version,
            }),
            "document.leave" => args_as::<DocumentArgs>(args).map(|a| Command::DocumentLeave {
                document: a.document_id,
            }),
            "document.change" | "text_change" => args_as::<ChangeArgs>(args)
                .and_then(ChangeArgs::checked)
                .map(|a| Command::DocumentChange {
                    document: a.document_id,
                    base_version: a.base_version,
                    position: a.position,
                    length: a.length,
                    text: a.text,
                    change_id: a.change_id,
                }),
            "cursor_move" => args_as::<CursorArgs>(args).map(|a| Command::DocumentCursor {
                document: a.document_id,
                cursor: a.cursor,
            }),
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

fn args_as<T: DeserializeOwned>(v: Value) -> Result<T, serde_json::Error> {
    serde_json::from_value(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    /// Found by fuzzing (ws_command): serde_json's default float parsing may land one double
    /// off, so this id (as JavaScript's `JSON.stringify` writes it) came back as
    /// 4.461555555555555e33 and a published event's number changed on the way through.
    #[test]
    fn floats_are_parsed_exactly() {
        let x = 4.4615555555555556e33_f64;
        let e = Envelope::parse(r#"{"type":"ping","id":4.4615555555555556e33}"#).unwrap();
        assert_eq!(e.id, Some(json!(x)));
        let reply = ServerMessage::reply("pong", None, e.id);
        assert_eq!(
            &reply.ws_frame()[..],
            br#"{"type":"pong","id":4.4615555555555556e+33}"#
        );
        let e = Envelope::parse(
            r#"{"type":"publish","data":{"type":"a.b","data":{"price":4.4615555555555556e33}}}"#,
        )
        .unwrap();
        let Command::Publish(p) = e.command else {
            panic!()
        };
        assert_eq!(p.data["price"].as_f64(), Some(x));
    }

    #[test]
    fn room_commands_in_both_forms() {
        let flat = Envelope::parse(r#"{"type":"join","room":"general","user":"JohnDoe"}"#).unwrap();
        let env = Envelope::parse(r#"{"type":"join","data":{"room":"general","user":"JohnDoe"}}"#)
            .unwrap();
        assert_eq!(flat.command, env.command);
        let m = Envelope::parse(r#"{"type":"message","room":"r","content":"hi"}"#).unwrap();
        assert_eq!(
            m.command,
            Command::Chat {
                room: Some("r".into()),
                text: "hi".into(),
                to_others: true
            }
        );
        let t = Envelope::parse(r#"{"type":"typing_stop","room":"r"}"#).unwrap();
        assert_eq!(
            t.command,
            Command::Typing {
                room: Some("r".into()),
                typing: false
            }
        );
        let e = Envelope::parse(r#"{"type":"chat"}"#).unwrap_err();
        assert_eq!(e.code, code::VALIDATION_ERROR);
    }

    #[test]
    fn flat_messages_and_errors() {
        let m = ServerMessage::flat("user_left", json!({"user":"bob"}), None);
        assert_eq!(&m.ws_frame()[..], br#"{"type":"user_left","user":"bob"}"#);
        assert_eq!(
            &m.sse_frame()[..],
            b"event: user_left\ndata: {\"user\":\"bob\"}\n\n"
        );
        let e = ServerMessage::error("nope", code::ACCESS_DENIED, None);
        let v: Value = serde_json::from_slice(e.ws_frame()).unwrap();
        assert_eq!(
            v,
            json!({"type":"error","message":"nope","data":{"error":"nope","code":"ACCESS_DENIED"}})
        );
    }

    #[test]
    fn a_change_id_is_bounded() {
        let change = |id: &str| {
            Envelope::parse(&format!(
                r#"{{"type":"document.change","data":{{"documentId":"d","baseVersion":0,"position":0,"text":"a","changeId":"{id}"}}}}"#
            ))
        };
        let Command::DocumentChange { change_id, .. } = change("k1-7").unwrap().command else {
            panic!()
        };
        assert_eq!(change_id.as_deref(), Some("k1-7"));
        assert!(change(&"x".repeat(MAX_CHANGE_ID_BYTES)).is_ok());
        let e = change(&"x".repeat(MAX_CHANGE_ID_BYTES + 1)).unwrap_err();
        assert_eq!(e.code, code::VALIDATION_ERROR);
        assert!(e.message.contains("changeId is 65 bytes"), "{}", e.message);
        assert_eq!(change("").unwrap_err().code, code::VALIDATION_ERROR);
    }

    #[test]
    fn server_message_frames() {
        let m = ServerMessage::reply("pong", None, Some(json!(1)));
        assert_eq!(&m.ws_frame()[..], br#"{"type":"pong","id":1}"#);
        assert_eq!(&m.sse_frame()[..], b"event: pong\ndata: {}\n\n");
    }
}
