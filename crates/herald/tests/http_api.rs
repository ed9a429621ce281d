//! The HTTP API against the real binary: publish, authentication, history, statistics,
//! health, metrics, the dashboard routes, CORS, and the JSON answers for unknown routes.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Helpers local to this file.

/// POSTs a raw body (for malformed JSON); returns status and JSON body.
async fn post_raw(server: &Server, path: &str, bearer: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = http()
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// `GET /api/realtime/events?<query>` as `bearer`; asserts 200 and returns the events.
async fn history(server: &Server, bearer: &str, query: &str) -> Vec<Value> {
    let (status, body) = get(
        server,
        &format!("/api/realtime/events?{query}"),
        Some(bearer),
    )
    .await;
    assert_eq!(status, 200, "events?{query}: {body}");
    let events = body["events"].as_array().expect("events array").clone();
    assert_eq!(body["count"], events.len(), "{body}");
    events
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// Asserts a `{error, code}` body with the given status.
fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["code"], want_code, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
}

/// RFC 4648 base64url without padding (for hand-built JWTs).
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// An unsigned token (`alg: none`) for `user` that would otherwise be valid.
fn alg_none_token(user: &str) -> String {
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let payload = b64url(
        json!({"sub": user, "exp": exp, "role": "admin"})
            .to_string()
            .as_bytes(),
    );
    format!("{header}.{payload}.")
}

/// The value of an unlabelled-or-labelled Prometheus sample line starting with `series `.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

async fn metrics_text(server: &Server) -> String {
    let res = http().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    res.text().await.unwrap()
}

/// Polls `/metrics` until `pred` holds (gauges are sampled per scrape); panics after `WAIT`.
async fn metrics_until(server: &Server, pred: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text = metrics_text(server).await;
        if pred(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics never reached the expected state:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_iso_timestamp(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 24 && s.ends_with('Z') && s.as_bytes()[10] == b'T' && s.as_bytes()[19] == b'.'
    })
}

// ---------------------------------------------------------------------------------------------
// POST /api/realtime/publish

#[tokio::test]
async fn publish_acknowledges_with_increasing_seq_as_the_caller() {
    let server = Server::start();
    let alice = token("alice");
    let (status, body) = post(
        &server,
        "/api/realtime/publish",
        Some(&alice),
        &json!({"type": "chat.message", "data": {"text": "hi"}, "roomId": "lobby"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["message"], "Event published");
    let ack = &body["event"];
    assert_eq!(ack["success"], true);
    assert_eq!(ack["type"], "chat.message");
    assert_eq!(ack["id"].as_str().unwrap().len(), 36, "uuid: {ack}");
    assert!(is_iso_timestamp(&ack["timestamp"]), "{ack}");
    let mut last = ack["seq"].as_u64().unwrap();
    assert!(last >= 1);

    for i in 0..5 {
        let ack = publish(
            &server,
            &alice,
            json!({"type": "chat.message", "data": {"i": i}}),
        )
        .await;
        let seq = ack["seq"].as_u64().unwrap();
        assert!(seq > last, "seq {seq} after {last}");
        last = seq;
    }

    let events = history(&server, &alice, "types=chat.message").await;
    assert_eq!(events.len(), 6);
    for e in &events {
        assert_eq!(e["userId"], "alice", "{e}");
    }
    let stored = events.iter().find(|e| e["id"] == ack["id"]).unwrap();
    assert_eq!(stored["seq"], ack["seq"]);
    assert_eq!(stored["data"]["text"], "hi");
    assert_eq!(stored["roomId"], "lobby");
    assert_eq!(stored["timestamp"], ack["timestamp"]);
}

#[tokio::test]
async fn only_privileged_callers_publish_as_someone_else() {
    let server = Server::start();
    let (status, body) = post(
        &server,
        "/api/realtime/publish",
        Some(&token("alice")),
        &json!({"type": "chat.message", "userId": "bob"}),
    )
    .await;
    assert_error(status, &body, 403, "ACCESS_DENIED");

    // Naming yourself is fine.
    let own = publish(
        &server,
        &token("alice"),
        json!({"type": "chat.message", "userId": "alice"}),
    )
    .await;

    // API key as a bearer token, as an X-API-Key header, and an admin token.
    let by_bearer = publish(
        &server,
        API_KEY,
        json!({"type": "chat.message", "userId": "bob"}),
    )
    .await;
    let res = http()
        .post(server.url("/api/realtime/publish"))
        .header("x-api-key", API_KEY)
        .json(&json!({"type": "chat.message", "userId": "carol"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let by_header = res.json::<Value>().await.unwrap()["event"].clone();
    let by_admin = publish(
        &server,
        &admin_token(),
        json!({"type": "chat.message", "userId": "dave"}),
    )
    .await;
    // An API key without userId publishes as the service identity.
    let as_service = publish(&server, API_KEY, json!({"type": "chat.message"})).await;

    let events = history(&server, &admin_token(), "types=chat.message").await;
    let user_of = |ack: &Value| {
        events
            .iter()
            .find(|e| e["id"] == ack["id"])
            .unwrap_or_else(|| panic!("{ack} not in history"))["userId"]
            .clone()
    };
    assert_eq!(user_of(&own), "alice");
    assert_eq!(user_of(&by_bearer), "bob");
    assert_eq!(user_of(&by_header), "carol");
    assert_eq!(user_of(&by_admin), "dave");
    assert_eq!(user_of(&as_service), "service");
    assert_eq!(events.len(), 5, "the refused publish was not stored");
}

#[tokio::test]
async fn publish_validation_errors_are_400_with_a_code() {
    let server = Server::start();
    let alice = token("alice");
    let path = "/api/realtime/publish";

    let (s, b) = post(&server, path, Some(&alice), &json!({"data": {"x": 1}})).await;
    assert_error(s, &b, 400, "VALIDATION_ERROR");
    for bad in ["bad type!", "", "a..b", ".a", "a.", "white space"] {
        let (s, b) = post(&server, path, Some(&alice), &json!({"type": bad})).await;
        assert_error(s, &b, 400, "VALIDATION_ERROR");
    }
    for wrong_shape in [
        json!({"type": 42}),
        json!({"type": "chat.message", "metadata": "not an object"}),
        json!({"type": "chat.message", "roomId": 7}),
        // serde would fill the struct positionally from an array.
        json!(["chat.message"]),
        json!(["chat.message", {"x": 1}, "lobby"]),
    ] {
        let (s, b) = post(&server, path, Some(&alice), &wrong_shape).await;
        assert_error(s, &b, 400, "VALIDATION_ERROR");
    }
    let (s, b) = post(
        &server,
        path,
        Some(&alice),
        &json!({"type": "chat.message", "roomId": "r".repeat(257)}),
    )
    .await;
    assert_error(s, &b, 400, "VALIDATION_ERROR");
    let (s, b) = post(
        &server,
        path,
        Some(&alice),
        &json!({"type": "chat.message", "roomId": ""}),
    )
    .await;
    assert_error(s, &b, 400, "VALIDATION_ERROR");
    // 256 characters is the limit, inclusive.
    publish(
        &server,
        &alice,
        json!({"type": "chat.message", "roomId": "r".repeat(256)}),
    )
    .await;

    for malformed in [
        r#"{"type": "chat.message""#,
        "not json",
        "{'type': 'x'}",
        "",
    ] {
        let (s, b) = post_raw(&server, path, Some(&alice), malformed).await;
        assert_error(s, &b, 400, "INVALID_JSON");
    }

    let events = history(&server, &alice, "").await;
    assert_eq!(events.len(), 1, "only the valid publish was stored");
}

#[tokio::test]
async fn posting_to_the_poll_route_publishes_like_publish() {
    let server = Server::start_open();
    let alice = token("alice");
    // Seed 003's polling client posts where it polls: a held poll gets what is posted there.
    let held = {
        let url = server.url("/api/realtime/poll?types=chat.*&cursor=0&timeout=30");
        tokio::spawn(async move { http().get(url).send().await.unwrap().json::<Value>().await })
    };
    let body = json!({"type": "chat.message", "data": {"text": "hi"}, "roomId": "lobby"});
    let (status, posted) = post(&server, "/api/realtime/poll", Some(&alice), &body).await;
    assert_eq!(status, 201, "{posted}");
    let (status, published) = post(&server, "/api/realtime/publish", Some(&alice), &body).await;
    assert_eq!(status, 201, "{published}");
    let keys = |v: &Value| {
        v["event"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(posted["message"], published["message"]);
    assert_eq!(keys(&posted), keys(&published), "{posted} vs {published}");
    assert_eq!(
        posted["event"]["seq"].as_u64().unwrap() + 1,
        published["event"]["seq"]
    );

    let polled = held.await.unwrap().unwrap();
    assert_eq!(polled["events"][0]["id"], posted["event"]["id"], "{polled}");
    assert_eq!(polled["events"][0]["userId"], "alice", "{polled}");
    let stored = history(&server, &alice, "types=chat.message").await;
    assert_eq!(
        seqs(&stored),
        [
            published["event"]["seq"].clone(),
            posted["event"]["seq"].clone()
        ]
    );

    // The same checks as publish.
    let (status, b) = post(&server, "/api/realtime/poll", None, &body).await;
    assert_error(status, &b, 401, "AUTH_REQUIRED");
    let (status, b) = post(&server, "/api/realtime/poll", Some("garbage"), &body).await;
    assert_error(status, &b, 401, "AUTH_FAILED");
    let as_bob = json!({"type": "chat.message", "data": {}, "userId": "bob"});
    let (status, b) = post(&server, "/api/realtime/poll", Some(&alice), &as_bob).await;
    assert_error(status, &b, 403, "ACCESS_DENIED");
    let (status, b) = post_raw(&server, "/api/realtime/poll", Some(&alice), "{").await;
    assert_error(status, &b, 400, "INVALID_JSON");
}

#[tokio::test]
async fn bodies_over_max_message_bytes_are_413() {
    let server = Server::start_with(&["--max-message-bytes", "1024"]);
    let alice = token("alice");
    let (s, b) = post(
        &server,
        "/api/realtime/publish",
        Some(&alice),
        &json!({"type": "chat.message", "data": {"text": "x".repeat(4000)}}),
    )
    .await;
    assert_eq!(s, 413, "{b}");
    assert_eq!(b["code"], "VALIDATION_ERROR", "{b}");
    // Just under the limit is accepted.
    publish(
        &server,
        &alice,
        json!({"type": "chat.message", "data": {"text": "x".repeat(900)}}),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// POST /api/realtime/publish/batch

const BATCH: &str = "/api/realtime/publish/batch";

#[tokio::test]
async fn a_batch_gets_consecutive_seqs_in_its_order_and_is_delivered_in_that_order() {
    let server = Server::start();
    let alice = token("alice");
    let mut ws = Ws::user(&server, "bob").await;
    ws.subscribe(&["batch.*"], json!({})).await;
    let before = publish(&server, &alice, json!({"type": "batch.before"})).await;

    let events: Vec<Value> = (0..300)
        .map(|i| json!({"type": "batch.item", "data": {"i": i}, "roomId": "r"}))
        .collect();
    let (status, body) = post(&server, BATCH, Some(&alice), &json!({ "events": events })).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["message"], "Events published");
    let acks = body["events"].as_array().unwrap();
    assert_eq!(acks.len(), 300);
    let first = before["seq"].as_u64().unwrap() + 1;
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack["seq"], first + i as u64, "{ack}");
        assert_eq!(ack["type"], "batch.item");
        assert_eq!(ack["success"], true);
    }

    // Live delivery: the event before, then the batch in its order.
    let mut seen = Vec::new();
    while seen.len() < 301 {
        let v = ws.recv().await;
        if v["type"] == "event" {
            seen.push(v["data"].clone());
        }
    }
    assert_eq!(seen[0]["seq"], before["seq"]);
    for (i, e) in seen[1..].iter().enumerate() {
        assert_eq!(e["seq"], acks[i]["seq"], "{e}");
        assert_eq!(e["data"]["i"], i, "{e}");
        assert_eq!(e["userId"], "alice", "published as the caller: {e}");
    }

    // Durable, with the answered ids.
    let stored = history(&server, &alice, "types=batch.item&limit=1000").await;
    assert_eq!(stored.len(), 300);
    assert_eq!(stored[0]["id"], acks[299]["id"], "newest first");
    assert_eq!(stored[0]["data"]["i"], 299);
    assert_eq!(stored[0]["roomId"], "r");
}

#[tokio::test]
async fn a_batch_with_one_bad_event_is_refused_whole() {
    let server = Server::start_with(&["--max-message-bytes", "1024"]);
    let alice = token("alice");
    let good = json!({"type": "batch.ok"});
    let cases = [
        (json!({"events": []}), 400, "VALIDATION_ERROR"),
        (
            json!({"events": vec![good.clone(); 1001]}),
            400,
            "VALIDATION_ERROR",
        ),
        (
            json!({"events": [good, {"type": "bad type!"}]}),
            400,
            "VALIDATION_ERROR",
        ),
        (json!({"events": [good, [1, 2]]}), 400, "VALIDATION_ERROR"),
        (
            json!({"events": [good, {"type": "x", "roomId": 7}]}),
            400,
            "VALIDATION_ERROR",
        ),
        (
            json!({"events": [good, {"type": "x", "userId": "bob"}]}),
            403,
            "ACCESS_DENIED",
        ),
        (json!({"events": good}), 400, "VALIDATION_ERROR"),
        (json!([good]), 400, "VALIDATION_ERROR"),
        (
            json!({"events": [good, {"type": "x", "data": "y".repeat(2000)}]}),
            413,
            "VALIDATION_ERROR",
        ),
    ];
    for (body, status, code) in cases {
        let (s, b) = post(&server, BATCH, Some(&alice), &body).await;
        assert_error(s, &b, status, code);
    }
    // Which event was wrong is named.
    let (_, b) = post(
        &server,
        BATCH,
        Some(&alice),
        &json!({"events": [good, good, {"type": ""}]}),
    )
    .await;
    assert!(
        b["error"].as_str().unwrap().starts_with("events[2]: "),
        "{b}"
    );
    let (s, b) = post_raw(&server, BATCH, Some(&alice), r#"{"events": [{"type": "x"}"#).await;
    assert_error(s, &b, 400, "INVALID_JSON");
    let (s, b) = post(&server, BATCH, None, &json!({"events": [good]})).await;
    assert_error(s, &b, 401, "AUTH_REQUIRED");

    // Nothing of any refused batch was stored.
    let stored = history(&server, &admin_token(), "limit=1000").await;
    assert!(stored.is_empty(), "{stored:?}");

    // The body may exceed max_message_bytes as long as each event fits, up to 1 MiB.
    let events: Vec<Value> = (0..200)
        .map(|i| json!({"type": "batch.ok", "data": {"i": i, "pad": "z".repeat(900)}}))
        .collect();
    let (s, b) = post(&server, BATCH, Some(&alice), &json!({ "events": events })).await;
    assert_eq!(s, 201, "{b}");
    let too_big: Vec<Value> = (0..1100)
        .map(|_| json!({"type": "batch.ok", "data": "z".repeat(950)}))
        .collect();
    let (s, b) = post(&server, BATCH, Some(&alice), &json!({ "events": too_big })).await;
    assert_error(s, &b, 413, "VALIDATION_ERROR");
}

// ---------------------------------------------------------------------------------------------
// Authentication

#[tokio::test]
async fn missing_or_bad_credentials_are_401() {
    let server = Server::start();
    let body = json!({"type": "chat.message"});
    let (s, b) = post(&server, "/api/realtime/publish", None, &body).await;
    assert_error(s, &b, 401, "AUTH_REQUIRED");
    for path in [
        "/api/realtime/events",
        "/api/realtime/stats",
        "/api/dashboard/live-data",
        "/api/dashboard/activity",
        "/api/dashboard/alerts",
    ] {
        let (s, b) = get(&server, path, None).await;
        assert_error(s, &b, 401, "AUTH_REQUIRED");
    }

    // The hand-built token is well-formed: only its algorithm is wrong.
    assert!(alg_none_token("alice").starts_with("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0."));
    let bad = [
        ("expired", token_with("alice", None, -3600, SECRET)),
        (
            "wrong signature",
            token_with("alice", None, 3600, "not-the-secret"),
        ),
        ("alg none", alg_none_token("alice")),
        ("garbage", "garbage".to_owned()),
        ("three garbage parts", "a.b.c".to_owned()),
        ("wrong api key", "not-the-api-key".to_owned()),
    ];
    for (what, t) in &bad {
        let (s, b) = post(&server, "/api/realtime/publish", Some(t), &body).await;
        assert_eq!(s, 401, "{what}: {b}");
        assert_eq!(b["code"], "AUTH_FAILED", "{what}: {b}");
        let (s, b) = get(&server, "/api/realtime/events", Some(t)).await;
        assert_eq!(s, 401, "{what}: {b}");
        assert_eq!(b["code"], "AUTH_FAILED", "{what}: {b}");
    }
    let res = http()
        .post(server.url("/api/realtime/publish"))
        .header("x-api-key", "not-the-api-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "AUTH_FAILED");

    // Nothing got in.
    assert!(history(&server, &admin_token(), "").await.is_empty());

    // The scheme is case-insensitive.
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let res = http()
            .post(server.url("/api/realtime/publish"))
            .header("authorization", format!("{scheme} {}", token("alice")))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "{scheme}");
    }
}

// ---------------------------------------------------------------------------------------------
// GET /api/realtime/events

#[tokio::test]
async fn history_filters_by_type_user_room_and_since() {
    let server = Server::start();
    let e1 = publish(
        &server,
        API_KEY,
        json!({"type": "chat.message", "roomId": "lobby", "userId": "alice"}),
    )
    .await;
    let e2 = publish(
        &server,
        API_KEY,
        json!({"type": "chat.typing", "roomId": "lobby", "userId": "bob"}),
    )
    .await;
    // Later events get a strictly later millisecond timestamp.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let e3 = publish(
        &server,
        API_KEY,
        json!({"type": "order.created", "userId": "alice"}),
    )
    .await;
    let e4 = publish(
        &server,
        API_KEY,
        json!({"type": "chat.message", "roomId": "other", "userId": "bob"}),
    )
    .await;
    let s = |e: &Value| e["seq"].as_u64().unwrap();
    let reader = token("reader");

    let all = history(&server, &reader, "").await;
    assert_eq!(
        seqs(&all),
        vec![s(&e4), s(&e3), s(&e2), s(&e1)],
        "newest first"
    );
    assert_eq!(all[0]["id"], e4["id"]);
    assert_eq!(all[0]["type"], "chat.message");

    assert_eq!(
        seqs(&history(&server, &reader, "types=chat.message").await),
        vec![s(&e4), s(&e1)]
    );
    assert_eq!(
        seqs(&history(&server, &reader, "types=chat.*").await),
        vec![s(&e4), s(&e2), s(&e1)]
    );
    assert_eq!(
        seqs(&history(&server, &reader, "types=chat.typing,order.created").await),
        vec![s(&e3), s(&e2)]
    );
    assert_eq!(seqs(&history(&server, &reader, "types=*").await).len(), 4);
    assert_eq!(
        seqs(&history(&server, &reader, "userId=alice").await),
        vec![s(&e3), s(&e1)]
    );
    assert_eq!(
        seqs(&history(&server, &reader, "roomId=lobby").await),
        vec![s(&e2), s(&e1)]
    );
    assert_eq!(
        seqs(&history(&server, &reader, "types=chat.*&userId=bob&roomId=other").await),
        vec![s(&e4)]
    );
    assert_eq!(
        seqs(&history(&server, &reader, &format!("since={}", s(&e2))).await),
        vec![s(&e4), s(&e3)]
    );
    assert!(
        history(&server, &reader, &format!("since={}", s(&e4)))
            .await
            .is_empty()
    );
    let t2 = e2["timestamp"].as_str().unwrap();
    assert_eq!(
        seqs(&history(&server, &reader, &format!("since={t2}")).await),
        vec![s(&e4), s(&e3)],
        "since as an RFC 3339 time"
    );
    // An offset time, URL-encoded (`+` is %2B).
    assert_eq!(
        history(&server, &reader, "since=2000-01-01T00:00:00%2B02:00")
            .await
            .len(),
        4
    );

    for bad in ["since=yesterday", "types=bad%20type", "types=a..b"] {
        let (st, b) = get(
            &server,
            &format!("/api/realtime/events?{bad}"),
            Some(&reader),
        )
        .await;
        assert_error(st, &b, 400, "VALIDATION_ERROR");
    }
}

#[tokio::test]
async fn history_limit_defaults_to_50_and_is_bounded() {
    let server = Server::start();
    let publishes = (0..55).map(|i| {
        let server = &server;
        async move {
            publish(
                server,
                API_KEY,
                json!({"type": "load.tick", "data": {"i": i}}),
            )
            .await
        }
    });
    futures_util::future::join_all(publishes).await;
    let reader = token("reader");

    let page = history(&server, &reader, "").await;
    assert_eq!(page.len(), 50);
    let newest = seqs(&page);
    assert!(newest.windows(2).all(|w| w[0] > w[1]), "newest first");
    assert_eq!(newest[0], 55);

    assert_eq!(seqs(&history(&server, &reader, "limit=1").await), vec![55]);
    assert_eq!(history(&server, &reader, "limit=1000").await.len(), 55);
    assert_eq!(history(&server, &reader, "limit=7&since=50").await.len(), 5);

    for bad in ["0", "1001", "abc", "-1", "2.5", ""] {
        let (s, b) = get(
            &server,
            &format!("/api/realtime/events?limit={bad}"),
            Some(&reader),
        )
        .await;
        assert_error(s, &b, 400, "VALIDATION_ERROR");
    }
}

#[tokio::test]
async fn private_user_events_are_visible_to_their_user_and_admins_only() {
    let server = Server::start();
    let alice = token("alice");
    let bob = token("bob");
    let private = publish(
        &server,
        &alice,
        json!({"type": "user.message", "data": {"secret": 1}}),
    )
    .await;
    let bobs = publish(&server, &bob, json!({"type": "user.status"})).await;
    let public = publish(&server, &alice, json!({"type": "chat.message"})).await;
    let for_alice = publish(
        &server,
        API_KEY,
        json!({"type": "user.notification", "userId": "alice"}),
    )
    .await;

    let ids =
        |events: Vec<Value>| -> Vec<Value> { events.iter().map(|e| e["id"].clone()).collect() };
    let as_bob = ids(history(&server, &bob, "").await);
    assert_eq!(as_bob, vec![public["id"].clone(), bobs["id"].clone()]);
    assert!(
        history(&server, &bob, "types=user.*&userId=alice")
            .await
            .is_empty()
    );
    assert!(
        history(&server, &bob, "types=user.message")
            .await
            .is_empty()
    );

    let as_alice = ids(history(&server, &alice, "").await);
    assert_eq!(
        as_alice,
        vec![
            for_alice["id"].clone(),
            public["id"].clone(),
            private["id"].clone()
        ]
    );
    let alice_private = history(&server, &alice, "types=user.*").await;
    assert_eq!(
        types(&alice_private),
        vec!["user.notification", "user.message"]
    );
    assert_eq!(alice_private[1]["data"]["secret"], 1);

    for admin in [admin_token(), API_KEY.to_owned()] {
        assert_eq!(history(&server, &admin, "").await.len(), 4);
        assert_eq!(history(&server, &admin, "types=user.*").await.len(), 3);
    }
}

// ---------------------------------------------------------------------------------------------
// GET /api/realtime/stats, /health, /metrics

#[tokio::test]
async fn stats_follow_connections_and_history() {
    let server = Server::start();
    let initial = stats_until(&server, |_| true).await;
    assert_eq!(initial["connections"]["total"], 0, "{initial}");
    assert_eq!(initial["events"]["eventsInHistory"], 0, "{initial}");
    assert!(initial["events"]["lastSeq"].is_null(), "{initial}");
    assert!(is_iso_timestamp(&initial["timestamp"]), "{initial}");

    let mut anon_ws = Ws::connect(&server, "/ws").await;
    stats_until(&server, |s| {
        s["connections"]["total"] == 1
            && s["connections"]["byType"]["websocket"] == 1
            && s["connections"]["uniqueUsers"] == 0
    })
    .await;
    let mut alice_ws = Ws::user(&server, "alice").await;
    alice_ws.subscribe(&["chat.*"], json!({})).await;
    let bob_sse = Sse::open(&server, "/api/realtime/stream", Some(&token("bob"))).await;
    assert_eq!(bob_sse.status, 200);
    let anon_sse = Sse::open(&server, "/api/realtime/stream?types=chat.*", None).await;
    assert_eq!(anon_sse.status, 200);
    let s = stats_until(&server, |s| {
        s["connections"]["total"] == 4
            && s["connections"]["byType"]["websocket"] == 2
            && s["connections"]["byType"]["sse"] == 2
            && s["connections"]["uniqueUsers"] == 2
    })
    .await;
    // alice's chat.*, bob's personal subscription, the anonymous stream's chat.*.
    assert_eq!(s["connections"]["subscriptions"], 3, "{s}");
    assert_eq!(s["events"]["totalSubscriptions"], 3, "{s}");

    let mut last = Value::Null;
    for kind in ["chat.message", "chat.message", "order.created"] {
        last = publish(&server, &token("alice"), json!({"type": kind})).await;
    }
    let s = stats_until(&server, |_| true).await;
    assert_eq!(s["events"]["eventsInHistory"], 3, "{s}");
    assert_eq!(s["events"]["lastSeq"], last["seq"], "{s}");
    assert_eq!(s["events"]["oldestSeq"], 1, "{s}");
    assert_eq!(
        s["events"]["eventTypes"],
        json!(["chat.message", "order.created"]),
        "{s}"
    );

    alice_ws.stream.close(None).await.unwrap();
    stats_until(&server, |s| {
        s["connections"]["total"] == 3
            && s["connections"]["byType"]["websocket"] == 1
            && s["connections"]["uniqueUsers"] == 1
            && s["connections"]["subscriptions"] == 2
    })
    .await;
    drop(bob_sse);
    stats_until(&server, |s| {
        s["connections"]["total"] == 2
            && s["connections"]["byType"]["sse"] == 1
            && s["connections"]["uniqueUsers"] == 0
    })
    .await;
    anon_ws.stream.close(None).await.unwrap();
    drop(anon_sse);
    stats_until(&server, |s| {
        s["connections"]["total"] == 0 && s["connections"]["subscriptions"] == 0
    })
    .await;
}

#[tokio::test]
async fn health_needs_no_auth_and_reports_the_log_position() {
    let server = Server::start();
    let (status, h) = get(&server, "/health", None).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["connections"]["total"], 0);
    assert_eq!(h["events"]["lastSeq"], 0);
    assert!(h["uptime"].as_f64().unwrap() >= 0.0, "{h}");

    let _ws = Ws::connect(&server, "/ws").await;
    publish(&server, &token("alice"), json!({"type": "chat.message"})).await;
    let last = publish(&server, &token("alice"), json!({"type": "chat.message"})).await;
    let (status, h) = get(&server, "/health", None).await;
    assert_eq!(status, 200);
    assert_eq!(h["events"]["lastSeq"], last["seq"]);
    assert_eq!(h["connections"]["total"], 1);
    assert_eq!(h["connections"]["byType"]["websocket"], 1);
}

#[tokio::test]
async fn the_cluster_view_of_an_embedded_server_is_the_server_alone_for_operators_only() {
    let server = Server::start();
    let path = "/api/cluster/nodes";
    assert_eq!(get(&server, path, None).await.0, 401);
    assert_eq!(get(&server, path, Some(&token("alice"))).await.0, 403);

    let _ws = [
        Ws::connect(&server, "/ws").await,
        Ws::connect(&server, "/ws").await,
    ];
    let _sse = Sse::open(&server, "/api/realtime/stream", Some(&token("bob"))).await;
    get_until(&server, path, |v| v["nodes"][0]["connections"] == 3).await;
    // An API key (a load balancer's checker) may read it too.
    let (status, view) = get(&server, path, Some(API_KEY)).await;
    assert_eq!(status, 200, "{view}");
    let nodes = view["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{view}");
    let node = &nodes[0];
    assert_eq!(view["leastLoaded"], *node);
    // Started on port 0: the address it advertises is the port it got.
    assert_eq!(node["url"], server.url(""), "{node}");
    assert!(!node["id"].as_str().unwrap().is_empty(), "{node}");
    assert_eq!(
        node["byTransport"],
        json!({"websocket": 2, "sse": 1, "longpoll": 0, "socketio": 0})
    );
    assert!(node["rssBytes"].as_u64().unwrap() > 1 << 20, "{node}");
    assert!(node["cpuPercent"].as_f64().unwrap() >= 0.0, "{node}");
    let seen = chrono::DateTime::parse_from_rfc3339(node["lastSeen"].as_str().unwrap()).unwrap();
    let age = chrono::Utc::now().signed_duration_since(seen);
    assert!(age.num_seconds().abs() < 5, "{node}");

    // Behind NAT or on 0.0.0.0 the listen address is no use to others: `advertise_url` says.
    let natted = Server::start_with(&["--advertise-url", "https://herald-1.example.com"]);
    let (_, view) = get(&natted, path, Some(API_KEY)).await;
    assert_eq!(view["nodes"][0]["url"], "https://herald-1.example.com");
}

#[tokio::test]
async fn metrics_are_prometheus_text_consistent_with_traffic() {
    let server = Server::start();
    let mut subscriber = Ws::connect(&server, "/ws").await;
    subscriber.subscribe(&["chat.*"], json!({})).await;
    let _idle = Ws::connect(&server, "/ws").await;
    let mut sse = Sse::open(&server, "/api/realtime/stream?types=chat.message", None).await;
    sse.next_event("connection").await;

    for kind in ["chat.message", "chat.typing", "order.created"] {
        publish(&server, &token("alice"), json!({"type": kind})).await;
    }
    subscriber.recv_type("event").await;
    subscriber.recv_type("event").await;
    sse.next_event("event").await;

    // chat.message reaches the WebSocket and the stream, chat.typing the WebSocket only.
    let text = metrics_until(&server, |t| {
        metric(t, "herald_connections{transport=\"websocket\"}") == Some(2.0)
    })
    .await;
    assert_eq!(
        metric(&text, "herald_events_published_total"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "herald_events_delivered_total"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "herald_connections{transport=\"sse\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE herald_events_published_total counter"),
        "{text}"
    );
    // Three publishes committed: the commit-latency summary has counted at least one batch.
    assert!(
        metric(&text, "herald_store_commit_seconds_count")
            .is_some_and(|n| (1.0..=3.0).contains(&n)),
        "{text}"
    );

    subscriber.stream.close(None).await.unwrap();
    metrics_until(&server, |t| {
        metric(t, "herald_connections{transport=\"websocket\"}") == Some(1.0)
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// /api/dashboard/*

#[tokio::test]
async fn dashboard_live_data_reports_real_figures() {
    let server = Server::start();
    let _a = Ws::user(&server, "alice").await;
    let _b = Ws::connect(&server, "/ws").await;
    let mut sse = Sse::open(&server, "/api/realtime/stream", Some(&token("bob"))).await;
    sse.next_event("connection").await;
    for i in 0..4 {
        publish(
            &server,
            API_KEY,
            json!({"type": "chat.message", "data": {"i": i}}),
        )
        .await;
    }
    stats_until(&server, |s| s["connections"]["total"] == 3).await;

    let (status, live) = get(&server, "/api/dashboard/live-data", Some(&token("carol"))).await;
    assert_eq!(status, 200, "{live}");
    assert_eq!(live["totalConnections"], 3, "{live}");
    assert_eq!(live["connectionsByType"]["websocket"], 2, "{live}");
    assert_eq!(live["connectionsByType"]["sse"], 1, "{live}");
    assert_eq!(live["activeUsers"], 2, "{live}");
    assert_eq!(live["eventsToday"], 4, "{live}");
    assert!(
        live["memoryUsage"]["rss"].as_u64().unwrap() > 1 << 20,
        "{live}"
    );
    assert!(
        live["memoryUsage"]["virtual"].as_u64().unwrap() > 0,
        "{live}"
    );
    assert!(live["systemLoad"]["cores"].as_u64().unwrap() >= 1, "{live}");
    assert!(
        live["systemLoad"]["cpuPercent"].as_f64().unwrap() >= 0.0,
        "{live}"
    );
    assert!(live["uptime"].as_f64().unwrap() >= 0.0, "{live}");

    drop(sse);
    stats_until(&server, |s| s["connections"]["total"] == 2).await;
    let (_, live) = get(&server, "/api/dashboard/live-data", Some(&token("carol"))).await;
    assert_eq!(live["totalConnections"], 2, "{live}");
}

#[tokio::test]
async fn dashboard_activity_describes_login_action_and_alert_events() {
    let server = Server::start();
    let login = publish(
        &server,
        API_KEY,
        json!({"type": "user.login", "userId": "alice", "data": {"ipAddress": "10.0.0.7"}}),
    )
    .await;
    publish(
        &server,
        API_KEY,
        json!({"type": "chat.message", "userId": "alice"}),
    )
    .await;
    let action = publish(
        &server,
        API_KEY,
        json!({"type": "user.action", "userId": "alice", "data": {"action": "clicked-buy"}}),
    )
    .await;
    let alert = publish(
        &server,
        API_KEY,
        json!({"type": "system.alert", "userId": "ops", "data": {"message": "disk almost full"}}),
    )
    .await;
    publish(
        &server,
        API_KEY,
        json!({"type": "user.action", "userId": "bob", "data": {}}),
    )
    .await;

    let (status, body) = get(&server, "/api/dashboard/activity", Some(&admin_token())).await;
    assert_eq!(status, 200, "{body}");
    let acts = body["activities"].as_array().unwrap();
    assert_eq!(
        types(acts),
        vec!["user.action", "system.alert", "user.action", "user.login"],
        "{body}"
    );
    let find = |ack: &Value| acts.iter().find(|a| a["id"] == ack["id"]).unwrap().clone();
    let a = find(&action);
    assert_eq!(a["message"], "User performed action: clicked-buy");
    assert_eq!(a["userId"], "alice");
    assert_eq!(a["timestamp"], action["timestamp"]);
    let a = find(&alert);
    assert_eq!(a["message"], "System alert: disk almost full");
    assert_eq!(a["userId"], "ops");
    assert_eq!(a["type"], "system.alert");
    let a = find(&login);
    assert_eq!(a["message"], "User logged in from 10.0.0.7");
    assert_eq!(acts[0]["message"], "User performed action: unknown");

    // A user sees public activity and their own private events only.
    let (_, body) = get(&server, "/api/dashboard/activity", Some(&token("bob"))).await;
    assert_eq!(
        types(body["activities"].as_array().unwrap()),
        vec!["user.action", "system.alert"]
    );
    assert_eq!(body["activities"][0]["userId"], "bob");

    let (_, body) = get(
        &server,
        "/api/dashboard/activity?limit=2",
        Some(&admin_token()),
    )
    .await;
    assert_eq!(body["activities"].as_array().unwrap().len(), 2);
    let (s, b) = get(
        &server,
        "/api/dashboard/activity?limit=0",
        Some(&admin_token()),
    )
    .await;
    assert_error(s, &b, 400, "VALIDATION_ERROR");
}

#[tokio::test]
async fn dashboard_alerts_group_by_severity() {
    let server = Server::start();
    for (kind, msg) in [
        ("system.error", "db down"),
        ("system.warning", "slow disk"),
        ("system.error", "db down again"),
        ("system.critical", "on fire"),
        ("system.alert", "not an alert for this view"),
        ("chat.message", "unrelated"),
    ] {
        publish(
            &server,
            API_KEY,
            json!({"type": kind, "data": {"message": msg}}),
        )
        .await;
    }
    let (status, body) = get(&server, "/api/dashboard/alerts", Some(&token("alice"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 4, "{body}");
    let alerts = body["alerts"].as_object().unwrap();
    assert_eq!(alerts.len(), 3, "{body}");
    let errors = alerts["system.error"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(
        errors[0]["data"]["message"], "db down again",
        "newest first"
    );
    assert_eq!(alerts["system.warning"].as_array().unwrap().len(), 1);
    assert_eq!(alerts["system.critical"][0]["data"]["message"], "on fire");
    assert_eq!(alerts["system.critical"][0]["type"], "system.critical");
}

#[tokio::test]
async fn dashboard_notify_reaches_targets_or_everyone() {
    let server = Server::start();
    let mut alice = Ws::user(&server, "alice").await;
    let mut bob = Ws::user(&server, "bob").await;
    let mut anon = Ws::connect(&server, "/ws").await;
    let path = "/api/dashboard/notify";

    let (s, b) = post(
        &server,
        path,
        Some(&token("alice")),
        &json!({"message": "hi"}),
    )
    .await;
    assert_error(s, &b, 403, "ACCESS_DENIED");
    let (s, b) = post(&server, path, None, &json!({"message": "hi"})).await;
    assert_error(s, &b, 401, "AUTH_REQUIRED");

    let (s, b) = post(
        &server,
        path,
        Some(&admin_token()),
        &json!({"message": "hello bob", "type": "warning", "targetUsers": ["bob"]}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["connectionsReached"], 1, "{b}");
    assert_eq!(b["notification"]["message"], "hello bob");
    let n = bob.recv_type("notification").await;
    assert_eq!(n["data"]["message"], "hello bob", "{n}");
    assert_eq!(n["data"]["type"], "warning", "{n}");
    assert_eq!(n["data"]["createdBy"], "admin", "{n}");
    assert_eq!(n["data"]["id"], b["notification"]["id"], "{n}");

    let stored = history(&server, &admin_token(), "types=user.notification").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["userId"], "bob");
    assert_eq!(stored[0]["data"]["message"], "hello bob");
    // bob may read it, alice may not.
    assert_eq!(
        history(&server, &token("bob"), "types=user.notification")
            .await
            .len(),
        1
    );
    assert!(
        history(&server, &token("alice"), "types=user.notification")
            .await
            .is_empty()
    );

    // Several targets: one stored event each, committed together in the order named.
    let (s, b) = post(
        &server,
        path,
        Some(API_KEY),
        &json!({"message": "team", "type": "info", "targetUsers": ["u1", "u2", "u3"]}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let stored = history(&server, &admin_token(), "types=user.notification").await;
    let team: Vec<_> = stored
        .iter()
        .filter(|e| e["data"]["message"] == "team")
        .collect();
    let users: Vec<_> = team.iter().rev().map(|e| e["userId"].clone()).collect();
    assert_eq!(users, ["u1", "u2", "u3"]);
    let seq = |e: &Value| e["seq"].as_u64().unwrap();
    assert_eq!(seq(team[0]), seq(team[2]) + 2, "consecutive: {team:?}");

    // Broadcast: every connection, authenticated or not.
    let (s, b) = post(
        &server,
        path,
        Some(API_KEY),
        &json!({"message": "maintenance at noon"}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["connectionsReached"], 3, "{b}");
    for ws in [&mut alice, &mut bob, &mut anon] {
        // alice's first notification is the broadcast: the targeted one never reached her.
        let n = ws.recv_type("notification").await;
        assert_eq!(n["data"]["message"], "maintenance at noon", "{n}");
        assert_eq!(n["data"]["type"], "info", "{n}");
        assert_eq!(n["data"]["createdBy"], "service", "{n}");
    }
    let stored = history(&server, &token("anyone"), "types=system.notification").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["data"]["message"], "maintenance at noon");

    for bad in [
        json!({"message": ""}),
        json!({}),
        json!({"message": "x", "targetUsers": [""]}),
    ] {
        let (s, b) = post(&server, path, Some(&admin_token()), &bad).await;
        assert_error(s, &b, 400, "VALIDATION_ERROR");
    }
    let (s, b) = post_raw(&server, path, Some(&admin_token()), "{").await;
    assert_error(s, &b, 400, "INVALID_JSON");
}

// ---------------------------------------------------------------------------------------------
// CORS, unknown routes, the landing page

/// A CORS preflight for a POST to the publish route from `origin`.
async fn preflight(server: &Server, origin: &str) -> reqwest::Response {
    http()
        .request(
            reqwest::Method::OPTIONS,
            server.url("/api/realtime/publish"),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap()
}

async fn cors_origin_for(server: &Server, origin: &str) -> (Option<String>, Option<String>) {
    let header = |res: &reqwest::Response| {
        res.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let preflight = preflight(server, origin).await;
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let get = http()
        .get(server.url("/health"))
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    (header(&preflight), header(&get))
}

#[tokio::test]
async fn cors_allows_listed_origins_only() {
    let server = Server::start();
    let local = "http://localhost:3000";
    let (pre, get) = cors_origin_for(&server, local).await;
    assert_eq!(pre.as_deref(), Some(local));
    assert_eq!(get.as_deref(), Some(local));
    let res = preflight(&server, local).await;
    let h = res.headers();
    assert_eq!(h["access-control-allow-credentials"], "true");
    let methods = h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_ascii_uppercase();
    assert!(methods.contains("POST"), "{methods}");
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );

    assert_eq!(
        cors_origin_for(&server, "http://evil.example").await,
        (None, None)
    );

    let custom = Server::start_with(&["--cors-origin", "http://app.example"]);
    let (pre, get) = cors_origin_for(&custom, "http://app.example").await;
    assert_eq!(pre.as_deref(), Some("http://app.example"));
    assert_eq!(get.as_deref(), Some("http://app.example"));
    assert_eq!(
        cors_origin_for(&custom, local).await,
        (None, None),
        "the flag replaces the default"
    );
}

#[tokio::test]
async fn cors_wildcard_allows_any_origin() {
    let server = Server::start_with(&["--cors-origin", "*"]);
    for origin in ["http://evil.example", "https://anything.test:8443"] {
        let (pre, get) = cors_origin_for(&server, origin).await;
        assert_eq!(pre.as_deref(), Some("*"));
        assert_eq!(get.as_deref(), Some("*"));
    }
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_json() {
    let server = Server::start();
    for path in [
        "/nope",
        "/api/realtime",
        "/api/realtime/unknown",
        "/api/dashboard/",
    ] {
        let (s, b) = get(&server, path, None).await;
        assert_error(s, &b, 404, "NOT_FOUND");
    }
    let (s, b) = post(&server, "/nope", Some(&token("alice")), &json!({})).await;
    assert_error(s, &b, 404, "NOT_FOUND");

    let (s, b) = get(&server, "/api/realtime/publish", Some(&token("alice"))).await;
    assert_error(s, &b, 405, "INVALID_MESSAGE");
    let (s, b) = post(&server, "/health", None, &json!({})).await;
    assert_eq!(s, 405, "{b}");
    assert!(b["error"].is_string(), "{b}");
    let res = http()
        .delete(server.url("/api/realtime/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
}

#[tokio::test]
async fn root_without_upgrade_serves_the_dashboard_and_keeps_its_token_in_a_cookie() {
    let server = Server::start();
    let res = http().get(server.url("/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/html"), "{ct}");
    assert!(res.headers().get("set-cookie").is_none());
    let body = res.text().await.unwrap();
    assert!(body.contains("/dashboard/dashboard.js"), "{body}");

    // A valid token becomes an HttpOnly, SameSite=Strict cookie; a bad one sets nothing.
    let bad = http().get(server.url("/?token=nope")).send().await.unwrap();
    assert!(bad.headers().get("set-cookie").is_none());
    let admin = admin_token();
    let res = http()
        .get(server.url(&format!("/?token={admin}")))
        .send()
        .await
        .unwrap();
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert_eq!(
        cookie,
        format!("herald_token={admin}; Path=/; HttpOnly; SameSite=Strict")
    );

    // The cookie authenticates requests that carry no other credentials.
    let with_cookie = |value: String| {
        http()
            .get(server.url("/api/realtime/stats"))
            .header("cookie", value)
            .send()
    };
    let ok = with_cookie(format!("theme=dark; herald_token={admin}"))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // A cookie that no longer verifies is ignored (anonymous), never an error of its own.
    let stale = with_cookie("herald_token=expired.or.foreign".into())
        .await
        .unwrap();
    assert_eq!(stale.status(), 401);
    let body: Value = stale.json().await.unwrap();
    assert_eq!(body["code"], "AUTH_REQUIRED", "{body}");
}

#[tokio::test]
async fn history_honours_if_modified_since_like_the_seed_activity_feed() {
    let server = Server::start();
    let admin = admin_token();
    let before = chrono::Utc::now().to_rfc3339();
    let first = publish(
        &server,
        &admin,
        json!({"type": "user.action", "data": {"action": "a"}}),
    )
    .await;
    let get_since = |since: String| {
        http()
            .get(server.url("/api/realtime/events"))
            .bearer_auth(&admin)
            .header("if-modified-since", since)
            .send()
    };
    let res = get_since(before).await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["events"][0]["id"], first["id"]);

    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let res = get_since("Thu, 01 Jan 1970 00:00:00 GMT".into())
        .await
        .unwrap();
    let last_modified = res.headers()["last-modified"].to_str().unwrap().to_owned();
    assert!(last_modified.ends_with(" GMT"), "{last_modified}");
    let second = publish(
        &server,
        &admin,
        json!({"type": "user.action", "data": {"action": "b"}}),
    )
    .await;
    let body: Value = get_since(last_modified)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["count"], 1, "{body}");
    assert_eq!(body["events"][0]["id"], second["id"]);

    let res = get_since("yesterday".into()).await.unwrap();
    assert_eq!(res.status(), 400);
}
