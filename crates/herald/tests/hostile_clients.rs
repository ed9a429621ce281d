//! Clients that try to make the server hold more than its bounds: oversized subscriptions,
//! resumes of a long history by clients that never read, replays all at once, streams whose
//! snapshot would not fit an outbox, history queries with endless patterns. Each is refused
//! with its documented error, and the server's memory stays within the bounds.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The server's resident memory, in KiB.
fn rss_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

/// The largest subscription a client may ask for: 32 long patterns, 16 custom filters of
/// ~60 bytes.
fn largest_subscription(i: usize) -> Value {
    let types: Vec<String> = (0..32)
        .map(|p| format!("t{i}.{p:0>3}.{}", "x".repeat(110)))
        .collect();
    let custom: serde_json::Map<String, Value> = (0..16)
        .map(|k| (format!("k{k}"), json!("v".repeat(50))))
        .collect();
    json!({"type": "subscribe", "data": {"eventTypes": types, "filters": {"custom": custom}}})
}

/// 200 anonymous connections each asking for 100 of the largest subscriptions: each gets
/// what fits its 64 KiB budget, the rest are refused with RATE_LIMITED, and the server's
/// memory grows by about the budgets, not by what was asked (~1 MiB per connection).
#[tokio::test]
async fn subscriptions_are_bounded_per_connection() {
    let server = Server::start_with(&["--connection-rate-per-ip", "100000"]);
    let before = rss_kib(&server);
    let mut sockets = Vec::new();
    let mut accepted = 0;
    let mut refused = 0;
    for _ in 0..200 {
        let mut ws = Ws::connect(&server, "/ws").await;
        for i in 0..100 {
            ws.send(largest_subscription(i)).await;
        }
        for _ in 0..100 {
            let reply = ws.recv().await;
            match reply["type"].as_str() {
                Some("subscription.created") => accepted += 1,
                Some("error") => {
                    assert_eq!(reply["data"]["code"], "RATE_LIMITED", "{reply}");
                    refused += 1;
                }
                _ => panic!("{reply}"),
            }
        }
        sockets.push(ws);
    }
    assert!(
        accepted > 0 && accepted <= 200 * 8,
        "accepted {accepted}, refused {refused}"
    );
    let grown = rss_kib(&server).saturating_sub(before);
    eprintln!("200 connections × 100 largest subscriptions: {accepted} accepted, RSS +{grown} KiB");
    // 200 budgets of 64 KiB are 12.5 MiB (asked for: ~250 MiB).
    assert!(grown < 40 * 1024, "RSS grew by {grown} KiB");
    // Too large for one subscription: a validation error.
    let mut ws = Ws::connect(&server, "/ws").await;
    let custom: serde_json::Map<String, Value> =
        (0..17).map(|k| (format!("k{k}"), json!(k))).collect();
    ws.send(
        json!({"type": "subscribe", "data": {"eventTypes": ["a"], "filters": {"custom": custom}}}),
    )
    .await;
    assert_eq!(ws.recv().await["data"]["code"], "VALIDATION_ERROR");
}

/// Clients that resume from the start of a long history and never read cost their outbox
/// and one page each, not the history; resumes beyond `max_concurrent_replays` are refused
/// (429 on SSE, RATE_LIMITED on WebSocket), and a bystander keeps publishing meanwhile.
#[tokio::test]
async fn resumes_by_clients_that_never_read_are_bounded() {
    let server = Server::start_env(
        &[
            "--public-room",
            "*",
            "--outbox-max-bytes",
            "262144",
            "--connection-rate-per-ip",
            "100000",
        ],
        &[("HERALD_MAX_CONCURRENT_REPLAYS", "8")],
    );
    // 12 000 events of ~1 KiB: a 12 MiB history.
    let pad = "p".repeat(1000);
    for chunk in 0..12 {
        let events: Vec<Value> = (0..1000)
            .map(|i| json!({"type": "load.big", "data": {"i": chunk * 1000 + i, "pad": pad}}))
            .collect();
        let (status, body) = post(
            &server,
            "/api/realtime/publish/batch",
            Some(API_KEY),
            &json!({ "events": events }),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let before = rss_kib(&server);
    // Eight resumes that never read hold every replay place.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("/ws"))
            .await
            .unwrap();
        let resume = json!({"type": "subscribe", "data": {"eventTypes": ["*"], "since": 0}});
        ws.send(Message::text(resume.to_string())).await.unwrap();
        stalled.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A ninth is refused with a clear error, on both transports.
    let mut ws = Ws::connect(&server, "/ws").await;
    ws.send(json!({"type": "subscribe", "data": {"eventTypes": ["*"], "since": 0}}))
        .await;
    let refused = ws.recv_type("error").await;
    assert_eq!(refused["data"]["code"], "RATE_LIMITED", "{refused}");
    let res = http()
        .get(server.url("/api/realtime/stream?types=*"))
        .header("accept", "text/event-stream")
        .header("last-event-id", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    // The stalled replays cost their bounds: 8 × (256 KiB outbox + a 500-event page), not
    // 8 × 12 MiB of history.
    let grown = rss_kib(&server).saturating_sub(before);
    eprintln!("8 stalled resumes of a 12 MiB history: RSS +{grown} KiB");
    assert!(grown < 48 * 1024, "RSS grew by {grown} KiB");
    // A bystander publishes as usual.
    let started = std::time::Instant::now();
    for i in 0..50 {
        publish(
            &server,
            API_KEY,
            json!({"type": "bystander.x", "data": {"i": i}}),
        )
        .await;
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // Once the stalled clients are gone, their places are free again.
    drop(stalled);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut ws = Ws::connect(&server, "/ws").await;
        ws.send(json!({"type": "subscribe", "data": {"eventTypes": ["bystander.*"], "since": 0}}))
            .await;
        let reply = ws.recv().await;
        if reply["type"] == "subscription.created" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replay places never freed: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A stream's snapshot is kept within half of a subscriber's outbox, so subscribing never
/// overflows a new subscriber, whatever history the stream declares.
#[tokio::test]
async fn stream_snapshots_fit_a_subscriber() {
    let server = Server::start_with(&["--outbox-max-bytes", "65536"]);
    let admin = admin_token();
    let (status, body) = post(
        &server,
        "/api/streams",
        Some(&admin),
        &json!({"name": "big", "history": 10000}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let pad = "p".repeat(4000);
    for i in 0..100 {
        let (status, body) = post(
            &server,
            "/api/streams/big",
            Some(&admin),
            &json!({"i": i, "pad": pad}),
        )
        .await;
        assert!(status < 300, "{body}");
    }
    let (_, streams) = get(&server, "/api/streams", Some(&admin)).await;
    let retained = streams["streams"][0]["retained"].as_u64().unwrap();
    assert!(retained <= 8, "32 KiB of 4 KiB messages: {retained}");
    let mut ws = Ws::connect(&server, "/ws").await;
    ws.send(json!({"type": "stream.subscribe", "data": {"stream": "big"}}))
        .await;
    let subscribed = ws.recv_type("stream.subscribed").await;
    assert_eq!(subscribed["data"]["snapshot"], retained);
}

/// History queries: at most 32 patterns, ids without control characters; both 400.
#[tokio::test]
async fn history_queries_are_bounded() {
    let server = Server::start();
    let admin = admin_token();
    let many = (0..33)
        .map(|i| format!("t{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let (status, body) = get(
        &server,
        &format!("/api/realtime/events?types={many}"),
        Some(&admin),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("VALIDATION_ERROR"))
    );
    let (status, _) = get(&server, "/api/realtime/events?roomId=a%0Ab", Some(&admin)).await;
    assert_eq!(status, 400);
    let (status, _) = get(&server, "/api/realtime/events?types=a,b", Some(&admin)).await;
    assert_eq!(status, 200);
}

/// A user flooding a stream (which any identity may feed) is held to the HTTP publish budget:
/// refused with 429 and `Retry-After` after the burst, while an operator's feed goes on.
#[tokio::test]
async fn stream_floods_are_held_to_the_publish_budget() {
    let server = Server::start_env(&[], &[("HERALD_PUBLISH_RATE_PER_IDENTITY", "5")]);
    let (status, body) = post(
        &server,
        "/api/streams",
        Some(&admin_token()),
        &json!({"name": "ticker"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let alice = token("alice");
    let mut accepted = 0;
    let refused = loop {
        let res = http()
            .post(server.url("/api/streams/ticker"))
            .bearer_auth(&alice)
            .json(&json!({"fake": accepted}))
            .send()
            .await
            .unwrap();
        if res.status() == 429 {
            break res;
        }
        assert!(res.status().is_success(), "{}", res.status());
        accepted += 1;
        assert!(accepted <= 20, "never refused");
    };
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMITED");
    let (status, _) = post(&server, "/api/streams/ticker", Some(API_KEY), &json!(1)).await;
    assert!(
        status < 300,
        "an operator is not held to a user's budget: {status}"
    );
}
