//! Socket.IO and Engine.IO packets: arbitrary text decoded as a client's Engine.IO packet and,
//! as the data of a message, as a Socket.IO packet. Besides not panicking:
//! - a decoded Socket.IO packet encodes back to one that decodes to the same type, attachment
//!   count, namespace, acknowledgement id and payload;
//! - its payload has the shape of its type (an object or nothing for CONNECT, nothing for
//!   DISCONNECT, an array starting with a string for events, an array with an id for acks).
//!
//! The codec is compiled here from its own source file, as the `config` target does: it
//! depends on serde_json and thiserror only.
#![no_main]

#[path = "../../crates/server/src/transport/socketio/packet.rs"]
mod packet;

use libfuzzer_sys::fuzz_target;
use packet::{Kind, decode, decode_engine, encode};
use serde_json::Value;

fuzz_target!(|text: &str| {
    let _ = decode_engine(text);
    let Ok(p) = decode(text) else {
        return;
    };
    match (p.kind, &p.data) {
        (Kind::Connect, None | Some(Value::Object(_))) | (Kind::Disconnect, None) => {}
        (Kind::Event | Kind::BinaryEvent, Some(Value::Array(a))) => {
            assert!(matches!(a.first(), Some(Value::String(_))));
        }
        (Kind::Ack | Kind::BinaryAck, Some(Value::Array(_))) => assert!(p.id.is_some()),
        other => panic!("a {other:?} packet was accepted"),
    }
    assert!(p.namespace.starts_with('/') && !p.namespace.contains(','));
    let data = p.data.as_ref().map(Value::to_string);
    let wire = encode(p.kind, p.namespace, p.id, p.attachments, data.as_deref());
    let again = decode(&wire[1..]).expect("an encoded packet decodes");
    assert_eq!(again, p, "{wire}");
});
