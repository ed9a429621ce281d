//! Wire frames the load generator sends, and the cheap decoding of what it receives.
//!
//! Every message carries a small JSON payload `{"ts":<µs>,"pub":<publisher>,"pad":"xxx…"}`:
//! `ts` is the send time (or, in open loop, the scheduled send time) in microseconds since a
//! process-local epoch, `pub` the index of the publisher (so a designated subscriber can
//! release that publisher's closed-loop window), and `pad` fills the payload to
//! `--payload-bytes`. Herald carries it as the event's `data` object; the room protocol carries
//! it as JSON text inside `content` (escaped on the wire). The receiver does not parse the
//! frame: it searches for the `"ts` key, which works in both forms and in any key order.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Instant;

use memchr::memmem;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the process-local epoch (set on first use).
pub(crate) fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Appends the payload object, padded so it is `size` bytes long when that is possible.
/// With `escaped`, the quotes are written as `\"` (for embedding as a JSON string); the
/// padding still counts the unescaped length, which is the length of the string's content.
pub(crate) fn write_payload(
    out: &mut String,
    ts: u64,
    publisher: usize,
    size: usize,
    escaped: bool,
) {
    let q = if escaped { "\\\"" } else { "\"" };
    let start = out.len();
    let _ = write!(out, "{{{q}ts{q}:{ts},{q}pub{q}:{publisher},{q}pad{q}:{q}");
    // Unescaped length so far, plus the closing `"}`.
    let quotes_so_far = 7; // "ts" "pub" "pad" and the opening quote of the pad value
    let extra = if escaped { quotes_so_far } else { 0 };
    let unescaped = out.len() - start - extra + 2;
    for _ in 0..size.saturating_sub(unescaped) {
        out.push('x');
    }
    let _ = write!(out, "{q}}}");
}

/// `{"type":"publish","data":{"type":T,"roomId":R,"data":{…}},"id":ts}` — Herald's WebSocket
/// publish; the `id` is echoed on the `event.published` acknowledgement, which gives the ack
/// latency without any bookkeeping. `event_type` and `room` are already JSON strings (quoted).
pub(crate) fn herald_ws_publish(
    out: &mut String,
    event_type: &str,
    room: &str,
    ts: u64,
    publisher: usize,
    size: usize,
) {
    out.push_str("{\"type\":\"publish\",\"data\":");
    herald_http_publish(out, event_type, room, ts, publisher, size);
    let _ = write!(out, ",\"id\":{ts}}}");
}

/// `{"type":T,"roomId":R,"data":{…}}` — the body of `POST /api/realtime/publish`.
pub(crate) fn herald_http_publish(
    out: &mut String,
    event_type: &str,
    room: &str,
    ts: u64,
    publisher: usize,
    size: usize,
) {
    let _ = write!(out, "{{\"type\":{event_type},\"roomId\":{room},\"data\":");
    write_payload(out, ts, publisher, size, false);
    out.push('}');
}

/// `{"type":"message","room":R,"content":"{\"ts\":…}"}` — the seed-004 room protocol.
pub(crate) fn rooms_message(out: &mut String, room: &str, ts: u64, publisher: usize, size: usize) {
    let _ = write!(out, "{{\"type\":\"message\",\"room\":{room},\"content\":\"");
    write_payload(out, ts, publisher, size, true);
    out.push_str("\"}");
}

/// The unsigned integer value of the first key `"<name>` found in `frame`, whether written
/// `"name":123` or, inside a JSON string, `\"name\":123`.
pub(crate) fn find_number(frame: &[u8], key: &memmem::Finder<'_>) -> Option<u64> {
    let mut from = 0;
    while let Some(i) = key.find(&frame[from..]) {
        let mut j = from + i + key.needle().len();
        if frame.get(j) == Some(&b'\\') {
            j += 1;
        }
        if frame.get(j) == Some(&b'"') && frame.get(j + 1) == Some(&b':') {
            j += 2;
            while frame.get(j) == Some(&b' ') {
                j += 1;
            }
            if let Some(n) = parse_digits(&frame[j..]) {
                return Some(n);
            }
        }
        from += i + 1;
    }
    None
}

fn parse_digits(s: &[u8]) -> Option<u64> {
    let mut n: u64 = 0;
    let mut any = false;
    for &c in s {
        if !c.is_ascii_digit() {
            break;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        any = true;
    }
    any.then_some(n)
}

fn ts_finder() -> &'static memmem::Finder<'static> {
    static F: OnceLock<memmem::Finder<'static>> = OnceLock::new();
    F.get_or_init(|| memmem::Finder::new(b"\"ts"))
}

fn pub_finder() -> &'static memmem::Finder<'static> {
    static F: OnceLock<memmem::Finder<'static>> = OnceLock::new();
    F.get_or_init(|| memmem::Finder::new(b"\"pub"))
}

/// The send time stamped in a received message, if it is one of ours.
pub(crate) fn decode_ts(frame: &[u8]) -> Option<u64> {
    find_number(frame, ts_finder())
}

/// The publisher index stamped in a received message.
pub(crate) fn decode_publisher(frame: &[u8]) -> Option<usize> {
    find_number(frame, pub_finder()).map(|p| p as usize)
}

/// The numeric `id` echoed at the end of a Herald reply (`…,"id":123}`); the event's own `id`
/// inside `data` is a string and is not taken for it.
pub(crate) fn decode_reply_id(frame: &[u8]) -> Option<u64> {
    let i = memmem::rfind(frame, b"\"id\":")?;
    parse_digits(&frame[i + 5..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_requested_size_and_round_trips() {
        for size in [0, 10, 40, 100, 1000] {
            let mut s = String::new();
            write_payload(&mut s, 123_456_789, 7, size, false);
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            assert_eq!(v["ts"], 123_456_789);
            assert_eq!(v["pub"], 7);
            if size >= 40 {
                assert_eq!(s.len(), size, "{s}");
            }
            assert_eq!(decode_ts(s.as_bytes()), Some(123_456_789));
            assert_eq!(decode_publisher(s.as_bytes()), Some(7));
        }
    }

    #[test]
    fn room_message_content_is_json_text_of_the_payload_size() {
        let mut s = String::new();
        rooms_message(&mut s, "\"r-1\"", 42, 3, 100);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["room"], "r-1");
        let content = v["content"].as_str().unwrap();
        assert_eq!(content.len(), 100);
        let inner: serde_json::Value = serde_json::from_str(content).unwrap();
        assert_eq!(inner["ts"], 42);
        // What a peer relays: the content re-serialised inside its own message.
        let relayed = serde_json::json!({"type":"message","from":null,"content":content,"timestamp":1_700_000_000_000u64});
        let wire = relayed.to_string();
        assert_eq!(decode_ts(wire.as_bytes()), Some(42));
        assert_eq!(decode_publisher(wire.as_bytes()), Some(3));
    }

    #[test]
    fn herald_frames_decode_in_any_key_order() {
        let mut s = String::new();
        herald_ws_publish(&mut s, "\"bench.msg\"", "\"r\"", 99, 1, 100);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["data"]["data"]["ts"], 99);
        assert_eq!(v["id"], 99);
        // An event as the server delivers it, with sorted keys and a `timestamp` field.
        let event = r#"{"type":"event","data":{"data":{"pad":"xx","pub":2,"ts":12345},"id":"6f1c","seq":4,"timestamp":"2026-01-01T00:00:00.000Z","type":"bench.msg"}}"#;
        assert_eq!(decode_ts(event.as_bytes()), Some(12345));
        assert_eq!(decode_publisher(event.as_bytes()), Some(2));
        let ack =
            r#"{"type":"event.published","data":{"success":true,"id":"6f1c-22","seq":4},"id":777}"#;
        assert_eq!(decode_reply_id(ack.as_bytes()), Some(777));
        assert_eq!(
            decode_reply_id(br#"{"type":"event.published","data":{"id":"abc"}}"#),
            None
        );
        let mut body = String::new();
        herald_http_publish(&mut body, "\"bench.msg\"", "\"r\"", 5, 0, 100);
        let b: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(b["data"]["ts"], 5);
        assert_eq!(b["roomId"], "r");
    }

    #[test]
    fn other_messages_are_not_taken_for_ours() {
        assert_eq!(
            decode_ts(br#"{"type":"user_joined","userId":null,"room":"r"}"#),
            None
        );
        assert_eq!(decode_ts(br#"{"tsx":1,"timestamp":5}"#), None);
        assert_eq!(decode_ts(br#"{"ts":"no"}"#), None);
    }
}
