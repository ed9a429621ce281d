//! The wire format: Engine.IO v4 packets (a type digit, then data) and the Socket.IO v5 packets
//! they carry (`<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`).

use std::fmt::Write as _;

use serde_json::Value;

/// A packet that breaks the protocol: the session is closed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid packet: {0}")]
pub struct BadPacket(pub &'static str);

/// An Engine.IO text packet from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum EnginePacket<'a> {
    Close,
    Ping(&'a str),
    Pong,
    Message(&'a str),
    Upgrade,
    Noop,
}

pub fn decode_engine(text: &str) -> Result<EnginePacket<'_>, BadPacket> {
    let kind = *text.as_bytes().first().ok_or(BadPacket("empty packet"))?;
    if !kind.is_ascii_digit() {
        return Err(BadPacket("unknown Engine.IO packet type"));
    }
    let data = &text[1..];
    Ok(match kind {
        b'1' => EnginePacket::Close,
        b'2' => EnginePacket::Ping(data),
        b'3' => EnginePacket::Pong,
        b'4' => EnginePacket::Message(data),
        b'5' => EnginePacket::Upgrade,
        b'6' => EnginePacket::Noop,
        _ => return Err(BadPacket("unknown Engine.IO packet type")),
    })
}

/// Socket.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect = 0,
    Disconnect = 1,
    Event = 2,
    Ack = 3,
    ConnectError = 4,
    BinaryEvent = 5,
    BinaryAck = 6,
}

/// A decoded Socket.IO packet.
#[derive(Debug, PartialEq)]
pub struct Packet<'a> {
    pub kind: Kind,
    /// Binary attachments that follow as separate Engine.IO messages.
    pub attachments: usize,
    pub namespace: &'a str,
    pub id: Option<u64>,
    pub data: Option<Value>,
}

/// At most this many attachments per packet: each is held until the last one arrives.
const MAX_ATTACHMENTS: usize = 16;

/// Decodes the data of an Engine.IO message as a Socket.IO packet, checking the payload's
/// shape for its type.
pub fn decode(text: &str) -> Result<Packet<'_>, BadPacket> {
    let bytes = text.as_bytes();
    let kind = match bytes.first() {
        Some(b'0') => Kind::Connect,
        Some(b'1') => Kind::Disconnect,
        Some(b'2') => Kind::Event,
        Some(b'3') => Kind::Ack,
        Some(b'4') => Kind::ConnectError,
        Some(b'5') => Kind::BinaryEvent,
        Some(b'6') => Kind::BinaryAck,
        _ => return Err(BadPacket("unknown Socket.IO packet type")),
    };
    let mut rest = &text[1..];
    let mut attachments = 0;
    if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
        let dash = rest
            .find('-')
            .ok_or(BadPacket("binary packet without attachment count"))?;
        attachments = rest[..dash]
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_ATTACHMENTS).contains(n))
            .ok_or(BadPacket("bad attachment count"))?;
        rest = &rest[dash + 1..];
    }
    let mut namespace = "/";
    if rest.starts_with('/') {
        let end = rest.find(',').unwrap_or(rest.len());
        namespace = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or("");
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = match digits {
        0 => None,
        _ => Some(
            rest[..digits]
                .parse::<u64>()
                .map_err(|_| BadPacket("bad ack id"))?,
        ),
    };
    rest = &rest[digits..];
    let data = match rest {
        "" => None,
        json => Some(serde_json::from_str::<Value>(json).map_err(|_| BadPacket("bad JSON"))?),
    };
    let shape_ok = match (kind, &data) {
        (Kind::Connect, None | Some(Value::Object(_))) => true,
        (Kind::Disconnect, None) => true,
        (Kind::Event | Kind::BinaryEvent, Some(Value::Array(a))) => {
            matches!(a.first(), Some(Value::String(_)))
        }
        (Kind::Ack | Kind::BinaryAck, Some(Value::Array(_))) => id.is_some(),
        _ => false,
    };
    if !shape_ok {
        return Err(BadPacket("payload does not fit the packet type"));
    }
    Ok(Packet {
        kind,
        attachments,
        namespace,
        id,
        data,
    })
}

/// Encodes a Socket.IO packet as the Engine.IO message (`4…`) that carries it.
pub fn encode(
    kind: Kind,
    namespace: &str,
    id: Option<u64>,
    attachments: usize,
    data: Option<&str>,
) -> String {
    let mut out = String::with_capacity(8 + namespace.len() + data.map_or(0, str::len));
    out.push('4');
    out.push(char::from(b'0' + kind as u8));
    if attachments > 0 {
        let _ = write!(out, "{attachments}-");
    }
    if namespace != "/" {
        out.push_str(namespace);
        out.push(',');
    }
    if let Some(id) = id {
        let _ = write!(out, "{id}");
    }
    if let Some(data) = data {
        out.push_str(data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn engine_packets_by_type() {
        assert_eq!(decode_engine("4hello"), Ok(EnginePacket::Message("hello")));
        assert_eq!(decode_engine("2probe"), Ok(EnginePacket::Ping("probe")));
        assert_eq!(decode_engine("3"), Ok(EnginePacket::Pong));
        assert_eq!(decode_engine("5"), Ok(EnginePacket::Upgrade));
        assert_eq!(decode_engine("1"), Ok(EnginePacket::Close));
        assert!(decode_engine("").is_err());
        assert!(decode_engine("abc").is_err());
        assert!(decode_engine("7").is_err());
        assert!(decode_engine("\u{6ed}0").is_err());
    }

    #[test]
    fn socketio_packets_with_namespace_id_and_attachments() {
        let p = decode(r#"2/chat,12["message",{"a":1}]"#).unwrap();
        assert_eq!(
            (p.kind, p.namespace, p.id, p.data),
            (
                Kind::Event,
                "/chat",
                Some(12),
                Some(json!(["message", {"a": 1}]))
            )
        );
        let p = decode(r#"52-7["m",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#)
            .unwrap();
        assert_eq!(
            (p.kind, p.attachments, p.id),
            (Kind::BinaryEvent, 2, Some(7))
        );
        let p = decode("0/custom").unwrap();
        assert_eq!(
            (p.kind, p.namespace, p.data),
            (Kind::Connect, "/custom", None)
        );
        let p = decode(r#"0{"token":"x"}"#).unwrap();
        assert_eq!(p.data, Some(json!({"token": "x"})));
        assert_eq!(decode("1").unwrap().kind, Kind::Disconnect);
        assert_eq!(decode("3/chat,4[1]").unwrap().id, Some(4));
    }

    #[test]
    fn malformed_packets_are_refused() {
        for bad in [
            "",
            "abc",
            "\u{6ed}0",
            "9",
            "2{}",
            "2[]",
            "2[1]",
            r#"2abc["m"]"#,
            r#"2["m""#,
            "0[1]",
            r#"1["x"]"#,
            "3[1]",
            r#"5["m"]"#,
            r#"50-["m"]"#,
            r#"599-["m"]"#,
            r#"299999999999999999999999["m"]"#,
        ] {
            assert!(decode(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn encoding_round_trips() {
        assert_eq!(
            encode(Kind::Connect, "/", None, 0, Some(r#"{"sid":"s"}"#)),
            r#"40{"sid":"s"}"#
        );
        assert_eq!(
            encode(Kind::Ack, "/chat", Some(3), 0, Some("[1]")),
            "43/chat,3[1]"
        );
        assert_eq!(
            encode(Kind::BinaryAck, "/", Some(9), 2, Some("[]")),
            "462-9[]"
        );
        assert_eq!(encode(Kind::Disconnect, "/x", None, 0, None), "41/x,");
        let wire = encode(Kind::Event, "/chat", Some(5), 0, Some(r#"["a",1]"#));
        let p = decode(&wire[1..]).unwrap();
        assert_eq!((p.kind, p.namespace, p.id), (Kind::Event, "/chat", Some(5)));
    }
}
