//! Socket.IO 4 over Engine.IO v4 on the WebSocket transport: the packets the load generator
//! writes, and the cheap parsing of what it reads (slices of the frame, no allocation).
//!
//! An Engine.IO packet is one text frame: a type digit and its payload — `0{…}` open,
//! `1` close, `2` ping, `3` pong, `4<payload>` message. A Socket.IO packet rides in a message:
//! `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`, where the namespace is written only
//! when it is not `/`, and the types are 0 CONNECT, 1 DISCONNECT, 2 EVENT, 3 ACK,
//! 4 CONNECT_ERROR, 5 BINARY_EVENT, 6 BINARY_ACK. An event's JSON is `["name",arg,…]`.

use std::fmt::Write as _;

use crate::payload;

/// The query that opens an Engine.IO v4 WebSocket directly (no long-polling handshake).
pub(crate) const QUERY: &str = "EIO=4&transport=websocket";
/// The default path of a Socket.IO server.
pub(crate) const DEFAULT_PATH: &str = "/socket.io/";
/// Engine.IO pong, the answer to the server's ping `2`.
pub(crate) const PONG: &str = "3";

pub(crate) const CONNECT: u8 = 0;
pub(crate) const DISCONNECT: u8 = 1;
pub(crate) const EVENT: u8 = 2;
pub(crate) const CONNECT_ERROR: u8 = 4;

/// An Engine.IO packet.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Engine<'a> {
    /// `0{"sid":…,"pingInterval":…,…}`: the handshake data.
    Open(&'a [u8]),
    Close,
    /// `2`, with an optional payload (`2probe` during an upgrade).
    Ping(&'a [u8]),
    Pong,
    /// `4…`: a Socket.IO packet.
    Message(&'a [u8]),
    /// Upgrade, noop, or something else.
    Other,
}

/// The Engine.IO packet of a text frame.
pub(crate) fn engine(frame: &[u8]) -> Engine<'_> {
    match frame.first() {
        Some(b'0') => Engine::Open(&frame[1..]),
        Some(b'1') => Engine::Close,
        Some(b'2') => Engine::Ping(&frame[1..]),
        Some(b'3') => Engine::Pong,
        Some(b'4') => Engine::Message(&frame[1..]),
        _ => Engine::Other,
    }
}

/// A Socket.IO packet, as slices of the frame it came in.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Packet<'a> {
    /// 0 CONNECT … 6 BINARY_ACK.
    pub kind: u8,
    /// Binary attachments announced (`5`/`6` only).
    pub attachments: u32,
    /// The namespace, `/` when the packet names none.
    pub nsp: &'a [u8],
    pub ack: Option<u64>,
    /// The JSON that follows (empty when there is none).
    pub data: &'a [u8],
}

/// Parses the Socket.IO packet inside an Engine.IO message.
pub(crate) fn packet(msg: &[u8]) -> Option<Packet<'_>> {
    let (&first, mut rest) = msg.split_first()?;
    if !(b'0'..=b'6').contains(&first) {
        return None;
    }
    let kind = first - b'0';
    let mut attachments = 0;
    if kind == 5 || kind == 6 {
        let dash = rest.iter().position(|&c| c == b'-')?;
        attachments = std::str::from_utf8(&rest[..dash]).ok()?.parse().ok()?;
        rest = &rest[dash + 1..];
    }
    let mut nsp: &[u8] = b"/";
    if rest.first() == Some(&b'/') {
        // The namespace runs to the first comma, or to the end when nothing follows it.
        let end = rest.iter().position(|&c| c == b',').unwrap_or(rest.len());
        nsp = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or(&[]);
    }
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    let ack = if digits > 0 {
        Some(std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?)
    } else {
        None
    };
    Some(Packet {
        kind,
        attachments,
        nsp,
        ack,
        data: &rest[digits..],
    })
}

impl<'a> Packet<'a> {
    /// An event's name and what follows it in the array (`,arg…]`, or `]`); `None` for other
    /// packets, and for names with escapes (none that the load generator waits for).
    pub(crate) fn event(&self) -> Option<(&'a [u8], &'a [u8])> {
        if self.kind != EVENT && self.kind != 5 {
            return None;
        }
        let rest = self.data.strip_prefix(b"[\"")?;
        let end = rest.iter().position(|&c| c == b'"' || c == b'\\')?;
        if rest[end] != b'"' {
            return None;
        }
        Some((&rest[..end], &rest[end + 1..]))
    }

    /// The event's name, if it is an event.
    pub(crate) fn event_name(&self) -> Option<&'a [u8]> {
        self.event().map(|(name, _)| name)
    }
}

/// The WebSocket path (with query) of a Socket.IO server at `path`: the Engine.IO query is
/// added unless the path already carries one.
pub(crate) fn ws_path(path: Option<&str>) -> String {
    let path = path.unwrap_or(DEFAULT_PATH);
    if path.contains('?') {
        path.to_owned()
    } else {
        format!("{path}?{QUERY}")
    }
}

/// Writes the Engine.IO message prefix, the packet type and the namespace (when not `/`)
/// with its comma.
fn head(out: &mut String, kind: u8, nsp: &str) {
    out.push('4');
    out.push((b'0' + kind) as char);
    if nsp != "/" {
        out.push_str(nsp);
        out.push(',');
    }
}

/// CONNECT to `nsp`, with `auth` (a JSON object) when given: `40`, `40/chat,{"token":"…"}`.
pub(crate) fn connect(out: &mut String, nsp: &str, auth: Option<&str>) {
    head(out, CONNECT, nsp);
    if let Some(auth) = auth {
        out.push_str(auth);
    }
}

/// An EVENT `42[/nsp,][ack]["name",arg…]`; `name` and each argument are JSON already.
pub(crate) fn event(out: &mut String, nsp: &str, ack: Option<u64>, name: &str, args: &[&str]) {
    head(out, EVENT, nsp);
    if let Some(id) = ack {
        let _ = write!(out, "{id}");
    }
    out.push('[');
    out.push_str(name);
    for a in args {
        out.push(',');
        out.push_str(a);
    }
    out.push(']');
}

/// `42[/nsp,]["message",{<room_key>:R,"content":"{\"ts\":…}"}]`: a message to room `room` (a
/// JSON string), its content the payload as JSON text, as the room protocol carries it.
pub(crate) fn message(
    out: &mut String,
    nsp: &str,
    room_key: &str,
    room: &str,
    ts: u64,
    publisher: usize,
    size: usize,
) {
    head(out, EVENT, nsp);
    let _ = write!(out, "[\"message\",{{\"{room_key}\":{room},\"content\":\"");
    payload::write_payload(out, ts, publisher, size, true);
    out.push_str("\"}]");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_packets() {
        let open = br#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
        match engine(open) {
            Engine::Open(d) => {
                let v: serde_json::Value = serde_json::from_slice(d).unwrap();
                assert_eq!(v["pingInterval"], 25000);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(engine(b"1"), Engine::Close);
        assert_eq!(engine(b"2"), Engine::Ping(b""));
        assert_eq!(engine(b"2probe"), Engine::Ping(b"probe"));
        assert_eq!(engine(b"3"), Engine::Pong);
        assert_eq!(engine(b"40"), Engine::Message(b"0"));
        assert_eq!(engine(b"6"), Engine::Other);
        assert_eq!(engine(b""), Engine::Other);
    }

    fn sio(frame: &[u8]) -> Packet<'_> {
        match engine(frame) {
            Engine::Message(m) => packet(m).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn connect_replies_in_both_namespaces() {
        let p = sio(br#"40{"sid":"abc"}"#);
        assert_eq!((p.kind, p.nsp, p.ack), (CONNECT, &b"/"[..], None));
        assert_eq!(p.data, br#"{"sid":"abc"}"#);
        let p = sio(br#"40/chat,{"sid":"abc"}"#);
        assert_eq!((p.kind, p.nsp), (CONNECT, &b"/chat"[..]));
        assert_eq!(p.data, br#"{"sid":"abc"}"#);
        let p = sio(br#"44/chat,{"message":"invalid token"}"#);
        assert_eq!((p.kind, p.nsp), (CONNECT_ERROR, &b"/chat"[..]));
        let v: serde_json::Value = serde_json::from_slice(p.data).unwrap();
        assert_eq!(v["message"], "invalid token");
        // A namespace with nothing after it, and the bare packets.
        let p = sio(b"41/chat");
        assert_eq!(
            (p.kind, p.nsp, p.data),
            (DISCONNECT, &b"/chat"[..], &b""[..])
        );
        let p = sio(b"41/chat,");
        assert_eq!(
            (p.kind, p.nsp, p.data),
            (DISCONNECT, &b"/chat"[..], &b""[..])
        );
        let p = sio(b"40");
        assert_eq!((p.kind, p.nsp, p.data), (CONNECT, &b"/"[..], &b""[..]));
    }

    #[test]
    fn events_with_namespaces_and_ack_ids() {
        let p = sio(br#"42["message",{"type":"message","from":null,"content":"x","timestamp":1}]"#);
        assert_eq!((p.kind, p.nsp, p.ack), (EVENT, &b"/"[..], None));
        let (name, rest) = p.event().unwrap();
        assert_eq!(name, b"message");
        assert!(rest.starts_with(b",{\"type\""));
        let p = sio(br#"4212["join","r-1"]"#);
        assert_eq!(p.ack, Some(12));
        assert_eq!(p.event_name(), Some(&b"join"[..]));
        let p = sio(br#"42/chat,7["room_history",{"roomId":"r","messages":[]}]"#);
        assert_eq!((p.nsp, p.ack), (&b"/chat"[..], Some(7)));
        assert_eq!(p.event_name(), Some(&b"room_history"[..]));
        let p = sio(br#"42/chat,["error",{"message":"Access denied"}]"#);
        assert_eq!((p.nsp, p.ack), (&b"/chat"[..], None));
        assert_eq!(p.event_name(), Some(&b"error"[..]));
        let p = sio(br#"42["pong"]"#);
        assert_eq!(p.event(), Some((&b"pong"[..], &b"]"[..])));
        // An ack carries a bare array; a binary event announces its attachments.
        let p = sio(br#"43/chat,5["ok"]"#);
        assert_eq!(
            (p.kind, p.nsp, p.ack, p.data),
            (3, &b"/chat"[..], Some(5), &br#"["ok"]"#[..])
        );
        assert_eq!(p.event(), None);
        let p = sio(br#"451-/chat,3["upload",{"_placeholder":true,"num":0}]"#);
        assert_eq!(
            (p.kind, p.attachments, p.nsp, p.ack),
            (5, 1, &b"/chat"[..], Some(3))
        );
        assert_eq!(p.event_name(), Some(&b"upload"[..]));
        assert_eq!(sio(br#"42["a\"b",1]"#).event_name(), None);
        assert!(packet(b"9").is_none());
        assert!(packet(b"").is_none());
        assert!(packet(b"5x").is_none());
    }

    #[test]
    fn written_packets_parse_back() {
        let mut s = String::new();
        connect(&mut s, "/", None);
        assert_eq!(s, "40");
        s.clear();
        connect(&mut s, "/chat", Some(r#"{"token":"t"}"#));
        assert_eq!(s, r#"40/chat,{"token":"t"}"#);
        let p = sio(s.as_bytes());
        assert_eq!(
            (p.kind, p.nsp, p.data),
            (CONNECT, &b"/chat"[..], &br#"{"token":"t"}"#[..])
        );
        s.clear();
        event(&mut s, "/", None, "\"join\"", &["\"r-1\""]);
        assert_eq!(s, r#"42["join","r-1"]"#);
        s.clear();
        event(&mut s, "/chat", Some(3), "\"join_room\"", &["\"r-1\""]);
        assert_eq!(s, r#"42/chat,3["join_room","r-1"]"#);
        let p = sio(s.as_bytes());
        assert_eq!(
            (p.nsp, p.ack, p.event_name()),
            (&b"/chat"[..], Some(3), Some(&b"join_room"[..]))
        );
        s.clear();
        event(&mut s, "/", None, "\"ping\"", &[]);
        assert_eq!(s, r#"42["ping"]"#);
    }

    #[test]
    fn message_carries_the_payload_in_its_content() {
        for (nsp, key) in [("/", "room"), ("/chat", "roomId")] {
            let mut s = String::new();
            message(&mut s, nsp, key, "\"bench-3\"", 4242, 5, 100);
            let p = sio(s.as_bytes());
            assert_eq!(p.nsp, nsp.as_bytes());
            assert_eq!(p.event_name(), Some(&b"message"[..]));
            let v: serde_json::Value = serde_json::from_slice(p.data).unwrap();
            assert_eq!(v[1][key], "bench-3");
            let content = v[1]["content"].as_str().unwrap();
            assert_eq!(content.len(), 100);
            // What a server relays: the content inside its own message object.
            let relayed = serde_json::json!(["message", {"id":"m1","roomId":"bench-3","userId":"u","userName":"bench","content":content,"timestamp":"2026-01-01T00:00:00.000Z"}]);
            let frame = format!("42/chat,{relayed}");
            let p = sio(frame.as_bytes());
            let (_, rest) = p.event().unwrap();
            assert_eq!(payload::decode_ts(rest), Some(4242));
            assert_eq!(payload::decode_publisher(rest), Some(5));
        }
    }

    #[test]
    fn path_gets_the_engine_query() {
        assert_eq!(ws_path(None), "/socket.io/?EIO=4&transport=websocket");
        assert_eq!(ws_path(Some("/rt/")), "/rt/?EIO=4&transport=websocket");
        assert_eq!(
            ws_path(Some("/x/?EIO=4&transport=websocket&a=1")),
            "/x/?EIO=4&transport=websocket&a=1"
        );
    }
}
