//! Server-Sent Events (`GET /api/realtime/stream`) against the real binary: framing,
//! query-parameter subscriptions, authenticated personal streams, `POST /subscribe`,
//! heartbeats, privacy, disconnects and the connection limit.

mod common;

use common::*;
use serde_json::{Value, json};

/// A stream opened with arbitrary request headers (no bearer helper).
async fn open_with(server: &Server, path: &str, headers: &[(&str, &str)]) -> Sse {
    let mut req = reqwest::Client::new()
        .get(server.url(path))
        .header("accept", "text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Sse::from_response(req.send().await.unwrap())
}

/// Opens a stream, asserts 200 and reads its `connection` event; returns it with its id.
async fn open_ok(server: &Server, path: &str, bearer: Option<&str>) -> (Sse, String) {
    let mut sse = Sse::open(server, path, bearer).await;
    assert_eq!(sse.status, 200, "{path}");
    let hello = sse.next().await.expect("a first event");
    assert_eq!(hello.event, "connection", "{hello:?}");
    let id = hello.json()["connectionId"].as_str().unwrap().to_owned();
    (sse, id)
}

/// A non-streaming GET answered with JSON (error answers of the stream route).
async fn get_json(server: &Server, path: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut req = http().get(server.url(path));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(ct.starts_with("application/json"), "{status} {ct}");
    (status, res.json().await.unwrap())
}

/// Reads `event` records up to and including the one with id `last` (the acknowledgement's
/// `id`); asserts every record's SSE id is its seq. Returns the events' JSON.
async fn events_until(sse: &mut Sse, last: &Value) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let e = sse.next_event("event").await;
        let v = e.json();
        assert_eq!(
            e.id.as_deref(),
            Some(v["seq"].to_string().as_str()),
            "id line is the seq: {e:?}"
        );
        let done = v["id"] == last["id"];
        got.push(v);
        if done {
            return got;
        }
    }
}

fn ids(events: &[Value]) -> Vec<Value> {
    events.iter().map(|e| e["id"].clone()).collect()
}

fn ack_ids(acks: &[&Value]) -> Vec<Value> {
    acks.iter().map(|a| a["id"].clone()).collect()
}

#[tokio::test]
async fn stream_headers_and_connection_event() {
    let server = Server::start();
    let mut sse = Sse::open(&server, "/api/realtime/stream", None).await;
    assert_eq!(sse.status, 200);
    let ct = sse.headers["content-type"].to_str().unwrap();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    assert_eq!(sse.headers["cache-control"], "no-cache");
    assert_eq!(sse.headers["x-accel-buffering"], "no");
    let hello = sse.next().await.expect("a first event");
    assert_eq!(hello.event, "connection");
    assert!(hello.id.is_none(), "{hello:?}");
    let id = hello.json()["connectionId"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a uuid: {id}");

    let stats = stats_until(&server, |s| s["connections"]["byType"]["sse"] == 1).await;
    assert_eq!(stats["connections"]["total"], 1, "{stats}");
    assert_eq!(stats["connections"]["uniqueUsers"], 0, "{stats}");
}

#[tokio::test]
async fn query_parameters_select_events() {
    let server = Server::start_open();
    let path = "/api/realtime/stream";
    // Every stream also takes `test.end` (published last in room lobby by alice) so each
    // has a last event to read up to: anything unexpected would show up before it.
    let (mut by_type, _) = open_ok(
        &server,
        &format!("{path}?types=chat.message,test.end"),
        None,
    )
    .await;
    let (mut by_room, _) = open_ok(
        &server,
        &format!("{path}?types=chat.*,test.end&roomId=lobby"),
        None,
    )
    .await;
    let (mut by_user, _) = open_ok(
        &server,
        &format!("{path}?types=order.created,test.end&userId=alice"),
        None,
    )
    .await;
    let (mut everything, _) = open_ok(&server, &format!("{path}?types=*"), None).await;
    let (mut nothing, _) = open_ok(&server, path, None).await;

    let pubs = [
        json!({"type": "chat.message", "roomId": "lobby", "userId": "alice", "data": {"n": 1}}),
        json!({"type": "chat.typing", "roomId": "lobby", "userId": "bob"}),
        json!({"type": "chat.message", "roomId": "other", "userId": "bob"}),
        json!({"type": "order.created", "userId": "bob"}),
        json!({"type": "order.created", "userId": "alice"}),
        json!({"type": "test.end", "roomId": "lobby", "userId": "alice"}),
    ];
    let mut acks = Vec::new();
    for p in pubs {
        acks.push(publish(&server, API_KEY, p).await);
    }
    let [e1, e2, e3, e4, e5, end] = &acks[..] else {
        unreachable!()
    };

    let got = events_until(&mut by_type, end).await;
    assert_eq!(ids(&got), ack_ids(&[e1, e3, end]));
    // The data is the event as history returns it.
    assert_eq!(got[0]["type"], "chat.message");
    assert_eq!(got[0]["seq"], e1["seq"]);
    assert_eq!(got[0]["userId"], "alice");
    assert_eq!(got[0]["roomId"], "lobby");
    assert_eq!(got[0]["data"], json!({"n": 1}));
    assert_eq!(got[0]["timestamp"], e1["timestamp"]);
    let (_, history) = get(
        &server,
        "/api/realtime/events?types=chat.message&limit=1000",
        Some(API_KEY),
    )
    .await;
    assert!(
        history["events"].as_array().unwrap().contains(&got[0]),
        "{history}"
    );

    assert_eq!(
        ids(&events_until(&mut by_room, end).await),
        ack_ids(&[e1, e2, end])
    );
    assert_eq!(
        ids(&events_until(&mut by_user, end).await),
        ack_ids(&[e5, end])
    );
    assert_eq!(
        ids(&events_until(&mut everything, end).await),
        ack_ids(&[e1, e2, e3, e4, e5, end])
    );

    // A stream without `types` (and without credentials) subscribes to nothing: the next
    // thing it sees is a notification broadcast, not one of the events above.
    let (s, b) = post(
        &server,
        "/api/dashboard/notify",
        Some(API_KEY),
        &json!({"message": "m"}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let next = nothing.next().await.unwrap();
    assert_eq!(next.event, "notification", "{next:?}");
    assert!(next.id.is_none());
    assert_eq!(next.json()["message"], "m");
}

#[tokio::test]
async fn authenticated_streams_receive_their_own_personal_events() {
    let server = Server::start();
    let path = "/api/realtime/stream";
    let (mut alice, _) = open_ok(&server, path, Some(&token("alice"))).await;
    // bob authenticates with the query parameter, as EventSource must.
    let (mut bob, _) = open_ok(&server, &format!("{path}?token={}", token("bob")), None).await;
    stats_until(&server, |s| s["connections"]["uniqueUsers"] == 2).await;

    let send = |kind: &'static str, user: &'static str| {
        let server = &server;
        async move { publish(server, API_KEY, json!({"type": kind, "userId": user})).await }
    };
    let m1 = send("user.message", "bob").await;
    send("user.status", "alice").await; // private, but not a personal type
    send("chat.message", "alice").await; // not subscribed
    let n1 = send("user.notification", "alice").await;
    let m3 = send("user.message", "bob").await;
    let m2 = send("user.message", "alice").await;
    let m4 = send("user.notification", "bob").await;

    assert_eq!(
        ids(&events_until(&mut alice, &m2).await),
        ack_ids(&[&n1, &m2])
    );
    assert_eq!(
        ids(&events_until(&mut bob, &m4).await),
        ack_ids(&[&m1, &m3, &m4])
    );
}

#[tokio::test]
async fn privileged_streams_see_every_users_private_events() {
    let server = Server::start();
    let path = "/api/realtime/stream?types=user.*";
    let (mut admin, _) = open_ok(&server, path, Some(&admin_token())).await;
    let (mut service, _) = open_ok(&server, &format!("{path}&token={API_KEY}"), None).await;
    let (mut alice, _) = open_ok(&server, path, Some(&token("alice"))).await;

    let a = publish(&server, &token("alice"), json!({"type": "user.status"})).await;
    let b = publish(&server, &token("bob"), json!({"type": "user.status"})).await;
    let c = publish(&server, &token("alice"), json!({"type": "user.action"})).await;
    for sse in [&mut admin, &mut service] {
        assert_eq!(ids(&events_until(sse, &c).await), ack_ids(&[&a, &b, &c]));
    }
    assert_eq!(ids(&events_until(&mut alice, &c).await), ack_ids(&[&a, &c]));
}

#[tokio::test]
async fn notifications_reach_authenticated_streams() {
    let server = Server::start();
    let (mut bob, _) = open_ok(&server, "/api/realtime/stream", Some(&token("bob"))).await;
    let (mut alice, _) = open_ok(&server, "/api/realtime/stream", Some(&token("alice"))).await;
    let (s, b) = post(
        &server,
        "/api/dashboard/notify",
        Some(&admin_token()),
        &json!({"message": "for bob", "targetUsers": ["bob"]}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["connectionsReached"], 1, "{b}");
    // The stored user.notification arrives through the personal subscription, and the
    // notification message itself.
    let stored = bob.next_event("event").await.json();
    assert_eq!(stored["type"], "user.notification");
    assert_eq!(stored["userId"], "bob");
    assert_eq!(stored["data"]["message"], "for bob");
    let n = bob.next_event("notification").await.json();
    assert_eq!(n["message"], "for bob");
    assert_eq!(n["id"], stored["data"]["id"]);

    let (s, _) = post(
        &server,
        "/api/dashboard/notify",
        Some(API_KEY),
        &json!({"message": "all"}),
    )
    .await;
    assert_eq!(s, 201);
    // alice's first record after `connection` is the broadcast.
    let first = alice.next().await.unwrap();
    assert_eq!(first.event, "notification", "{first:?}");
    assert_eq!(first.json()["message"], "all");
    assert_eq!(
        bob.next_event("notification").await.json()["message"],
        "all"
    );
}

#[tokio::test]
async fn invalid_stream_parameters_are_400_and_leave_no_connection() {
    let server = Server::start();
    for query in [
        "types=bad%20type",
        "types=a..b",
        "types=chat.*&roomId=",
        &format!("types=chat.*&userId={}", "u".repeat(257)),
    ] {
        let (s, b) = get_json(&server, &format!("/api/realtime/stream?{query}"), None).await;
        assert_eq!(s, 400, "{query}: {b}");
        assert_eq!(b["code"], "VALIDATION_ERROR", "{query}: {b}");
    }
    stats_until(&server, |s| s["connections"]["total"] == 0).await;
}

#[tokio::test]
async fn invalid_credentials_on_a_stream_are_401_not_anonymous() {
    let server = Server::start();
    let path = "/api/realtime/stream?types=*";
    let expired = token_with("alice", None, -3600, SECRET);
    let forged = token_with("alice", None, 3600, "other-secret");
    for t in ["garbage", expired.as_str(), forged.as_str()] {
        let (s, b) = get_json(&server, path, Some(t)).await;
        assert_eq!(s, 401, "{b}");
        assert_eq!(b["code"], "AUTH_FAILED", "{b}");
        let (s, b) = get_json(&server, &format!("{path}&token={t}"), None).await;
        assert_eq!(s, 401, "{b}");
        assert_eq!(b["code"], "AUTH_FAILED", "{b}");
    }
    let mut sse = open_with(&server, path, &[("x-api-key", "wrong-key")]).await;
    assert_eq!(sse.status, 401);
    assert!(sse.next().await.is_none_or(|e| e.event != "connection"));
    let stats = stats_until(&server, |_| true).await;
    assert_eq!(
        stats["connections"]["total"], 0,
        "no stream was opened: {stats}"
    );

    // The API key itself is a valid credential for a stream.
    let (_, _) = open_ok(&server, &format!("{path}&token={API_KEY}"), None).await;
}

#[tokio::test]
async fn subscribe_adds_a_subscription_to_an_open_stream() {
    let server = Server::start_open();
    let (mut sse, conn) = open_ok(&server, "/api/realtime/stream", None).await;

    let (s, b) = post(
        &server,
        &format!("/api/realtime/subscribe?connectionId={conn}"),
        Some(&token("alice")),
        &json!({"eventTypes": ["chat.*"], "filters": {"roomId": "lobby"}}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["message"], "Subscription created");
    assert_eq!(b["eventTypes"], json!(["chat.*"]));
    assert_eq!(b["filters"]["roomId"], "lobby");
    let sub_id = b["subscriptionId"].as_str().unwrap();
    let created = sse.next().await.unwrap();
    assert_eq!(created.event, "subscription.created", "{created:?}");
    assert_eq!(created.json()["subscriptionId"], sub_id);

    publish(
        &server,
        API_KEY,
        json!({"type": "chat.message", "roomId": "other"}),
    )
    .await;
    publish(
        &server,
        API_KEY,
        json!({"type": "order.created", "roomId": "lobby"}),
    )
    .await;
    let hit = publish(
        &server,
        API_KEY,
        json!({"type": "chat.message", "roomId": "lobby"}),
    )
    .await;
    assert_eq!(ids(&events_until(&mut sse, &hit).await), ack_ids(&[&hit]));

    let stats = stats_until(&server, |_| true).await;
    assert_eq!(stats["connections"]["subscriptions"], 1, "{stats}");
}

#[tokio::test]
async fn subscribe_errors_and_ownership() {
    let server = Server::start();
    let body = json!({"eventTypes": ["chat.message"]});
    let (mut alices, conn) = open_ok(&server, "/api/realtime/stream", Some(&token("alice"))).await;
    let at = |id: &str| format!("/api/realtime/subscribe?connectionId={id}");

    let (s, b) = post(
        &server,
        "/api/realtime/subscribe",
        Some(&token("alice")),
        &body,
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["code"], "CONNECTION_ID_REQUIRED", "{b}");
    for unknown in ["00000000-0000-4000-8000-000000000000", "not-a-uuid"] {
        let (s, b) = post(&server, &at(unknown), Some(&token("alice")), &body).await;
        assert_eq!(s, 404, "{b}");
        assert_eq!(b["code"], "NOT_FOUND", "{b}");
    }
    let (s, b) = post(&server, &at(&conn), None, &body).await;
    assert_eq!(s, 401, "{b}");
    assert_eq!(b["code"], "AUTH_REQUIRED", "{b}");
    let (s, b) = post(&server, &at(&conn), Some("garbage"), &body).await;
    assert_eq!(s, 401, "{b}");
    assert_eq!(b["code"], "AUTH_FAILED", "{b}");
    let (s, b) = post(&server, &at(&conn), Some(&token("bob")), &body).await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["code"], "FORBIDDEN", "{b}");
    for bad in [
        json!({"eventTypes": []}),
        json!([["chat.*"]]),
        json!({"eventTypes": "chat.*"}),
    ] {
        let (s, b) = post(&server, &at(&conn), Some(&token("alice")), &bad).await;
        assert_eq!(s, 400, "{bad}: {b}");
        assert_eq!(b["code"], "VALIDATION_ERROR", "{bad}: {b}");
    }

    // Only the personal subscription so far: none of the refused requests added one.
    let stats = stats_until(&server, |_| true).await;
    assert_eq!(stats["connections"]["subscriptions"], 1, "{stats}");

    let (s, b) = post(&server, &at(&conn), Some(&admin_token()), &body).await;
    assert_eq!(s, 200, "{b}");
    let by_admin = b["subscriptionId"].clone();
    let (s, b) = post(
        &server,
        &at(&conn),
        Some(&token("alice")),
        &json!({"eventTypes": ["order.*"]}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let by_alice = b["subscriptionId"].clone();
    assert_eq!(
        alices.next_event("subscription.created").await.json()["subscriptionId"],
        by_admin
    );
    assert_eq!(
        alices.next_event("subscription.created").await.json()["subscriptionId"],
        by_alice
    );

    let chat = publish(&server, &token("carol"), json!({"type": "chat.message"})).await;
    let order = publish(&server, &token("carol"), json!({"type": "order.paid"})).await;
    assert_eq!(
        ids(&events_until(&mut alices, &order).await),
        ack_ids(&[&chat, &order])
    );
}

#[tokio::test]
async fn heartbeats_arrive_at_the_ping_interval() {
    let server = Server::start_with(&["--ping-interval-secs", "1"]);
    let (mut sse, _) = open_ok(&server, "/api/realtime/stream", None).await;
    let started = std::time::Instant::now();
    let beat = sse.next().await.unwrap();
    assert_eq!(beat.event, "heartbeat", "{beat:?}");
    let ts = beat.json()["timestamp"].as_str().unwrap().to_owned();
    assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");
    let second = sse.next_event("heartbeat").await;
    assert!(second.json()["timestamp"].as_str().unwrap() > ts.as_str());
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
}

#[tokio::test]
async fn anonymous_streams_never_receive_private_events() {
    let server = Server::start();
    let (mut all, _) = open_ok(&server, "/api/realtime/stream?types=*", None).await;
    let (mut users, _) = open_ok(
        &server,
        "/api/realtime/stream?types=user.*,chat.message",
        None,
    )
    .await;
    let (mut alices, _) = open_ok(&server, "/api/realtime/stream?types=*&userId=alice", None).await;

    publish(&server, &token("alice"), json!({"type": "user.message"})).await;
    publish(
        &server,
        API_KEY,
        json!({"type": "user.notification", "userId": "alice"}),
    )
    .await;
    publish(
        &server,
        &admin_token(),
        json!({"type": "user.login", "userId": "alice"}),
    )
    .await;
    let public = publish(&server, &token("alice"), json!({"type": "chat.message"})).await;

    for sse in [&mut all, &mut users, &mut alices] {
        assert_eq!(ids(&events_until(sse, &public).await), ack_ids(&[&public]));
    }
}

#[tokio::test]
async fn dropped_streams_leave_the_stats() {
    let server = Server::start();
    let (alice, _) = open_ok(
        &server,
        "/api/realtime/stream?types=chat.*",
        Some(&token("alice")),
    )
    .await;
    let (anon, _) = open_ok(&server, "/api/realtime/stream?types=*", None).await;
    stats_until(&server, |s| {
        s["connections"]["byType"]["sse"] == 2
            && s["connections"]["uniqueUsers"] == 1
            && s["connections"]["subscriptions"] == 3
    })
    .await;
    drop(alice);
    stats_until(&server, |s| {
        s["connections"]["byType"]["sse"] == 1
            && s["connections"]["uniqueUsers"] == 0
            && s["connections"]["subscriptions"] == 1
    })
    .await;
    drop(anon);
    stats_until(&server, |s| {
        s["connections"]["total"] == 0 && s["connections"]["subscriptions"] == 0
    })
    .await;
    // Publishing to nobody is fine.
    publish(&server, &token("bob"), json!({"type": "chat.message"})).await;
}

#[tokio::test]
async fn the_connection_limit_refuses_streams_with_503() {
    let server = Server::start_with(&["--max-connections", "1"]);
    let (first, _) = open_ok(&server, "/api/realtime/stream", None).await;
    let (s, b) = get_json(&server, "/api/realtime/stream", None).await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["code"], "UNAVAILABLE", "{b}");
    assert!(
        b["error"].as_str().unwrap().contains("connection limit"),
        "{b}"
    );
    // WebSockets count against the same limit.
    assert!(
        tokio_tungstenite::connect_async(server.ws_url("/ws"))
            .await
            .is_err()
    );

    // The slot is released when the stream goes away.
    drop(first);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let sse = Sse::open(&server, "/api/realtime/stream", None).await;
        if sse.status == 200 {
            break;
        }
        assert_eq!(sse.status, 503);
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never released"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
