//! The access matrix, tried as an attacker would: every identity against every read path and
//! every write path, for each kind of room — allowed or refused exactly as docs/protocol.md
//! ("Who sees what") says. Each row is one path; adding a path means adding a row, and
//! `every_route_and_command_is_in_the_matrix` fails while one is missing.

mod common;

use std::collections::BTreeSet;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Who knocks.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Anonymous,
    /// A user without a `rooms` claim.
    Alice,
    /// A user whose token limits it to `team-*` rooms (and public ones).
    Carol,
    /// The owner of the personal room `user:bob` and of the private `user.*` events.
    Bob,
    Admin,
    Service,
}

const EVERYONE: [Who; 6] = [
    Who::Anonymous,
    Who::Alice,
    Who::Carol,
    Who::Bob,
    Who::Admin,
    Who::Service,
];

impl Who {
    fn token(self) -> Option<String> {
        match self {
            Who::Anonymous => None,
            Who::Alice => Some(token("alice")),
            Who::Carol => Some(token_for_rooms("carol", &["team-*"])),
            Who::Bob => Some(token("bob")),
            Who::Admin => Some(admin_token()),
            Who::Service => Some(API_KEY.to_owned()),
        }
    }
}

/// What is read or written: one event of each kind, told apart by `data.m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    /// `lobby`, public.
    Public,
    /// `secret`: any user without a `rooms` claim, not anonymous clients, not Carol.
    Private,
    /// `user:bob`: Bob's personal room.
    Personal,
    /// A `user.note` event of Bob's, in no room.
    PrivateType,
}

const TARGETS: [Target; 4] = [
    Target::Public,
    Target::Private,
    Target::Personal,
    Target::PrivateType,
];

impl Target {
    fn room(self) -> Option<&'static str> {
        match self {
            Target::Public => Some("lobby"),
            Target::Private => Some("secret"),
            Target::Personal => Some("user:bob"),
            Target::PrivateType => None,
        }
    }

    fn marker(self) -> String {
        format!("{self:?}")
    }

    /// The type of the target's event: its own, so that a list of types tells them apart.
    fn kind(self) -> String {
        match self {
            Target::PrivateType => "user.note".into(),
            _ => format!("matrix.{}", self.marker().to_lowercase()),
        }
    }

    /// The event an operator publishes for the read rows.
    fn event(self) -> Value {
        let mut e = json!({"type": self.kind(), "data": {"m": self.marker()}, "userId": "bob"});
        if let Some(room) = self.room() {
            e["roomId"] = room.into();
        }
        e
    }
}

/// docs/protocol.md, "Who sees what": the events each identity may read.
fn may_read(who: Who, target: Target) -> bool {
    match target {
        Target::Public => true,
        Target::Private => !matches!(who, Who::Anonymous | Who::Carol),
        Target::Personal | Target::PrivateType => {
            matches!(who, Who::Bob | Who::Admin | Who::Service)
        }
    }
}

/// docs/protocol.md: joining (and with it a room's history on join) — a personal room only by
/// its owner, even for operators, who read its events but do not sit in it.
fn may_join(who: Who, target: Target) -> bool {
    match target {
        Target::Personal => who == Who::Bob,
        _ => may_read(who, target),
    }
}

/// docs/protocol.md: publishing an ordinary event into the target's room.
fn may_publish(who: Who, target: Target) -> bool {
    who != Who::Anonymous && may_read(who, target)
}

/// Starts the server and publishes one event per target, then a public `END`.
async fn server_with_events() -> Server {
    let server = Server::start_with(&["--public-room", "lobby"]);
    publish_targets(&server).await;
    server
}

async fn publish_targets(server: &Server) {
    for target in TARGETS {
        publish(server, API_KEY, target.event()).await;
    }
    publish(
        server,
        API_KEY,
        json!({"type": "matrix.end", "data": {"m": "END"}}),
    )
    .await;
}

/// The targets among `events` (by marker), stopping at `END`.
fn seen(events: impl IntoIterator<Item = Value>) -> BTreeSet<Target> {
    let mut out = BTreeSet::new();
    for e in events {
        let m = e["data"]["m"].as_str().unwrap_or_default().to_owned();
        if let Some(t) = TARGETS.into_iter().find(|t| t.marker() == m) {
            out.insert(t);
        }
    }
    out
}

fn expected(who: Who) -> BTreeSet<Target> {
    TARGETS.into_iter().filter(|t| may_read(who, *t)).collect()
}

async fn ws_as(server: &Server, who: Who) -> Ws {
    let mut ws = Ws::connect(server, "/ws").await;
    if let Some(t) = who.token() {
        ws.send(json!({"type": "authenticate", "data": {"token": t}}))
            .await;
        assert_eq!(ws.recv().await["type"], "authenticated");
    }
    ws
}

/// Events received on a WebSocket until `END`.
async fn ws_events_until_end(ws: &mut Ws) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let m = ws.recv().await;
        if m["type"] == "event" {
            if m["data"]["data"]["m"] == "END" {
                return out;
            }
            out.push(m["data"].clone());
        }
    }
}

async fn sse_events_until_end(server: &Server, who: Who, resume: bool) -> Vec<Value> {
    let mut req = http()
        .get(server.url("/api/realtime/stream?types=*"))
        .header("accept", "text/event-stream");
    if let Some(t) = who.token() {
        req = req.bearer_auth(t);
    }
    if resume {
        req = req.header("last-event-id", "0");
    }
    let mut sse = Sse::from_response(req.send().await.unwrap());
    assert_eq!(sse.status, 200);
    let mut out = Vec::new();
    if !resume {
        sse.next_event("connection").await;
        publish_targets(server).await;
    }
    loop {
        let e = sse.next_event("event").await.json();
        if e["data"]["m"] == "END" {
            return out;
        }
        out.push(e);
    }
}

/// Read rows: each path, every identity, every target (live rows publish after subscribing).
#[tokio::test]
async fn reads_follow_the_access_table_on_every_path() {
    let server = server_with_events().await;
    for who in EVERYONE {
        let want = expected(who);
        // WebSocket live.
        let mut ws = ws_as(&server, who).await;
        ws.subscribe(&["*"], json!({})).await;
        publish_targets(&server).await;
        assert_eq!(
            seen(ws_events_until_end(&mut ws).await),
            want,
            "ws live {who:?}"
        );
        // WebSocket resume (`since`).
        let mut ws = ws_as(&server, who).await;
        ws.send(json!({"type": "subscribe", "data": {"eventTypes": ["*"], "since": 0}}))
            .await;
        assert_eq!(
            seen(ws_events_until_end(&mut ws).await),
            want,
            "ws since {who:?}"
        );
        // SSE live, and resumed with Last-Event-ID.
        let live = sse_events_until_end(&server, who, false).await;
        assert_eq!(seen(live), want, "sse live {who:?}");
        let resumed = sse_events_until_end(&server, who, true).await;
        assert_eq!(seen(resumed), want, "sse Last-Event-ID {who:?}");
        // Long-poll from the start.
        let mut path = "/api/realtime/poll?types=*&cursor=0&timeout=1".to_owned();
        if let Some(t) = who.token() {
            path.push_str(&format!("&token={t}"));
        }
        let (status, batch) = get(&server, &path, None).await;
        assert_eq!(status, 200, "{batch}");
        let events = batch["events"].as_array().unwrap().clone();
        assert_eq!(seen(events), want, "long-poll {who:?}");
        // Long-poll naming each room: a room it may not read yields nothing.
        for target in TARGETS {
            let Some(room) = target.room() else { continue };
            let mut p = format!("{path}&roomId={}", urlencode(room));
            p = p.replace("timeout=1", "timeout=0");
            let (status, batch) = get(&server, &p, None).await;
            assert_eq!(status, 200, "{batch}");
            let got = seen(batch["events"].as_array().unwrap().clone());
            assert_eq!(
                got.contains(&target),
                may_read(who, target),
                "long-poll roomId={room} {who:?}"
            );
        }
        // History, all rooms at once: filtered in the query (pages stay full).
        let (status, page) = get(
            &server,
            "/api/realtime/events?types=*&limit=1000",
            who.token().as_deref(),
        )
        .await;
        if who == Who::Anonymous {
            assert_eq!(status, 401, "history needs credentials");
        } else {
            assert_eq!(status, 200, "{page}");
            let events = page["events"].as_array().unwrap().clone();
            assert_eq!(seen(events), want, "history {who:?}");
        }
        // Statistics: the event types listed are those of events it may read.
        if let Some(t) = who.token() {
            let (status, stats) = get(&server, "/api/realtime/stats", Some(&t)).await;
            assert_eq!(status, 200, "{stats}");
            let types = stats["events"]["eventTypes"].as_array().unwrap();
            let listed: BTreeSet<Target> = TARGETS
                .into_iter()
                .filter(|t| types.contains(&Value::from(t.kind())))
                .collect();
            assert_eq!(listed, want, "stats eventTypes {who:?}");
        }
        // History naming a room: refused when it may not read it.
        for target in TARGETS {
            let Some(room) = target.room() else { continue };
            let (status, page) = get(
                &server,
                &format!("/api/realtime/events?roomId={}", urlencode(room)),
                who.token().as_deref(),
            )
            .await;
            let allowed = who != Who::Anonymous && may_read(who, target);
            assert_eq!(
                status == 200,
                allowed,
                "history roomId={room} {who:?}: {page}"
            );
            if allowed {
                let got = seen(page["events"].as_array().unwrap().clone());
                assert!(got.contains(&target), "history roomId={room} {who:?}");
            }
        }
    }
}

fn urlencode(s: &str) -> String {
    s.replace(':', "%3A")
}

/// Joining, a room's history on join, and presence.
#[tokio::test]
async fn joins_history_and_presence_follow_the_access_table() {
    let server = server_with_events().await;
    for who in EVERYONE {
        for target in TARGETS {
            let Some(room) = target.room() else { continue };
            let mut ws = ws_as(&server, who).await;
            ws.send(json!({"type": "join", "data": {"room": room}}))
                .await;
            let reply = loop {
                let m = ws.recv().await;
                if m["type"] == "room_joined" || m["type"] == "error" {
                    break m;
                }
            };
            if may_join(who, target) {
                assert_eq!(reply["type"], "room_joined", "{who:?} {room}: {reply}");
                let history = ws.recv_type("room_history").await;
                let shown = history["messages"].as_array().unwrap().len();
                assert_eq!(shown, 0, "only chat messages are history: {history}");
            } else {
                assert_eq!(reply["type"], "error", "{who:?} {room}: {reply}");
                assert_eq!(reply["data"]["code"], "ACCESS_DENIED");
            }
            let (status, body) = get(
                &server,
                &format!("/api/rooms/{}/presence", urlencode(room)),
                who.token().as_deref(),
            )
            .await;
            let allowed = who != Who::Anonymous && may_read(who, target);
            assert_eq!(status == 200, allowed, "presence {room} {who:?}: {body}");
        }
    }
}

/// How a write path reports: accepted, or refused with a status / error code.
async fn http_write(server: &Server, who: Who, path: &str, body: Value) -> StatusCode {
    let mut req = http().post(server.url(path)).json(&body);
    if let Some(t) = who.token() {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status()
}

async fn ws_write(server: &Server, who: Who, command: Value) -> Value {
    let mut ws = ws_as(server, who).await;
    let mut command = command;
    command["id"] = "w".into();
    ws.send(command).await;
    loop {
        let m = ws.recv().await;
        if m["id"] == "w" || m["type"] == "error" {
            return m;
        }
    }
}

/// Write rows: every publish path into every kind of room.
#[tokio::test]
async fn writes_follow_the_access_table_on_every_path() {
    let server = Server::start_with(&["--public-room", "lobby"]);
    for who in EVERYONE {
        for target in [Target::Public, Target::Private, Target::Personal] {
            let room = target.room().unwrap();
            let allowed = may_publish(who, target);
            let event = json!({"type": "matrix.write", "data": {}, "roomId": room});
            let status = http_write(&server, who, "/api/realtime/publish", event.clone()).await;
            assert_eq!(
                status.is_success(),
                allowed,
                "HTTP publish {room} {who:?}: {status}"
            );
            let batch = json!({"events": [event.clone()]});
            let status = http_write(&server, who, "/api/realtime/publish/batch", batch).await;
            assert_eq!(
                status.is_success(),
                allowed,
                "HTTP batch {room} {who:?}: {status}"
            );
            let reply = ws_write(&server, who, json!({"type": "publish", "data": event})).await;
            assert_eq!(
                reply["type"] == "event.published",
                allowed,
                "WS publish {room} {who:?}: {reply}"
            );
            // The chat command: anonymous clients may chat in public rooms.
            let chat = json!({"type": "chat", "data": {"room": room, "text": "hi"}});
            let reply = ws_write(&server, who, chat).await;
            let chat_allowed = allowed || (who == Who::Anonymous && target == Target::Public);
            assert_eq!(
                reply["type"] == "event.published",
                chat_allowed,
                "WS chat {room} {who:?}: {reply}"
            );
        }
        // A direct message reaches another user's personal room; anonymous clients may not.
        let dm = json!({"type": "private_message", "data": {"to": "bob", "text": "hi"}});
        let reply = ws_write(&server, who, dm).await;
        assert_eq!(
            reply["type"] == "event.published",
            who != Who::Anonymous,
            "private_message {who:?}: {reply}"
        );
        // Reserved types and operator routes: admins and API keys only.
        let operator = matches!(who, Who::Admin | Who::Service);
        for (path, body) in [
            (
                "/api/realtime/publish",
                json!({"type": "notification", "data": {}}),
            ),
            (
                "/api/realtime/publish",
                json!({"type": "system.alert", "data": {}}),
            ),
            (
                "/api/realtime/publish",
                json!({"type": "user.login", "data": {}}),
            ),
            ("/notifications", json!({"message": "m"})),
            ("/updates", json!({"resource": "r", "action": "a"})),
            ("/api/dashboard/notify", json!({"message": "m"})),
        ] {
            let status = http_write(&server, who, path, body.clone()).await;
            assert_eq!(
                status.is_success(),
                operator,
                "{path} {body} {who:?}: {status}"
            );
        }
        // Publishing as someone else.
        let as_bob = json!({"type": "x.y", "data": {}, "userId": "bob"});
        let status = http_write(&server, who, "/api/realtime/publish", as_bob).await;
        assert_eq!(
            status.is_success(),
            operator || who == Who::Bob,
            "publish as bob {who:?}: {status}"
        );
        // Mailboxes take any authenticated publisher.
        let status = http_write(&server, who, "/api/messages", json!({"content": "c"})).await;
        assert_eq!(
            status.is_success(),
            who != Who::Anonymous,
            "mailbox {who:?}"
        );
    }
    // Nothing refused reached the log: only the allowed writes are in history.
    let (_, page) = get(
        &server,
        "/api/realtime/events?types=matrix.write&limit=1000",
        Some(&admin_token()),
    )
    .await;
    let allowed: usize = EVERYONE
        .iter()
        .map(|w| {
            [Target::Public, Target::Private, Target::Personal]
                .iter()
                .filter(|t| may_publish(*w, **t))
                .count()
                * 3
        })
        .sum();
    assert_eq!(page["count"], allowed, "{page}");
}

/// A chat message is a chat message whichever path it comes by: sanitised, signed by the
/// server with its publisher, whatever author the client claims.
#[tokio::test]
async fn chat_published_over_http_is_sanitised_and_signed() {
    let server = Server::start_with(&["--public-room", "lobby"]);
    let mut member = Ws::user(&server, "bob").await;
    member
        .subscribe(&["chat.*"], json!({"roomId": "lobby"}))
        .await;
    let forged = json!({
        "type": "chat.message",
        "roomId": "lobby",
        "data": {"text": "<img src=x onerror=alert(1)>hi <b>there</b>", "user": "admin"},
    });
    let status = http_write(&server, Who::Alice, "/api/realtime/publish", forged).await;
    assert_eq!(status, 201);
    let e = member.recv_type("event").await;
    assert_eq!(
        e["data"]["data"],
        json!({"text": "hi <b>there</b>", "user": "alice"})
    );
    // And over WebSocket `publish`.
    let mut alice = Ws::user(&server, "alice").await;
    alice
        .send(
            json!({"type": "publish", "data": {"type": "chat.message", "roomId": "lobby",
            "data": {"text": "<script>x</script>ok", "user": {"id": "admin"}}}}),
        )
        .await;
    let e = member.recv_type("event").await;
    assert_eq!(e["data"]["data"], json!({"text": "ok", "user": "alice"}));
    // Other fields stay; the text and author are the server's.
    let extra = json!({"type": "chat.message", "roomId": "lobby",
        "data": {"text": "a & b", "user": "admin", "n": 1}});
    assert_eq!(
        http_write(&server, Who::Alice, "/api/realtime/publish", extra).await,
        201
    );
    let e = member.recv_type("event").await;
    assert_eq!(
        e["data"]["data"],
        json!({"text": "a &amp; b", "user": "alice", "n": 1})
    );
    // Claiming an author without text is refused; so is text that sanitises to nothing.
    for data in [
        json!({"user": "admin"}),
        json!({"text": "<script>x</script>"}),
    ] {
        let bad = json!({"type": "chat.message", "roomId": "lobby", "data": data});
        let status = http_write(&server, Who::Alice, "/api/realtime/publish", bad).await;
        assert_eq!(status, 400, "{data}");
    }
}

/// An anonymous member's self-declared `id` never shows as a user id.
#[tokio::test]
async fn an_anonymous_profile_carries_no_user_id() {
    let server = Server::start_with(&["--public-room", "lobby"]);
    let mut watcher = Ws::user(&server, "bob").await;
    watcher
        .send(json!({"type": "join", "data": {"room": "lobby"}}))
        .await;
    watcher.recv_type("room_history").await;
    let mut anon = Ws::connect(&server, "/ws").await;
    anon.send(json!({"type": "join", "data": {"room": "lobby",
        "user": {"id": "admin", "name": "Mallory"}}}))
        .await;
    anon.recv_type("room_history").await;
    let joined = watcher.recv_type("user_joined").await;
    assert_eq!(joined["user"], json!({"name": "Mallory"}), "{joined}");
    assert!(joined.get("userId").is_none(), "{joined}");
    // Names with bidirectional controls are refused.
    anon.send(json!({"type": "join", "data": {"room": "lobby", "user": "ad\u{202e}nim"}}))
        .await;
    assert_eq!(
        anon.recv_type("error").await["data"]["code"],
        "VALIDATION_ERROR"
    );
}

/// Re-authenticating as another user is refused; the same user may refresh its token; an
/// expired token ends the session with close code 4001.
#[tokio::test]
async fn a_session_keeps_its_user_and_ends_with_its_token() {
    let server = Server::start_with(&["--ping-interval-secs", "1"]);
    let mut ws = Ws::user(&server, "alice").await;
    ws.send(json!({"type": "join", "data": {"room": "alices-room"}}))
        .await;
    ws.recv_type("room_history").await;
    ws.send(json!({"type": "authenticate", "data": {"token": token("mallory")}}))
        .await;
    let refused = ws.recv_type("error").await;
    assert_eq!(refused["data"]["code"], "CONFLICT", "{refused}");
    let (_, presence) = get(
        &server,
        "/api/rooms/alices-room/presence",
        Some(&admin_token()),
    )
    .await;
    assert!(!presence.to_string().contains("mallory"), "{presence}");
    ws.send(json!({"type": "authenticate", "data": {"token": token("alice")}}))
        .await;
    assert_eq!(
        ws.recv_type("authenticated").await["data"]["userId"],
        "alice"
    );

    // A token that expires in 1 s (past the 5 s leeway: issued as already 4 s stale).
    let short = token_with("alice", None, -4, SECRET);
    let mut ws = Ws::connect(&server, "/ws").await;
    ws.send(json!({"type": "authenticate", "data": {"token": short}}))
        .await;
    assert_eq!(ws.recv_type("authenticated").await["type"], "authenticated");
    let frame = ws.closed().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 4001, "{frame:?}");
}

/// A write authenticated only by the dashboard cookie must be JSON from an allowed origin.
#[tokio::test]
async fn cookie_writes_need_json_and_an_allowed_origin() {
    let server = Server::start();
    let cookie = format!("herald_token={}", admin_token());
    let body = json!({"type": "x.y", "data": {}}).to_string();
    let post = |content_type: &'static str, origin: Option<&'static str>| {
        let mut req = http()
            .post(server.url("/api/realtime/publish"))
            .header("cookie", cookie.clone())
            .header("content-type", content_type)
            .body(body.clone());
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    let own = format!("http://{}", server.addr);
    let own: &'static str = Box::leak(own.into_boxed_str());
    assert_eq!(
        post("application/json", Some(own)).await.unwrap().status(),
        201
    );
    assert_eq!(
        post("application/json", Some("http://localhost:3000"))
            .await
            .unwrap()
            .status(),
        201,
        "a configured CORS origin"
    );
    for (ct, origin) in [
        ("text/plain", Some(own)),
        ("application/x-www-form-urlencoded", Some(own)),
        ("application/json", Some("http://evil.example")),
        ("application/json", None),
    ] {
        let res = post(ct, origin).await.unwrap();
        assert_eq!(res.status(), 403, "{ct} {origin:?}");
    }
    assert_eq!(
        metric(&server, "herald_csrf_refused_total").await,
        Some(4.0)
    );
    // A bearer token is not ambient: no origin needed.
    let res = http()
        .post(server.url("/api/realtime/publish"))
        .bearer_auth(admin_token())
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
}

/// Every route of the router and every WebSocket command is a row above, or is listed here
/// with why it needs none.
#[test]
fn every_route_and_command_is_in_the_matrix() {
    const IN_THE_MATRIX: &[&str] = &[
        "/ws",
        "/api/rooms/{room}/presence",
        "/api/realtime/stream",
        "/api/realtime/poll",
        "/api/realtime/publish",
        "/api/realtime/publish/batch",
        "/api/realtime/events",
        "/api/realtime/stats",
        "/notifications",
        "/updates",
        "/api/messages",
        "/api/dashboard/notify",
    ];
    // Paths whose access is decided elsewhere, each with the suite that proves it.
    const ELSEWHERE: &[(&str, &str)] = &[
        (
            "/",
            "the dashboard page (public) or the seed 001 chat socket: rooms.rs",
        ),
        ("/herald.js", "a public static file"),
        ("/herald.d.ts", "a public static file"),
        ("/dashboard/{file}", "public static files"),
        ("/examples", "public static files"),
        ("/examples/", "public static files"),
        ("/examples/{file}", "public static files"),
        (
            "/ws/chat",
            "the same session as /ws (seed dialect): rooms.rs",
        ),
        (
            "/ws/rooms",
            "the same session as /ws (seed dialect): rooms.rs",
        ),
        ("/api/cluster/nodes", "operators only: cluster.rs"),
        ("/health", "public liveness"),
        ("/metrics", "operators only: http_api.rs"),
        ("/openapi.json", "the public API description"),
        (
            "/events",
            "seed 001: notification/update only, own user.notification: seed_sse.rs",
        ),
        (
            "/events/user/{user_id}",
            "seed 004: own user.* only: seed_sse.rs",
        ),
        (
            "/api/realtime/subscribe",
            "own connections only: http_api.rs",
        ),
        ("/api/dashboard/live-data", "operators only: http_api.rs"),
        (
            "/api/dashboard/activity",
            "history with the reader's scope: http_api.rs",
        ),
        (
            "/api/dashboard/alerts",
            "history with the reader's scope: http_api.rs",
        ),
        (
            "/api/streams",
            "streams are not events (no rooms): streams.rs",
        ),
        ("/api/streams/{name}", "streams: streams.rs"),
        ("/echo", "conformance echo, off by default"),
        (
            "/api/documents/{id}",
            "the document's room read rule: documents.rs",
        ),
        (
            "/api/documents/{id}/changes",
            "the document's room read rule: documents.rs",
        ),
        (
            "/yjs/{name}",
            "the Yjs document's room join and write rules: yjs.rs",
        ),
        ("/engine.io/", "Engine.IO conformance echo, off by default"),
        (
            "/socket.io/",
            "Socket.IO: each event is a session command, decided as on /ws: socketio.rs",
        ),
    ];
    let router = include_str!("../../server/src/api/mod.rs");
    let routes = quoted_after(router, ".route(");
    assert!(
        routes.len() > 20,
        "the router's routes are read: {routes:?}"
    );
    for route in &routes {
        assert!(
            IN_THE_MATRIX.contains(&route.as_str()) || ELSEWHERE.iter().any(|(p, _)| p == route),
            "route {route} is in neither the access matrix nor the list of paths decided elsewhere"
        );
    }
    // Every command the parser knows, with where its access is decided.
    const COMMANDS: &[(&str, &str)] = &[
        ("publish", "a write row"),
        ("chat", "a write row"),
        ("message", "seed 004's chat: the same command as chat"),
        ("private_message", "a write row"),
        ("subscribe", "the WebSocket read rows (live and since)"),
        ("join", "the join row"),
        ("join_room", "seed 004's join: the same command"),
        (
            "authenticate",
            "the identity test (a_session_keeps_its_user…)",
        ),
        ("unsubscribe", "the connection's own subscriptions only"),
        ("ping", "no data"),
        ("leave", "the connection's own rooms only"),
        ("leave_room", "seed 004's leave: the same command"),
        (
            "typing",
            "only rooms the connection joined (NOT_IN_ROOM otherwise)",
        ),
        ("typing_start", "as typing"),
        ("typing_stop", "as typing"),
        (
            "stream.subscribe",
            "streams are not events: no rooms, no users",
        ),
        (
            "stream.unsubscribe",
            "the connection's own stream subscriptions",
        ),
        (
            "document.join",
            "the document's room join rule: documents.rs",
        ),
        ("document.leave", "the connection's own documents only"),
        (
            "document.change",
            "participants only, the room's write rule: documents.rs",
        ),
        ("text_change", "as document.change"),
        ("cursor_move", "participants only: documents.rs"),
    ];
    let protocol = include_str!("../../core/src/protocol.rs");
    let parse = &protocol[protocol
        .find("match kind.as_str()")
        .expect("the command match")..];
    let parse = &parse[..parse.find("other =>").expect("its fallback arm")];
    for arm in parse.lines().filter(|l| l.contains("=>")) {
        for name in quoted_after(arm.split("=>").next().unwrap(), "") {
            assert!(
                COMMANDS.iter().any(|(c, _)| *c == name),
                "WebSocket command {name} is not in the access matrix"
            );
        }
    }
}

/// The string literals in `source` that follow `prefix`.
fn quoted_after(source: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(i) = rest.find(&format!("{prefix}\"")) {
        rest = &rest[i + prefix.len() + 1..];
        let end = rest.find('"').unwrap();
        out.push(rest[..end].to_owned());
        rest = &rest[end + 1..];
    }
    out
}
