//! The WebSocket protocol, end to end: real sockets against the real `herald` binary. Every test
//! starts its own server and asserts the exact shape of what the server sends.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};

/// How long "nothing else arrives" is checked for, after the last expected message.
const QUIET: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------------------------
// Helpers

fn sorted_keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("expected an object, got {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

fn is_uuid(v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn is_timestamp(v: &Value) -> bool {
    // `2024-01-02T03:04:05.678Z`, as JavaScript's `Date.toISOString()` writes it.
    v.as_str()
        .is_some_and(|s| s.len() == 24 && s.ends_with('Z') && s.as_bytes()[10] == b'T')
}

/// Asserts `v` is exactly `{"type":"error","data":{"error":<text>,"code":code}}` plus `"id"`
/// when `id` is given.
#[track_caller]
fn assert_error(v: &Value, code: &str, id: Option<Value>) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["data"]["code"], code, "{v}");
    assert!(
        v["data"]["error"].as_str().is_some_and(|s| !s.is_empty()),
        "error text: {v}"
    );
    assert_eq!(sorted_keys(&v["data"]), ["code", "error"], "{v}");
    // The flat `message` is what seed 001's client shows.
    assert_eq!(v["message"], v["data"]["error"], "{v}");
    match id {
        Some(id) => {
            assert_eq!(v["id"], id, "{v}");
            assert_eq!(sorted_keys(v), ["data", "id", "message", "type"], "{v}");
        }
        None => assert_eq!(sorted_keys(v), ["data", "message", "type"], "{v}"),
    }
}

/// Asserts `v` is the `event` frame of the acknowledged event `ack` with these fields.
#[track_caller]
fn assert_event(v: &Value, ack: &Value, user: Option<&str>, room: Option<&str>, data: &Value) {
    assert_eq!(sorted_keys(v), ["data", "type"], "{v}");
    assert_eq!(v["type"], "event", "{v}");
    let e = &v["data"];
    assert_eq!(e["id"], ack["id"], "{v}");
    assert_eq!(e["seq"], ack["seq"], "{v}");
    assert_eq!(e["type"], ack["type"], "{v}");
    assert_eq!(e["timestamp"], ack["timestamp"], "{v}");
    assert_eq!(&e["data"], data, "{v}");
    let mut keys = vec!["data", "id", "seq", "timestamp", "type"];
    match user {
        Some(u) => {
            assert_eq!(e["userId"], u, "{v}");
            keys.push("userId");
        }
        None => assert!(e.get("userId").is_none(), "{v}"),
    }
    match room {
        Some(r) => {
            assert_eq!(e["roomId"], r, "{v}");
            keys.push("roomId");
        }
        None => assert!(e.get("roomId").is_none(), "{v}"),
    }
    if e.get("metadata").is_some() {
        keys.push("metadata");
    }
    keys.sort();
    assert_eq!(sorted_keys(e), keys, "{v}");
}

/// Asserts an HTTP acknowledgement / `event.published` body.
#[track_caller]
fn assert_published_body(d: &Value, kind: &str) {
    assert_eq!(
        sorted_keys(d),
        ["id", "seq", "success", "timestamp", "type"],
        "{d}"
    );
    assert_eq!(d["success"], true, "{d}");
    assert!(is_uuid(&d["id"]), "{d}");
    assert!(d["seq"].as_u64().is_some_and(|s| s > 0), "{d}");
    assert_eq!(d["type"], kind, "{d}");
    assert!(is_timestamp(&d["timestamp"]), "{d}");
}

/// Reads `n` messages, asserting each is an `event`; returns their `data` objects.
async fn recv_events(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let v = ws.recv().await;
        assert_eq!(v["type"], "event", "expected an event, got {v}");
        out.push(v["data"].clone());
    }
    out
}

/// Asserts that nothing but pings arrives on any of `conns` for `QUIET` (all at once).
async fn all_silent<'a>(conns: impl IntoIterator<Item = &'a mut Ws>) {
    futures_util::future::join_all(conns.into_iter().map(|ws| ws.expect_silence(QUIET))).await;
}

/// Sends `ping` with `id` and asserts the exact `pong` (the connection is still usable).
async fn assert_alive(ws: &mut Ws, id: Value) {
    ws.send(json!({"type": "ping", "id": id})).await;
    let v = ws.recv().await;
    assert_eq!(v, json!({"type": "pong", "id": id}));
}

/// A WebSocket handshake that the server refused: the HTTP status and JSON body.
async fn refused_handshake(server: &Server, path: &str) -> (u16, Value) {
    match tokio_tungstenite::connect_async(server.ws_url(path)).await {
        Ok(_) => panic!("the handshake was accepted"),
        Err(tungstenite::Error::Http(res)) => {
            let body = res
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (res.status().as_u16(), body)
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
    }
}

fn close_code(frame: &Option<tungstenite::protocol::CloseFrame>) -> Option<u16> {
    frame.as_ref().map(|f| u16::from(f.code))
}

async fn stats(server: &Server) -> Value {
    let (status, body) = get(server, "/api/realtime/stats", Some(&admin_token())).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// A WebSocket client on a bare TCP socket: it never answers pings and never sends anything
/// after the handshake, which is what a dead or stuck peer looks like to the server.
struct RawWs {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    async fn connect(server: &Server, path: &str) -> RawWs {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            server.addr
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut raw = RawWs {
            tcp,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(raw.fill().await, "connection closed during the handshake");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.buf.drain(..end);
        raw
    }

    /// Reads more bytes; false at end of stream (or reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("timed out reading the raw socket")
        {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next frame as (opcode, payload); None when the stream ends. Server frames are
    /// unmasked and these tests' frames are never fragmented.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let opcode = self.buf[0] & 0x0f;
                let (len, header) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= header + len {
                    let payload = self.buf[header..header + len].to_vec();
                    self.buf.drain(..header + len);
                    return Some((opcode, payload));
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }
}

/// Publishes over HTTP with the API key (which may set any `userId`).
async fn publish_as_service(server: &Server, body: Value) -> Value {
    let ack = publish(server, API_KEY, body).await;
    assert_published_body(&ack, ack["type"].as_str().unwrap());
    ack
}

// ---------------------------------------------------------------------------------------------
// Connecting and authenticating

#[tokio::test]
async fn connection_established_on_root_and_ws() {
    let server = Server::start();
    let mut ids = HashSet::new();
    let mut open = Vec::new();
    for path in ["/", "/ws", "/", "/ws"] {
        let (mut stream, res) = tokio_tungstenite::connect_async(server.ws_url(path))
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 101);
        let first = match tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => serde_json::from_str::<Value>(t.as_str()).unwrap(),
            other => panic!("expected connection.established, got {other:?}"),
        };
        assert_eq!(sorted_keys(&first), ["data", "type"], "{first}");
        assert_eq!(first["type"], "connection.established", "{first}");
        assert_eq!(sorted_keys(&first["data"]), ["connectionId"], "{first}");
        assert!(is_uuid(&first["data"]["connectionId"]), "{first}");
        assert!(
            ids.insert(first["data"]["connectionId"].as_str().unwrap().to_owned()),
            "connection ids are unique"
        );
        // Kept open, so the server counts it below.
        open.push(stream);
    }
    let st = stats(&server).await;
    assert_eq!(st["connections"]["total"], 4, "{st}");
    assert_eq!(st["connections"]["byType"]["websocket"], 4, "{st}");

    // A plain GET of `/` is the dashboard, not a WebSocket.
    let res = http().get(server.url("/")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(res.text().await.unwrap().contains("Herald"));
}

#[tokio::test]
async fn authenticate_succeeds_and_bad_tokens_fail_without_closing() {
    let server = Server::start();
    let mut ws = Ws::connect(&server, "/ws").await;

    // Every failure is an AUTH_FAILED error echoing the id; the connection stays usable.
    let alg_none =
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
    let bad = [
        ("garbage", "not-a-jwt".to_owned()),
        ("expired", token_with("alice", None, -3600, SECRET)),
        (
            "wrong-signature",
            token_with("alice", None, 3600, "some-other-secret"),
        ),
        ("alg-none", alg_none.to_owned()),
        ("empty", String::new()),
        (
            "admin-wrong-signature",
            token_with("admin", Some("admin"), 3600, "nope"),
        ),
    ];
    for (i, (what, tok)) in bad.iter().enumerate() {
        ws.send(json!({"type": "authenticate", "data": {"token": tok}, "id": what}))
            .await;
        let v = ws.recv().await;
        assert_error(&v, "AUTH_FAILED", Some(json!(what)));
        assert_alive(&mut ws, json!(i)).await;
    }
    // Still anonymous: publishing needs authentication.
    ws.send(json!({"type": "publish", "data": {"type": "a.b"}, "id": "p"}))
        .await;
    assert_error(&ws.recv().await, "AUTH_REQUIRED", Some(json!("p")));

    // Success, in the envelope form with an id.
    ws.send(json!({"type": "authenticate", "data": {"token": token("alice")}, "id": 42}))
        .await;
    assert_eq!(
        ws.recv().await,
        json!({"type": "authenticated", "data": {"userId": "alice"}, "id": 42})
    );
    // The flat form, without an id; re-authenticating as the same user refreshes the token,
    // as another user is refused (the connection's rooms and subscriptions were granted to
    // the first).
    ws.send(json!({"type": "authenticate", "token": token("alice")}))
        .await;
    assert_eq!(
        ws.recv().await,
        json!({"type": "authenticated", "data": {"userId": "alice"}})
    );
    ws.send(json!({"type": "authenticate", "token": token("bob"), "id": "b"}))
        .await;
    assert_error(&ws.recv().await, "CONFLICT", Some(json!("b")));
    // The API key is accepted as a credential too (the service identity).
    let mut service = Ws::connect(&server, "/ws").await;
    service
        .send(json!({"type": "authenticate", "data": {"token": API_KEY}}))
        .await;
    assert_eq!(
        service.recv().await,
        json!({"type": "authenticated", "data": {"userId": "service"}})
    );
    // Missing token field: a validation error, not an auth failure.
    ws.send(json!({"type": "authenticate", "data": {}, "id": "t"}))
        .await;
    assert_error(&ws.recv().await, "VALIDATION_ERROR", Some(json!("t")));
    assert_alive(&mut ws, json!("end")).await;
}

// ---------------------------------------------------------------------------------------------
// Subscribing

#[tokio::test]
async fn subscribe_envelope_and_flat_forms_echo_ids() {
    let server = Server::start();
    let mut ws = Ws::connect(&server, "/ws").await;

    ws.send(json!({
        "type": "subscribe",
        "data": {"eventTypes": ["chat.message", "order.*", "chat.message"]},
        "id": "s1"
    }))
    .await;
    let a = ws.recv().await;
    assert_eq!(sorted_keys(&a), ["data", "id", "type"], "{a}");
    assert_eq!(a["type"], "subscription.created");
    assert_eq!(a["id"], "s1");
    assert_eq!(
        sorted_keys(&a["data"]),
        ["eventTypes", "filters", "subscriptionId"]
    );
    assert!(is_uuid(&a["data"]["subscriptionId"]), "{a}");
    // Duplicates are dropped; no filters is `{}`.
    assert_eq!(a["data"]["eventTypes"], json!(["chat.message", "order.*"]));
    assert_eq!(a["data"]["filters"], json!({}));

    ws.send(json!({
        "type": "subscribe",
        "eventTypes": ["*"],
        "filters": {"roomId": "r1", "userId": "alice", "custom": {"level": "high"}},
        "id": 7
    }))
    .await;
    let b = ws.recv().await;
    assert_eq!(
        b,
        json!({
            "type": "subscription.created",
            "data": {
                "subscriptionId": b["data"]["subscriptionId"],
                "eventTypes": ["*"],
                "filters": {"roomId": "r1", "userId": "alice", "custom": {"level": "high"}},
            },
            "id": 7
        })
    );
    assert!(is_uuid(&b["data"]["subscriptionId"]));
    assert_ne!(a["data"]["subscriptionId"], b["data"]["subscriptionId"]);

    // Flat form without an id: no `id` on the reply.
    ws.send(json!({"type": "subscribe", "eventTypes": ["x.y"]}))
        .await;
    let c = ws.recv().await;
    assert_eq!(sorted_keys(&c), ["data", "type"], "{c}");
    assert_eq!(c["data"]["eventTypes"], json!(["x.y"]));

    // Any JSON value is echoed as the id: on pong, on replies and on errors.
    for id in [json!("abc"), json!(0), json!({"n": [1, 2]}), json!(null)] {
        ws.send(json!({"type": "ping", "id": id})).await;
        assert_eq!(ws.recv().await, json!({"type": "pong", "id": id}));
    }
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong"}));
    ws.send(json!({"type": "subscribe", "data": {"eventTypes": ["bad type!"]}, "id": [9]}))
        .await;
    assert_error(&ws.recv().await, "VALIDATION_ERROR", Some(json!([9])));
    ws.send(
        json!({"type": "unsubscribe", "subscriptionId": c["data"]["subscriptionId"], "id": "u"}),
    )
    .await;
    assert_eq!(
        ws.recv().await,
        json!({"type": "subscription.removed", "data": {"subscriptionId": c["data"]["subscriptionId"]}, "id": "u"})
    );

    let st = stats(&server).await;
    assert_eq!(st["connections"]["subscriptions"], 2, "{st}");
}

#[tokio::test]
async fn type_patterns_and_filters_deliver_exactly_the_matching_events_in_order() {
    let server = Server::start_open();
    let subscriptions: [(&str, Value, Value); 9] = [
        ("exact", json!(["chat.message"]), json!({})),
        ("prefix", json!(["order.*"]), json!({})),
        ("deep-prefix", json!(["order.shipped.*"]), json!({})),
        ("all", json!(["*"]), json!({})),
        ("user", json!(["*"]), json!({"userId": "alice"})),
        ("room", json!(["*"]), json!({"roomId": "r1"})),
        ("custom", json!(["*"]), json!({"custom": {"level": "high"}})),
        (
            "combined",
            json!(["order.*", "chat.message"]),
            json!({"roomId": "r1", "custom": {"n": 2, "level": "low"}}),
        ),
        (
            "two-types",
            json!(["chat.message", "system.alert"]),
            json!({}),
        ),
    ];
    let mut subs = Vec::new();
    for (name, types, filters) in &subscriptions {
        let mut ws = Ws::connect(&server, "/ws").await;
        ws.send(json!({"type": "subscribe", "data": {"eventTypes": types, "filters": filters}}))
            .await;
        let r = ws.recv().await;
        assert_eq!(r["type"], "subscription.created", "{name}: {r}");
        assert_eq!(&r["data"]["filters"], filters, "{name}");
        subs.push((*name, ws));
    }

    /// (label, type, userId, roomId, data)
    type Spec = (
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        Value,
    );
    let events: [Spec; 11] = [
        (
            "e1",
            "chat.message",
            Some("alice"),
            Some("r1"),
            json!({"level": "high"}),
        ),
        ("e2", "chat.messages", Some("bob"), None, json!({})),
        (
            "e3",
            "order.created",
            Some("bob"),
            Some("r1"),
            json!({"level": "low", "n": 2}),
        ),
        (
            "e4",
            "order.shipped.partial",
            Some("alice"),
            Some("r2"),
            json!({"level": "high"}),
        ),
        (
            "e5",
            "orders.x",
            Some("alice"),
            None,
            json!({"level": "high"}),
        ),
        (
            "e6",
            "order",
            Some("carol"),
            Some("r1"),
            json!({"level": "high"}),
        ),
        (
            "e7",
            "system.alert",
            None,
            None,
            json!({"level": "HIGH", "n": 2}),
        ),
        (
            "e8",
            "chat.message",
            Some("bob"),
            Some("r2"),
            json!({"level": "high", "n": "2"}),
        ),
        (
            "e9",
            "order.shipped",
            Some("alice"),
            Some("r1"),
            json!({"level": "low", "n": 2.5}),
        ),
        // Markers: the last events each subscriber should receive.
        (
            "m1",
            "chat.message",
            Some("alice"),
            Some("r1"),
            json!({"level": "low", "n": 2}),
        ),
        (
            "m2",
            "order.shipped.done",
            Some("alice"),
            Some("r1"),
            json!({"level": "high"}),
        ),
    ];
    let mut acks = BTreeMap::new();
    for (label, kind, user, room, data) in &events {
        let mut body = json!({"type": kind, "data": data});
        if let Some(u) = user {
            body["userId"] = json!(u);
        }
        if let Some(r) = room {
            body["roomId"] = json!(r);
        }
        acks.insert(*label, publish_as_service(&server, body).await);
    }
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| acks[e.0]["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    let expected: BTreeMap<&str, Vec<&str>> = [
        ("exact", vec!["e1", "e8", "m1"]),
        ("prefix", vec!["e3", "e4", "e9", "m2"]),
        ("deep-prefix", vec!["e4", "m2"]),
        (
            "all",
            vec![
                "e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8", "e9", "m1", "m2",
            ],
        ),
        ("user", vec!["e1", "e4", "e5", "e9", "m1", "m2"]),
        ("room", vec!["e1", "e3", "e6", "e9", "m1", "m2"]),
        ("custom", vec!["e1", "e4", "e5", "e6", "e8", "m2"]),
        ("combined", vec!["e3", "m1"]),
        ("two-types", vec!["e1", "e7", "e8", "m1"]),
    ]
    .into_iter()
    .collect();

    for (name, ws) in &mut subs {
        let want = &expected[name];
        let got = recv_events(ws, want.len()).await;
        let got_labels: Vec<&str> = got
            .iter()
            .map(|e| {
                acks.iter()
                    .find(|(_, a)| a["seq"] == e["seq"])
                    .map_or("?", |(l, _)| *l)
            })
            .collect();
        assert_eq!(&got_labels, want, "subscriber {name}");
        for e in &got {
            let label = events
                .iter()
                .find(|x| acks[x.0]["seq"] == e["seq"])
                .unwrap();
            assert_event(
                &json!({"type": "event", "data": e}),
                &acks[label.0],
                Some(label.2.unwrap_or("service")),
                label.3,
                &label.4,
            );
        }
    }
    all_silent(subs.iter_mut().map(|(_, ws)| ws)).await;
}

#[tokio::test]
async fn overlapping_subscriptions_on_one_connection_deliver_an_event_once() {
    let server = Server::start_open();
    let mut ws = Ws::connect(&server, "/ws").await;
    ws.subscribe(&["*"], json!({})).await;
    ws.subscribe(&["chat.*"], json!({})).await;
    ws.subscribe(&["chat.message", "chat.*", "*"], json!({"roomId": "r1"}))
        .await;
    ws.subscribe(&["chat.message"], json!({"custom": {"k": 1}}))
        .await;
    let a = publish_as_service(
        &server,
        json!({"type": "chat.message", "roomId": "r1", "data": {"k": 1}}),
    )
    .await;
    let b = publish_as_service(&server, json!({"type": "other.thing", "data": {}})).await;
    let got = recv_events(&mut ws, 2).await;
    assert_eq!(got[0]["seq"], a["seq"]);
    assert_eq!(got[1]["seq"], b["seq"]);
    ws.expect_silence(QUIET).await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_unknown_ids_are_not_found() {
    let server = Server::start();
    let mut ws = Ws::connect(&server, "/ws").await;
    let sid = ws.subscribe(&["chat.*"], json!({})).await;
    ws.subscribe(&["marker"], json!({})).await;

    let first =
        publish_as_service(&server, json!({"type": "chat.message", "data": {"n": 1}})).await;
    assert_eq!(recv_events(&mut ws, 1).await[0]["seq"], first["seq"]);

    ws.send(json!({"type": "unsubscribe", "data": {"subscriptionId": sid}, "id": "u1"}))
        .await;
    assert_eq!(
        ws.recv().await,
        json!({"type": "subscription.removed", "data": {"subscriptionId": sid}, "id": "u1"})
    );
    publish_as_service(&server, json!({"type": "chat.message", "data": {"n": 2}})).await;
    let marker = publish_as_service(&server, json!({"type": "marker", "data": {}})).await;
    assert_eq!(recv_events(&mut ws, 1).await[0]["seq"], marker["seq"]);
    ws.expect_silence(QUIET).await;

    // Unknown ids: already removed, never existed, not a UUID.
    for (id, sub) in [
        ("again", sid.clone()),
        ("random", "00000000-0000-4000-8000-000000000000".to_owned()),
        ("garbage", "nope".to_owned()),
    ] {
        ws.send(json!({"type": "unsubscribe", "data": {"subscriptionId": sub}, "id": id}))
            .await;
        assert_error(&ws.recv().await, "NOT_FOUND", Some(json!(id)));
    }
    // Another connection's subscription cannot be removed from here.
    let mut other = Ws::connect(&server, "/ws").await;
    let theirs = other.subscribe(&["marker"], json!({})).await;
    ws.send(json!({"type": "unsubscribe", "subscriptionId": theirs, "id": "theirs"}))
        .await;
    assert_error(&ws.recv().await, "NOT_FOUND", Some(json!("theirs")));
    let m2 = publish_as_service(&server, json!({"type": "marker", "data": {}})).await;
    assert_eq!(recv_events(&mut other, 1).await[0]["seq"], m2["seq"]);
    assert_eq!(recv_events(&mut ws, 1).await[0]["seq"], m2["seq"]);
    // Missing subscriptionId is a validation error.
    ws.send(json!({"type": "unsubscribe", "data": {}, "id": 1}))
        .await;
    assert_error(&ws.recv().await, "VALIDATION_ERROR", Some(json!(1)));
    assert_alive(&mut ws, json!(2)).await;
}

// ---------------------------------------------------------------------------------------------
// Publishing over WebSocket

#[tokio::test]
async fn publish_over_websocket() {
    let server = Server::start_open();
    let mut sub = Ws::connect(&server, "/").await;
    sub.subscribe(&["*"], json!({})).await;

    let mut ws = Ws::connect(&server, "/ws").await;
    let event = json!({"type": "chat.message", "data": {"text": "hi"}, "roomId": "r1", "metadata": {"k": "v"}});
    ws.send(json!({"type": "publish", "data": event, "id": 1}))
        .await;
    assert_error(&ws.recv().await, "AUTH_REQUIRED", Some(json!(1)));

    ws.send(json!({"type": "authenticate", "data": {"token": token("alice")}}))
        .await;
    assert_eq!(ws.recv().await["type"], "authenticated");

    ws.send(json!({"type": "publish", "data": event, "id": "p1"}))
        .await;
    let ack = ws.recv().await;
    assert_eq!(sorted_keys(&ack), ["data", "id", "type"], "{ack}");
    assert_eq!(ack["type"], "event.published");
    assert_eq!(ack["id"], "p1");
    assert_published_body(&ack["data"], "chat.message");

    let got = sub.recv().await;
    assert_event(
        &got,
        &ack["data"],
        Some("alice"),
        Some("r1"),
        &json!({"text": "hi", "user": "alice"}),
    );
    assert_eq!(got["data"]["metadata"], json!({"k": "v"}));

    // Naming yourself is allowed; naming someone else is not, for a normal user.
    ws.send(json!({"type": "publish", "data": {"type": "a.b", "userId": "alice"}, "id": 2}))
        .await;
    let own = ws.recv().await;
    assert_eq!(own["type"], "event.published", "{own}");
    assert_eq!(own["id"], 2);
    // `data` defaults to null.
    assert_event(
        &sub.recv().await,
        &own["data"],
        Some("alice"),
        None,
        &Value::Null,
    );

    ws.send(json!({"type": "publish", "data": {"type": "a.b", "userId": "bob"}, "id": 3}))
        .await;
    assert_error(&ws.recv().await, "ACCESS_DENIED", Some(json!(3)));
    ws.send(json!({"type": "publish", "data": {"type": "bad type!"}, "id": 4}))
        .await;
    assert_error(&ws.recv().await, "VALIDATION_ERROR", Some(json!(4)));
    ws.send(json!({"type": "publish", "data": {"type": "a.b", "roomId": ""}, "id": 5}))
        .await;
    assert_error(&ws.recv().await, "VALIDATION_ERROR", Some(json!(5)));
    ws.send(json!({"type": "publish", "data": {"data": {}}, "id": 6}))
        .await;
    assert_error(&ws.recv().await, "VALIDATION_ERROR", Some(json!(6)));

    // A backend with the API key publishes on behalf of any user.
    let mut svc = Ws::connect(&server, "/ws").await;
    svc.send(json!({"type": "authenticate", "data": {"token": API_KEY}}))
        .await;
    assert_eq!(svc.recv().await["data"]["userId"], "service");
    svc.send(json!({"type": "publish", "data": {"type": "a.c", "userId": "bob", "data": [1]}}))
        .await;
    let svc_ack = svc.recv().await;
    assert_eq!(sorted_keys(&svc_ack), ["data", "type"], "{svc_ack}");
    assert_published_body(&svc_ack["data"], "a.c");
    assert_event(
        &sub.recv().await,
        &svc_ack["data"],
        Some("bob"),
        None,
        &json!([1]),
    );

    // Refused publishes delivered nothing.
    sub.expect_silence(QUIET).await;
    let (_, history) = get(
        &server,
        "/api/realtime/events?limit=100",
        Some(&admin_token()),
    )
    .await;
    assert_eq!(history["count"], 3, "{history}");
}

#[tokio::test]
async fn private_user_events_reach_only_their_user_and_admins() {
    let server = Server::start();
    let mut alice1 = Ws::user(&server, "alice").await;
    let mut alice2 = Ws::user(&server, "alice").await;
    let mut bob = Ws::user(&server, "bob").await;
    let mut anon = Ws::connect(&server, "/ws").await;
    let mut anon_filtered = Ws::connect(&server, "/ws").await;
    let mut admin = Ws::connect(&server, "/ws").await;
    admin
        .send(json!({"type": "authenticate", "data": {"token": admin_token()}}))
        .await;
    assert_eq!(
        admin.recv().await,
        json!({"type": "authenticated", "data": {"userId": "admin"}})
    );
    alice1.subscribe(&["*"], json!({})).await;
    alice2.subscribe(&["user.*"], json!({})).await;
    bob.subscribe(&["*"], json!({})).await;
    anon.subscribe(&["*"], json!({})).await;
    anon_filtered
        .subscribe(&["user.notification", "public"], json!({"userId": "alice"}))
        .await;
    admin.subscribe(&["*"], json!({})).await;

    let to_alice = publish_as_service(
        &server,
        json!({"type": "user.notification", "userId": "alice", "data": {"secret": 1}}),
    )
    .await;
    let to_bob = publish_as_service(
        &server,
        json!({"type": "user.notification", "userId": "bob", "data": {"secret": 2}}),
    )
    .await;
    // Published by alice herself over HTTP.
    let alice_own = publish(
        &server,
        &token("alice"),
        json!({"type": "user.settings.changed", "data": {}}),
    )
    .await;
    let public = publish_as_service(&server, json!({"type": "public", "userId": "alice"})).await;

    let seqs = |v: Vec<Value>| v.iter().map(|e| e["seq"].clone()).collect::<Vec<_>>();
    assert_eq!(
        seqs(recv_events(&mut alice1, 3).await),
        [&to_alice, &alice_own, &public].map(|a| a["seq"].clone())
    );
    assert_eq!(
        seqs(recv_events(&mut alice2, 2).await),
        [&to_alice, &alice_own].map(|a| a["seq"].clone())
    );
    assert_eq!(
        seqs(recv_events(&mut bob, 2).await),
        [&to_bob, &public].map(|a| a["seq"].clone())
    );
    assert_eq!(
        seqs(recv_events(&mut anon, 1).await),
        [public["seq"].clone()]
    );
    assert_eq!(
        seqs(recv_events(&mut anon_filtered, 1).await),
        [public["seq"].clone()]
    );
    assert_eq!(
        seqs(recv_events(&mut admin, 4).await),
        [&to_alice, &to_bob, &alice_own, &public].map(|a| a["seq"].clone())
    );
    all_silent([
        &mut alice1,
        &mut alice2,
        &mut bob,
        &mut anon,
        &mut anon_filtered,
        &mut admin,
    ])
    .await;
}

// ---------------------------------------------------------------------------------------------
// Bad input

#[tokio::test]
async fn bad_input_gets_an_error_and_keeps_the_connection_open() {
    let server = Server::start();
    let mut ws = Ws::connect(&server, "/ws").await;
    let cases: [(&str, &str, Option<Value>); 14] = [
        ("{nope", "INVALID_JSON", None),
        ("", "INVALID_JSON", None),
        ("[1,2]", "INVALID_MESSAGE", None),
        ("\"subscribe\"", "INVALID_MESSAGE", None),
        ("42", "INVALID_MESSAGE", None),
        (r#"{"id":5}"#, "INVALID_MESSAGE", Some(json!(5))),
        (
            r#"{"type":5,"id":"t"}"#,
            "INVALID_MESSAGE",
            Some(json!("t")),
        ),
        (
            r#"{"type":"dance","id":"x"}"#,
            "UNKNOWN_TYPE",
            Some(json!("x")),
        ),
        (r#"{"type":"dance"}"#, "UNKNOWN_TYPE", None),
        (
            r#"{"type":"subscribe","data":{"filters":{}},"id":3}"#,
            "VALIDATION_ERROR",
            Some(json!(3)),
        ),
        (r#"{"type":"subscribe"}"#, "VALIDATION_ERROR", None),
        (
            r#"{"type":"subscribe","data":{"eventTypes":[]},"id":4}"#,
            "VALIDATION_ERROR",
            Some(json!(4)),
        ),
        (
            r#"{"type":"subscribe","data":{"eventTypes":["a..b"]},"id":6}"#,
            "VALIDATION_ERROR",
            Some(json!(6)),
        ),
        (
            r#"{"type":"subscribe","data":{"eventTypes":["a"],"filters":{"colour":"red"}},"id":7}"#,
            "VALIDATION_ERROR",
            Some(json!(7)),
        ),
    ];
    for (i, (text, code, id)) in cases.iter().enumerate() {
        ws.send_raw(Message::text(*text)).await;
        let v = ws.recv().await;
        assert_error(&v, code, id.clone());
        assert_alive(&mut ws, json!(i)).await;
    }
    ws.send_raw(Message::binary(br#"{"type":"ping"}"#.to_vec()))
        .await;
    assert_error(&ws.recv().await, "INVALID_MESSAGE", None);
    assert_alive(&mut ws, json!("after-binary")).await;

    // Nothing was subscribed by the bad commands; a good one still works.
    let st = stats(&server).await;
    assert_eq!(st["connections"]["subscriptions"], 0, "{st}");
    ws.subscribe(&["a"], json!({})).await;
    let ack = publish_as_service(&server, json!({"type": "a"})).await;
    assert_eq!(ws.recv().await["data"]["seq"], ack["seq"]);
}

#[tokio::test]
async fn a_message_over_the_size_limit_closes_with_1009() {
    let server = Server::start();
    let mut ws = Ws::connect(&server, "/ws").await;
    // Just under 64 KiB is fine.
    let pad = "x".repeat(64 * 1024 - 100);
    ws.send(json!({"type": "ping", "id": 1, "pad": pad})).await;
    assert_eq!(ws.recv().await, json!({"type": "pong", "id": 1}));

    let pad = "x".repeat(70 * 1024);
    ws.send(json!({"type": "ping", "id": 2, "pad": pad})).await;
    let frame = ws.closed().await;
    assert_eq!(close_code(&frame), Some(1009), "{frame:?}");
    assert_eq!(frame.unwrap().reason.as_str(), "message too big");
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_and_an_unmasked_frame_with_1002() {
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    let server = Server::start();
    let mut ws = Ws::connect(&server, "/ws").await;
    let text = |payload: &'static [u8]| {
        Message::Frame(Frame::message(
            bytes::Bytes::from_static(payload),
            OpCode::Data(Data::Text),
            true,
        ))
    };
    ws.send_raw(text(b"{\"type\":\"ping\",\"id\":1}")).await;
    assert_eq!(ws.recv().await, json!({"type": "pong", "id": 1}));
    ws.send_raw(text(b"{\"type\":\"\xff\xfe\"}")).await;
    let frame = ws.closed().await;
    assert_eq!(close_code(&frame), Some(1007), "{frame:?}");

    // A client frame must be masked (RFC 6455 5.1): a raw unmasked one is refused.
    let mut raw = RawWs::connect(&server, "/ws").await;
    raw.tcp.write_all(b"\x81\x02hi").await.unwrap();
    // After the greeting, a close frame with 1002.
    let close = loop {
        match raw.frame().await {
            Some((0x8, payload)) => break payload,
            Some(_) => continue,
            None => panic!("the stream ended without a close frame"),
        }
    };
    assert_eq!(close[..2], 1002u16.to_be_bytes(), "{close:?}");
}

// ---------------------------------------------------------------------------------------------
// Limits

#[tokio::test]
async fn publish_rate_limit_refuses_then_disconnects_a_flooder() {
    let server = Server::start_with(&["--publish-rate-per-connection", "5"]);
    let mut ws = Ws::user(&server, "alice").await;
    let started = Instant::now();
    for i in 0..50 {
        ws.stream
            .feed(Message::text(
                json!({"type": "publish", "data": {"type": "rate.test", "data": {"i": i}}, "id": i})
                    .to_string(),
            ))
            .await
            .unwrap();
    }
    ws.stream.flush().await.unwrap();
    let mut replies = BTreeMap::new();
    while replies.len() < 50 {
        let v = ws.recv().await;
        let id = v["id"].as_u64().unwrap_or_else(|| panic!("{v}"));
        match v["type"].as_str() {
            Some("event.published") => assert_published_body(&v["data"], "rate.test"),
            _ => assert_error(&v, "RATE_LIMITED", Some(json!(id))),
        }
        assert!(
            replies.insert(id, v["type"].clone()).is_none(),
            "one reply per id"
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    let accepted = replies.values().filter(|t| *t == "event.published").count();
    // Burst of 2 × 5, plus 5 per second of refill.
    assert!(accepted >= 10, "accepted {accepted}");
    assert!(
        accepted as f64 <= 10.0 + 5.0 * elapsed + 1.0,
        "accepted {accepted} in {elapsed}s"
    );
    assert!(replies.len() - accepted > 0);
    assert_alive(&mut ws, json!("still-open")).await;

    // A flood: more than 100 refusals in a row closes the connection with 4029.
    for i in 0..200 {
        ws.stream
            .feed(Message::text(
                json!({"type": "publish", "data": {"type": "rate.flood"}, "id": i}).to_string(),
            ))
            .await
            .unwrap();
    }
    ws.stream.flush().await.unwrap();
    // The refusals before the close arrive too: the server reads out the rest of the flood
    // instead of resetting the connection.
    let mut refusals = 0;
    let frame = loop {
        match tokio::time::timeout(WAIT, ws.stream.next())
            .await
            .expect("timed out waiting for the close")
        {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_error(&v, "RATE_LIMITED", Some(v["id"].clone()));
                assert!(v["id"].is_u64(), "{v}");
                refusals += 1;
            }
            Some(Ok(Message::Close(frame))) => break frame,
            other => panic!("expected refusals then a close frame, got {other:?}"),
        }
    };
    assert!(refusals >= 1, "no refusal arrived before the close");
    assert_eq!(frame.unwrap().reason.as_str(), "too many messages");
}

#[tokio::test]
async fn connection_limit_refuses_the_handshake_with_503() {
    let server = Server::start_with(&["--max-connections", "2"]);
    let a = Ws::connect(&server, "/ws").await;
    let _b = Ws::connect(&server, "/").await;
    for path in ["/ws", "/"] {
        let (status, body) = refused_handshake(&server, path).await;
        assert_eq!(status, 503);
        assert_eq!(body["code"], "UNAVAILABLE", "{body}");
    }
    // Closing one frees its slot.
    let mut a = a;
    a.stream.close(None).await.unwrap();
    drop(a);
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio_tungstenite::connect_async(server.ws_url("/ws")).await {
            Ok(_) => break,
            Err(tungstenite::Error::Http(res)) if res.status().as_u16() == 503 => {
                assert!(Instant::now() < deadline, "the slot was never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn connection_rate_per_ip_refuses_with_429() {
    let server = Server::start_with(&["--connection-rate-per-ip", "1"]);
    // Burst of 2.
    let _a = Ws::connect(&server, "/ws").await;
    let _b = Ws::connect(&server, "/ws").await;
    let (status, body) = refused_handshake(&server, "/ws").await;
    assert_eq!(status, 429);
    assert_eq!(body["code"], "RATE_LIMITED", "{body}");
    // The allowance refills at one per second.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match tokio_tungstenite::connect_async(server.ws_url("/ws")).await {
            Ok(_) => break,
            Err(tungstenite::Error::Http(res)) if res.status().as_u16() == 429 => {
                assert!(Instant::now() < deadline, "the allowance never refilled");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn idle_clients_are_closed_with_4000_and_server_pings_keep_live_ones() {
    let server = Server::start_with(&["--idle-timeout-secs", "2", "--ping-interval-secs", "1"]);
    let started = Instant::now();
    // A dead peer: never answers pings.
    let mut dead = RawWs::connect(&server, "/ws").await;
    // A live peer: tokio-tungstenite answers each ping with a pong while it is being polled,
    // and any client frame counts as activity.
    let mut live = Ws::connect(&server, "/ws").await;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let watching = tokio::spawn(async move {
        let mut pings = 0;
        loop {
            tokio::select! {
                _ = &mut stopped => return (live, pings),
                m = live.stream.next() => match m {
                    Some(Ok(Message::Ping(_))) => pings += 1,
                    other => panic!("the live connection got {other:?}"),
                },
            }
        }
    });

    let mut dead_pings = 0;
    let close = loop {
        let (opcode, payload) = dead.frame().await.expect("closed without a close frame");
        match opcode {
            0x1 => {
                let v: Value = serde_json::from_slice(&payload).unwrap();
                assert_eq!(v["type"], "connection.established", "{v}");
            }
            0x9 => dead_pings += 1,
            0x8 => break payload,
            other => panic!("unexpected opcode {other}"),
        }
    };
    let elapsed = started.elapsed();
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 4000);
    assert_eq!(&close[2..], b"idle timeout");
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?}"
    );
    assert!(dead_pings >= 1, "the server pinged before giving up");
    assert!(dead.frame().await.is_none(), "the server ended the stream");

    // Meanwhile the live peer saw the server's pings, answered them, and is still open.
    stop.send(()).unwrap();
    let (mut live, live_pings) = watching.await.unwrap();
    assert!(live_pings >= 2, "saw {live_pings} pings");
    assert_alive(&mut live, json!("alive")).await;
    let st = stats_until(&server, |s| s["connections"]["total"] == 1).await;
    assert_eq!(st["connections"]["byType"]["websocket"], 1, "{st}");
}

/// Events of `PAD` bytes enough to overflow a stalled subscriber's queue of 50: the kernel lets
/// a socket's send buffer grow to `tcp_wmem`'s maximum (4 MiB by default) even when the peer's
/// window is tiny, so about twice that, after which the server's writes to it block.
const PAD: usize = 8 * 1024;

fn overflowing_flood() -> usize {
    let wmem_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse::<usize>().ok())
        .unwrap_or(4 << 20);
    (2 * wmem_max / PAD + 200).max(500)
}

/// A subscriber to `load.*` with a small receive buffer (so the server's writes block soon)
/// that reads nothing after subscribing until the test says so.
async fn stalled_subscriber(server: &Server) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let (stream, _) = tokio_tungstenite::client_async(
        server.ws_url("/ws"),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .unwrap();
    let mut slow = Ws {
        stream,
        connection_id: String::new(),
    };
    assert_eq!(slow.recv().await["type"], "connection.established");
    slow.subscribe(&["load.*"], json!({})).await;
    slow
}

/// How a stalled subscriber's stream ended.
#[derive(Debug, PartialEq)]
enum End {
    Closed(Option<u16>),
    /// The stream ended without a close frame (possibly inside a frame).
    Dropped,
    /// The bytes were not a valid WebSocket stream: a frame cut short, for one.
    Corrupt(String),
}

/// Reads a stalled subscriber's stream to its end: the seqs of the events it got, and how it
/// ended.
async fn read_to_end(slow: &mut Ws) -> (Vec<u64>, End) {
    use tokio_tungstenite::tungstenite::Error;
    use tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake;
    let mut seqs = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, slow.stream.next())
            .await
            .expect("the slow consumer's stream did not end")
        {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["type"], "event", "{v}");
                seqs.push(v["data"]["seq"].as_u64().unwrap());
            }
            Some(Ok(Message::Close(frame))) => return (seqs, End::Closed(close_code(&frame))),
            Some(Ok(_)) => continue,
            Some(Err(
                Error::Io(_)
                | Error::ConnectionClosed
                | Error::AlreadyClosed
                | Error::Protocol(ResetWithoutClosingHandshake),
            ))
            | None => {
                return (seqs, End::Dropped);
            }
            Some(Err(e)) => return (seqs, End::Corrupt(e.to_string())),
        }
    }
}

#[tokio::test]
async fn a_slow_consumer_is_disconnected_while_a_reader_gets_everything() {
    let server = Server::start_with(&["--outbox-max-messages", "50"]);
    let mut slow = stalled_subscriber(&server).await;
    let events = overflowing_flood();

    let mut reader = Ws::connect(&server, "/ws").await;
    reader.subscribe(&["load.*"], json!({})).await;
    let reading = tokio::spawn(async move {
        let got = recv_events(&mut reader, events).await;
        (reader, got)
    });

    let acked = flood(&server, events, PAD).await;

    let (mut reader, got) = reading.await.unwrap();
    let got: Vec<u64> = got.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in seq order");
    assert_eq!(got, acked, "the reader got every event");
    reader.expect_silence(QUIET).await;

    // The slow one is gone from the server's books...
    stats_until(&server, |s| s["connections"]["total"] == 1).await;
    // ...and its stream ends with 4008 (or a dropped socket, had the write timeout passed
    // before it read again), after a gap-free run of the events already buffered for it.
    let (slow_seqs, end) = read_to_end(&mut slow).await;
    assert!(
        matches!(end, End::Closed(Some(4008)) | End::Dropped),
        "ended with {end:?}"
    );
    assert!(
        slow_seqs.len() < events,
        "the slow consumer was cut off early"
    );
    assert!(
        slow_seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "what the slow consumer got is gap-free"
    );
    let slow_total = metric(&server, "herald_slow_consumers_total").await;
    assert_eq!(slow_total, Some(1.0));
    assert_alive(&mut reader, json!("reader-ok")).await;
}

#[tokio::test]
async fn a_slow_consumer_that_reads_again_at_once_gets_whole_frames_then_4008() {
    let server = Server::start_with(&["--outbox-max-messages", "50"]);
    let mut slow = stalled_subscriber(&server).await;
    // It starts reading as soon as the server counts it as a slow consumer: the server then
    // finishes the batch its write was blocked in (a frame cut short would corrupt the
    // stream) and closes with 4008 within the write timeout it gives the client (10 s).
    let reading = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while metric(&server, "herald_slow_consumers_total").await != Some(1.0) {
            assert!(
                Instant::now() < deadline,
                "never counted as a slow consumer"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        read_to_end(&mut slow).await
    };
    let (acked, (seqs, end)) = tokio::join!(flood(&server, overflowing_flood(), PAD), reading);
    assert_eq!(end, End::Closed(Some(4008)), "after {} events", seqs.len());
    assert!(seqs.len() < acked.len(), "it was cut off");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "what it got is gap-free"
    );
}

#[tokio::test]
async fn a_request_that_is_not_a_handshake_gets_a_clear_error_and_a_valid_one_is_accepted() {
    let server = Server::start();
    // A plain GET on a WebSocket path.
    let (status, body) = get(&server, "/ws", None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "VALIDATION_ERROR");
    assert!(
        body["error"].as_str().unwrap().contains("Connection"),
        "{body}"
    );

    // An otherwise complete handshake with an unsupported version.
    let handshake = |version: &str| {
        format!(
            "GET /ws/rooms HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: {version}\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    let head = |version: &str| {
        let request = handshake(version);
        let addr = server.addr;
        async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(request.as_bytes()).await.unwrap();
            let mut buf = vec![0; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).to_lowercase()
        }
    };
    let refused = head("8").await;
    assert!(refused.starts_with("http/1.1 400"), "{refused}");
    assert!(
        refused.contains("sec-websocket-version must be 13"),
        "{refused}"
    );

    // The same with version 13: 101, the accept key of RFC 6455's example, then the greeting.
    let accepted = head("13").await;
    assert!(accepted.starts_with("http/1.1 101"), "{accepted}");
    assert!(
        accepted.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{accepted}"
    );
}

#[tokio::test]
async fn a_handshake_whose_head_arrives_in_pieces_is_accepted() {
    // The listener peeks at each connection's first request (event streams are answered
    // there): a WebSocket handshake that arrives in two pieces must still be upgraded.
    let server = Server::start();
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /ws/rooms HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tcp.write_all(
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    // The 101 head, byte by byte so that nothing of the WebSocket stream is read here.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap().to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );

    let stream = tokio_tungstenite::WebSocketStream::from_raw_socket(
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
        tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    let mut ws = Ws {
        stream,
        connection_id: String::new(),
    };
    assert_eq!(ws.recv().await["type"], "connected");
    ws.send(json!({"type": "ping", "id": 7})).await;
    assert_eq!(ws.recv().await["type"], "pong");
    ws.stream.close(None).await.unwrap();
    stats_until(&server, |s| s["connections"]["total"] == 0).await;
}
