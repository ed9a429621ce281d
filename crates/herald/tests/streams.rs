//! Streams (seed 002's `registerStreamRoute` / `sendStreamMessage`, seed 001's `DataStreamer`):
//! declared in `herald.toml` or created by an admin, read with `EventSource.onmessage`, a
//! bounded snapshot first, throttling and batching, subscribers removed when they go.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// A server started with this `herald.toml` in its working directory.
struct Configured {
    server: Server,
    _dir: tempfile::TempDir,
}

fn start_with_toml(toml: &str, args: &[&str]) -> Configured {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("herald.toml"), toml).unwrap();
    Configured {
        server: Server::spawn(dir.path(), args),
        _dir: dir,
    }
}

async fn send(
    server: &Server,
    stream: &str,
    bearer: Option<&str>,
    message: &Value,
) -> (u16, Value) {
    post(server, &format!("/api/streams/{stream}"), bearer, message).await
}

async fn create(server: &Server, bearer: &str, body: &Value) -> (u16, Value) {
    post(server, "/api/streams", Some(bearer), body).await
}

/// The stream's entry in `GET /api/streams`.
async fn listed(server: &Server, name: &str) -> Value {
    let (status, list) = get(server, "/api/streams", Some(&admin_token())).await;
    assert_eq!(status, 200, "{list}");
    list["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// What `EventSource.onmessage` would get next: the next unnamed record's data, parsed.
async fn on_message(sse: &mut Sse) -> (Option<String>, Value) {
    let e = sse.next().await.expect("stream ended");
    assert_eq!(e.event, "message", "stream records are unnamed: {e:?}");
    (e.id.clone(), e.json())
}

const DECLARED: &str = r#"
[[streams]]
name = "prices"
path = "/stock-prices"
history = 3

[[streams]]
name = "activity"
"#;

#[tokio::test]
async fn declared_stream_sends_the_bounded_snapshot_then_live_messages_to_onmessage() {
    let c = start_with_toml(DECLARED, &["--ping-interval-secs", "1"]);
    let server = &c.server;
    let prices = listed(server, "prices").await;
    assert_eq!(
        (&prices["path"], &prices["history"], &prices["subscribers"]),
        (&json!("/stock-prices"), &json!(3), &json!(0)),
        "{prices}"
    );
    assert_eq!(listed(server, "activity").await["path"], "/activity");

    for i in 1..=5 {
        let (status, res) = send(server, "prices", Some(API_KEY), &json!({"n": i})).await;
        assert_eq!((status, &res["delivered"]), (200, &json!(0)), "{res}");
    }
    // The path the stream was declared with, as seed 002's pages open it.
    let mut sse = Sse::open(server, "/stock-prices", None).await;
    assert_eq!(sse.status, 200);
    assert_eq!(
        sse.headers["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut ids = Vec::new();
    for n in 3..=5 {
        let (id, data) = on_message(&mut sse).await;
        assert_eq!(data, json!({"n": n}));
        ids.push(id.expect("records carry an id"));
    }
    let (status, res) = send(server, "prices", Some(&token("alice")), &json!({"n": 6})).await;
    assert_eq!((status, &res["delivered"]), (200, &json!(1)), "{res}");
    assert_eq!(on_message(&mut sse).await.1, json!({"n": 6}));

    // The same stream by name; and an EventSource reconnecting with its Last-Event-ID gets
    // only what it missed.
    let mut by_name = Sse::open(server, "/api/streams/prices", None).await;
    for n in 4..=6 {
        assert_eq!(on_message(&mut by_name).await.1, json!({"n": n}));
    }
    let res = http()
        .get(server.url("/stock-prices"))
        .header("last-event-id", &ids[1])
        .send()
        .await
        .unwrap();
    let mut resumed = Sse::from_response(res);
    assert_eq!(on_message(&mut resumed).await.1, json!({"n": 5}));
    assert_eq!(on_message(&mut resumed).await.1, json!({"n": 6}));

    let entry = listed(server, "prices").await;
    assert_eq!(
        (
            &entry["retained"],
            &entry["subscribers"],
            &entry["published"]
        ),
        (&json!(3), &json!(3), &json!(6))
    );

    // Any JSON value is a message; keep-alives are comments, invisible to onmessage.
    send(server, "activity", Some(API_KEY), &json!("just a string")).await;
    let res = http().get(server.url("/activity")).send().await.unwrap();
    let mut body = res.bytes_stream();
    let mut seen = String::new();
    while !seen.contains(": keep-alive\n\n") {
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(seen.contains("\ndata: \"just a string\"\n\n"), "{seen}");
    assert!(!seen.contains("event:"), "{seen}");
}

#[tokio::test]
async fn sending_needs_credentials_a_known_stream_and_a_json_body_within_the_limit() {
    let c = start_with_toml(DECLARED, &["--max-message-bytes", "1024"]);
    let server = &c.server;
    let (status, res) = send(server, "prices", None, &json!(1)).await;
    assert_eq!((status, res["code"].as_str()), (401, Some("AUTH_REQUIRED")));
    let (status, res) = send(server, "nope", Some(API_KEY), &json!(1)).await;
    assert_eq!((status, res["code"].as_str()), (404, Some("NOT_FOUND")));

    let raw = |body: String| {
        http()
            .post(server.url("/api/streams/prices"))
            .bearer_auth(token("alice"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let res = raw("{not json".into()).await.unwrap();
    assert_eq!(res.status().as_u16(), 400);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "INVALID_JSON");
    let res = raw(String::new()).await.unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let res = raw(format!("\"{}\"", "x".repeat(2000))).await.unwrap();
    assert_eq!(res.status().as_u16(), 413);
    // Nothing of that was retained.
    assert_eq!(listed(server, "prices").await["retained"], 0);

    // A route that is neither built in nor a stream is still a 404; a stream's path is read
    // with GET only.
    let (status, res) = get(server, "/no-such-thing", None).await;
    assert_eq!((status, res["code"].as_str()), (404, Some("NOT_FOUND")));
    let (status, _) = post(server, "/stock-prices", Some(API_KEY), &json!(1)).await;
    assert_eq!(status, 405);
    assert_eq!(
        Sse::open(server, "/api/streams/nope", None).await.status,
        404
    );
}

#[tokio::test]
async fn only_admins_create_and_delete_streams_and_created_streams_get_their_path() {
    let server = Server::start();
    let admin = admin_token();
    let body = json!({"name": "news", "path": "/news-feed", "history": 10});
    let (status, res) = create(&server, &token("alice"), &body).await;
    assert_eq!((status, res["code"].as_str()), (403, Some("FORBIDDEN")));
    let (status, _) = create(&server, API_KEY, &body).await;
    assert_eq!(status, 403);
    let (status, _) = post(&server, "/api/streams", None, &body).await;
    assert_eq!(status, 401);

    let (status, res) = create(&server, &admin, &body).await;
    assert_eq!(status, 201, "{res}");
    assert_eq!(
        (&res["name"], &res["path"], &res["history"]),
        (&json!("news"), &json!("/news-feed"), &json!(10))
    );
    let (status, res) = create(
        &server,
        &admin,
        &json!({"name": "news", "path": "/elsewhere"}),
    )
    .await;
    assert_eq!(
        (status, res["code"].as_str()),
        (409, Some("CONFLICT")),
        "{res}"
    );
    let (status, res) = create(
        &server,
        &admin,
        &json!({"name": "other", "path": "/news-feed"}),
    )
    .await;
    assert_eq!(status, 409, "{res}");
    for bad in [
        json!({"name": "has space"}),
        json!({"name": ""}),
        json!({"name": "x", "path": "no-slash"}),
        json!({"name": "x", "path": "/api/realtime/stream"}),
        json!({"name": "x", "path": "/health"}),
        json!({"name": "x", "path": "/events"}),
        json!({"name": "x", "throttleMs": 100, "batchMs": 100}),
        json!({"name": "x", "history": 1_000_000}),
        json!({"name": "x", "unknown": 1}),
    ] {
        let (status, res) = create(&server, &admin, &bad).await;
        assert_eq!(
            (status, res["code"].as_str()),
            (400, Some("VALIDATION_ERROR")),
            "{bad}: {res}"
        );
    }

    // Served at its path at once, though it was created after start-up.
    let mut reader = Sse::open(&server, "/news-feed", None).await;
    assert_eq!(reader.status, 200);
    send(
        &server,
        "news",
        Some(&token("bob")),
        &json!({"headline": "hi"}),
    )
    .await;
    assert_eq!(on_message(&mut reader).await.1, json!({"headline": "hi"}));

    let delete = |bearer: String| {
        http()
            .delete(server.url("/api/streams/news"))
            .bearer_auth(bearer)
            .send()
    };
    assert_eq!(delete(token("alice")).await.unwrap().status().as_u16(), 403);
    let res = delete(admin.clone()).await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"deleted": "news", "subscribers": 1})
    );
    // Its readers' streams end (after a named `close` record onmessage does not see).
    let close = reader.next().await.expect("a close record");
    assert_eq!(close.event, "close");
    assert!(reader.next().await.is_none());
    assert_eq!(Sse::open(&server, "/news-feed", None).await.status, 404);
    assert_eq!(delete(admin).await.unwrap().status().as_u16(), 404);
}

#[tokio::test]
async fn throttle_delivers_far_fewer_and_always_the_last_value() {
    let server = Server::start();
    let (status, res) = create(
        &server,
        &admin_token(),
        &json!({"name": "ticks", "throttleMs": 200}),
    )
    .await;
    assert_eq!(status, 201, "{res}");
    assert_eq!(res["throttleMs"], 200);
    let mut sse = Sse::open(&server, "/ticks", None).await;
    assert_eq!(sse.status, 200);
    for i in 0..50 {
        let (status, res) = send(&server, "ticks", Some(API_KEY), &json!({"price": i})).await;
        assert_eq!(status, 202, "{res}");
        assert!(res.get("delivered").is_none(), "{res}");
    }
    let mut received = Vec::new();
    loop {
        let price = on_message(&mut sse).await.1["price"].as_i64().unwrap();
        received.push(price);
        if price == 49 {
            break;
        }
    }
    assert!(
        received.len() <= 10,
        "throttled to at most one per 200 ms: {received:?}"
    );
    assert!(received.windows(2).all(|w| w[0] < w[1]), "{received:?}");
    // The trailing value was the last: nothing else follows.
    tokio::time::sleep(Duration::from_millis(400)).await;
    send(&server, "ticks", Some(API_KEY), &json!({"price": 50})).await;
    assert_eq!(on_message(&mut sse).await.1["price"], 50);
}

#[tokio::test]
async fn batch_delivers_one_array_per_interval_with_every_message_in_order() {
    let server = Server::start();
    let (status, res) = create(
        &server,
        &admin_token(),
        &json!({"name": "log", "batchMs": 300}),
    )
    .await;
    assert_eq!(status, 201, "{res}");
    let mut sse = Sse::open(&server, "/log", None).await;
    for i in 0..10 {
        let (status, _) = send(&server, "log", Some(API_KEY), &json!(i)).await;
        assert_eq!(status, 202);
    }
    let mut arrays = Vec::new();
    let mut all = Vec::new();
    while all.len() < 10 {
        let (_, data) = on_message(&mut sse).await;
        let items = data
            .as_array()
            .unwrap_or_else(|| panic!("not an array: {data}"))
            .clone();
        assert!(!items.is_empty());
        all.extend(items.iter().map(|v| v.as_i64().unwrap()));
        arrays.push(items);
    }
    assert_eq!(all, (0..10).collect::<Vec<_>>());
    assert!(arrays.len() <= 3, "one array per 300 ms: {arrays:?}");

    // A new subscriber's snapshot is one array too.
    let mut late = Sse::open(&server, "/log", None).await;
    assert_eq!(
        on_message(&mut late).await.1,
        json!((0..10).collect::<Vec<_>>())
    );
}

#[tokio::test]
async fn subscribers_that_disconnect_are_removed() {
    let c = start_with_toml(DECLARED, &[]);
    let server = &c.server;
    let a = Sse::open(server, "/stock-prices", None).await;
    let b = Sse::open(server, "/api/streams/prices", None).await;
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(listed(server, "prices").await["subscribers"], 2);
    drop(a);
    drop(b);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let entry = listed(server, "prices").await;
        if entry["subscribers"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still subscribed: {entry}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stats_until(server, |s| s["connections"]["total"] == 0).await;
}

#[test]
fn invalid_stream_configuration_stops_start_up_with_a_clear_message() {
    for (toml, expected) in [
        (
            "[[streams]]\nname = \"x\"\npath = \"/api/x\"\n",
            "collides with a built-in route",
        ),
        ("[[streams]]\nname = \"bad name\"\n", "invalid stream name"),
        ("[[streams]]\nname = \"x\"\nthrottle = 5\n", "unknown field"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("herald.toml"), toml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--port", "0", "--host", "127.0.0.1"])
            .env("HERALD_LOG", "error")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml}");
        assert!(stderr.contains(expected), "{toml}: {stderr}");
    }
}

#[tokio::test]
async fn websocket_subscribes_to_a_stream_with_its_snapshot() {
    let c = start_with_toml(DECLARED, &[]);
    let server = &c.server;
    let admin = admin_token();
    for i in 1..=5 {
        assert_eq!(
            send(server, "prices", Some(&admin), &json!({"p": i}))
                .await
                .0,
            200
        );
    }
    let mut ws = Ws::connect(server, "/ws").await;
    ws.send(json!({"type": "stream.subscribe", "stream": "prices", "id": 1}))
        .await;
    let mut snapshot = Vec::new();
    for _ in 0..3 {
        let m = ws.recv().await;
        assert_eq!(
            (&m["type"], &m["stream"]),
            (&json!("stream.message"), &json!("prices")),
            "{m}"
        );
        snapshot.push(m["data"]["p"].clone());
    }
    assert_eq!(snapshot, [json!(3), json!(4), json!(5)]);
    let ok = ws.recv().await;
    assert_eq!(
        (&ok["type"], &ok["data"]["snapshot"], &ok["id"]),
        (&json!("stream.subscribed"), &json!(3), &json!(1)),
        "{ok}"
    );

    send(server, "prices", Some(&admin), &json!({"p": 6})).await;
    let live = ws.recv().await;
    assert_eq!(live["data"]["p"], 6, "{live}");
    assert!(listed(server, "prices").await["subscribers"] == 1);

    // Subscribing twice conflicts; unknown streams are not found; unsubscribing stops delivery.
    ws.send(json!({"type": "stream.subscribe", "stream": "prices"}))
        .await;
    assert_eq!(ws.recv().await["data"]["code"], "CONFLICT");
    ws.send(json!({"type": "stream.subscribe", "stream": "nope"}))
        .await;
    assert_eq!(ws.recv().await["data"]["code"], "NOT_FOUND");
    ws.send(json!({"type": "stream.unsubscribe", "stream": "prices"}))
        .await;
    assert_eq!(ws.recv().await["type"], "stream.unsubscribed");
    send(server, "prices", Some(&admin), &json!({"p": 7})).await;
    ws.expect_silence(Duration::from_millis(300)).await;

    // A subscriber that disconnects is removed.
    ws.send(json!({"type": "stream.subscribe", "stream": "prices", "lastId": live["messageId"]}))
        .await;
    let again = ws.recv().await;
    assert_eq!(
        again["data"]["p"], 7,
        "only what came after lastId: {again}"
    );
    assert_eq!(ws.recv().await["type"], "stream.subscribed");
    drop(ws);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while listed(server, "prices").await["subscribers"] != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "subscriber never removed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
