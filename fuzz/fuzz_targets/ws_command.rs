//! The WebSocket command parser on arbitrary text: `Envelope::parse`, as the session calls it
//! on every text frame. Besides not panicking:
//! - the outcome is the one the message's shape calls for: `INVALID_JSON` exactly when the
//!   text is not JSON, `INVALID_MESSAGE` when it is not an object with a string `type`,
//!   `UNKNOWN_TYPE` for a type no command has, and otherwise a command or `VALIDATION_ERROR`;
//! - the `id` is echoed as sent (on errors too, once the message is an object);
//! - a parsed command written back canonically, in the envelope form and (where it has one)
//!   the flat form, parses to the same command and id;
//! - the error reply encodes to a JSON frame carrying the same code.
#![no_main]

use herald_core::protocol::{Envelope, ServerMessage, code};
use herald_fuzz::{COMMAND_TYPES, envelope_form, flat_form};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = Envelope::parse(text);
    assert_eq!(parsed, Envelope::parse(text), "parsing is deterministic");

    let json = serde_json::from_str::<Value>(text);
    let object = json.as_ref().ok().and_then(Value::as_object);
    let sent_id = object.and_then(|o| o.get("id")).cloned();
    let kind = object.and_then(|o| o.get("type")).and_then(Value::as_str);

    match &parsed {
        Ok(env) => {
            let kind = kind.expect("a parsed command had a string type");
            assert!(
                COMMAND_TYPES.contains(&kind),
                "parsed unknown type {kind:?}"
            );
            assert_eq!(env.id, sent_id, "id echoed as sent");
            let again = envelope_form(env).to_string();
            assert_eq!(
                Envelope::parse(&again).as_ref(),
                Ok(env),
                "envelope form {again}"
            );
            if let Some(flat) = flat_form(env) {
                let flat = flat.to_string();
                assert_eq!(Envelope::parse(&flat).as_ref(), Ok(env), "flat form {flat}");
            }
        }
        Err(e) => {
            let expected = match (&json, object, kind) {
                (Err(_), _, _) => code::INVALID_JSON,
                (Ok(_), None, _) | (Ok(_), Some(_), None) => code::INVALID_MESSAGE,
                (Ok(_), Some(_), Some(k)) if !COMMAND_TYPES.contains(&k) => code::UNKNOWN_TYPE,
                _ => code::VALIDATION_ERROR,
            };
            assert_eq!(e.code, expected, "error {e:?}");
            assert_eq!(e.id, sent_id, "id echoed on the error");
            let reply = ServerMessage::error(e.message.clone(), e.code, e.id.clone());
            let frame: Value = serde_json::from_slice(reply.ws_frame()).expect("reply is JSON");
            assert_eq!(frame["data"]["code"], e.code);
            assert_eq!(frame.get("id"), e.id.as_ref());
        }
    }
});
