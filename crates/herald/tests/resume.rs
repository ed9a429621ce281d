//! Resume (guarantee 2) against the real binary: a client that resumes with its last `seq` —
//! WebSocket `since`, SSE `Last-Event-ID`, the long-poll cursor — gets every missed matching
//! event exactly once and in order, also while events are being published and when it is
//! disconnected at random moments; outside retention it is told `recovered: false`; and a
//! resume never replays another user's `user.*` events.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// What the chaos tests subscribe to: `chat.*` in room `r1`.
const TYPES: &str = "chat.*";
const ROOM: &str = "r1";
/// Events published by the chaos tests' publishers, in total.
const EVENTS: usize = 2000;
const PUBLISHERS: usize = 4;
/// Disconnects per chaos test (at least; more if the publishers are slower).
const DISCONNECTS: usize = 50;

fn seq_of(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"))
}

/// The highest committed `seq`, from `/health`.
async fn last_seq(server: &Server) -> u64 {
    let (status, body) = get(server, "/health", None).await;
    assert_eq!(status, 200, "{body}");
    body["events"]["lastSeq"].as_u64().unwrap_or(0)
}

/// A small xorshift generator: the chaos tests print their seed.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("rng seed {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Publishes `EVENTS` events from `PUBLISHERS` concurrent HTTP clients: a mix of matching
/// (`chat.*` in `r1`) and non-matching ones. Returns the matching acknowledged seqs, sorted.
async fn publish_mix(url: String) -> Vec<u64> {
    let client = reqwest::Client::new();
    let alice = token("alice");
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (client, url, alice) = (client.clone(), url.clone(), alice.clone());
            tokio::spawn(async move {
                let mut matching = Vec::new();
                for i in 0..EVENTS / PUBLISHERS {
                    let (kind, room, hit) = match (i + p) % 4 {
                        0 => ("chat.message", ROOM, true),
                        1 => ("chat.message", "r2", false),
                        2 => ("news.item", ROOM, false),
                        _ => ("chat.typing", ROOM, true),
                    };
                    let res = client
                        .post(&url)
                        .bearer_auth(&alice)
                        .json(&json!({"type": kind, "roomId": room, "data": {"p": p, "i": i}}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(res.status().as_u16(), 201);
                    let body: Value = res.json().await.unwrap();
                    if hit {
                        matching.push(seq_of(&body["event"]));
                    }
                }
                matching
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    all
}

/// Records a received event: its seq must follow the last one (no duplicate, in order).
fn take(got: &mut Vec<u64>, last: &mut u64, seq: u64, transport: &str) {
    assert!(
        seq > *last,
        "{transport}: seq {seq} after {last}: duplicate or out of order"
    );
    *last = seq;
    got.push(seq);
}

fn assert_exact(transport: &str, got: &[u64], expected: &[u64]) {
    assert_eq!(got.len(), expected.len(), "{transport}: count differs");
    assert!(
        got == expected,
        "{transport}: received events differ from the published matching ones"
    );
}

/// Runs `round` (connect, resume from `last`, read for a while, disconnect) until the
/// publisher is done and at least `DISCONNECTS` rounds ran, then resumes once more and reads
/// until the last matching event; asserts the client got exactly the matching events.
async fn chaos<F, Fut>(transport: &str, server: &Server, mut round: F)
where
    F: FnMut(u64, Duration, Option<u64>) -> Fut,
    Fut: std::future::Future<Output = Vec<u64>>,
{
    let started = std::time::Instant::now();
    let mut rng = Rng::seeded();
    let start = last_seq(server).await;
    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (done, url) = (done.clone(), server.url("/api/realtime/publish"));
        tokio::spawn(async move {
            let matching = publish_mix(url).await;
            done.store(true, Ordering::SeqCst);
            matching
        })
    };
    let (mut got, mut last, mut rounds) = (Vec::new(), start, 0);
    while rounds < DISCONNECTS || !done.load(Ordering::SeqCst) {
        let window = Duration::from_millis(rng.below(60));
        for seq in round(last, window, None).await {
            take(&mut got, &mut last, seq, transport);
        }
        rounds += 1;
        assert!(rounds < 2000, "{transport}: the publisher never finished");
    }
    let expected = publisher.await.unwrap();
    let during = got.len();
    let target = *expected.last().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while last < target {
        assert!(
            std::time::Instant::now() < deadline,
            "{transport}: stuck at {last}, expected up to {target}"
        );
        for seq in round(last, Duration::from_secs(2), Some(target)).await {
            take(&mut got, &mut last, seq, transport);
        }
    }
    assert_exact(transport, &got, &expected);
    eprintln!(
        "{transport}: {} events ({during} before the final resume) over {rounds} disconnects in {:?}",
        got.len(),
        started.elapsed()
    );
}

/// Reads WebSocket events until `deadline` (or until `target` is reached); returns their seqs.
async fn ws_read(ws: &mut Ws, deadline: Instant, target: Option<u64>) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        if target.is_some_and(|t| seqs.last().is_some_and(|s| s >= &t)) {
            return seqs;
        }
        match tokio::time::timeout_at(deadline, ws.stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "event" {
                    seqs.push(seq_of(&v["data"]));
                }
            }
            Ok(Some(Ok(_))) => {}
            Err(_) | Ok(Some(Err(_)) | None) => return seqs,
        }
    }
}

async fn ws_resume(server: &Server, since: u64) -> (Ws, Value) {
    let mut ws = Ws::connect(server, "/ws").await;
    ws.send(json!({"type": "subscribe", "id": "r", "data": {
        "eventTypes": [TYPES], "filters": {"roomId": ROOM}, "since": since}}))
        .await;
    let created = ws.recv().await;
    assert_eq!(created["type"], "subscription.created", "{created}");
    assert_eq!(created["id"], "r");
    (ws, created)
}

#[tokio::test]
async fn websocket_resume_gets_exactly_the_missed_events_once() {
    let server = Server::start();
    let alice = token("alice");
    let mut ws = Ws::connect(&server, "/ws").await;
    ws.subscribe(&[TYPES], json!({"roomId": ROOM})).await;
    let first = publish(
        &server,
        &alice,
        json!({"type": "chat.message", "roomId": ROOM, "data": {"n": 0}}),
    )
    .await;
    let got = ws.recv_type("event").await;
    assert_eq!(got["data"]["seq"], first["seq"]);
    drop(ws);

    let mut missed = Vec::new();
    for (n, (kind, room)) in [
        ("chat.message", ROOM),
        ("chat.message", "r2"),
        ("news.item", ROOM),
        ("chat.typing", ROOM),
        ("chat.message", ROOM),
    ]
    .into_iter()
    .enumerate()
    {
        let ack = publish(
            &server,
            &alice,
            json!({"type": kind, "roomId": room, "data": {"n": n + 1}}),
        )
        .await;
        if room == ROOM && kind.starts_with("chat.") {
            missed.push(seq_of(&ack));
        }
    }

    let (mut ws, created) = ws_resume(&server, seq_of(&first)).await;
    assert_eq!(created["data"]["recovered"], true, "{created}");
    assert!(created["data"].get("oldestSeq").is_none(), "{created}");
    assert_eq!(created["data"]["eventTypes"], json!([TYPES]));
    for want in &missed {
        let e = ws.recv_type("event").await;
        assert_eq!(seq_of(&e["data"]), *want, "{e}");
        assert_eq!(e["data"]["roomId"], ROOM);
    }
    // Then live, without repeating anything.
    let live = publish(
        &server,
        &alice,
        json!({"type": "chat.message", "roomId": ROOM, "data": {"n": "live"}}),
    )
    .await;
    let e = ws.recv_type("event").await;
    assert_eq!(e["data"]["seq"], live["seq"]);
    ws.expect_silence(Duration::from_millis(300)).await;

    // Resuming at the head replays nothing; since 0 replays everything retained.
    let (mut ws, created) = ws_resume(&server, seq_of(&live)).await;
    assert_eq!(created["data"]["recovered"], true);
    ws.expect_silence(Duration::from_millis(200)).await;
    let (mut ws, created) = ws_resume(&server, 0).await;
    assert_eq!(created["data"]["recovered"], true);
    let all: Vec<u64> = [seq_of(&first)]
        .into_iter()
        .chain(missed.iter().copied())
        .chain([seq_of(&live)])
        .collect();
    for want in all {
        assert_eq!(seq_of(&ws.recv_type("event").await["data"]), want);
    }
    ws.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn websocket_resume_under_concurrent_publishing_and_random_disconnects() {
    let server = Server::start();
    chaos("websocket", &server, |since, window, target| {
        let server = &server;
        async move {
            let (mut ws, created) = ws_resume(server, since).await;
            assert_eq!(created["data"]["recovered"], true, "{created}");
            ws_read(&mut ws, Instant::now() + window, target).await
            // Dropped here: the TCP connection closes without a closing handshake.
        }
    })
    .await;
}

#[tokio::test]
async fn sse_resume_with_last_event_id_under_concurrent_publishing_and_random_disconnects() {
    let server = Server::start();
    let client = reqwest::Client::new();
    chaos("sse", &server, |since, window, target| {
        let (server, client) = (&server, client.clone());
        async move {
            let res = client
                .get(server.url(&format!("/api/realtime/stream?types={TYPES}&roomId={ROOM}")))
                .header("last-event-id", since.to_string())
                .send()
                .await
                .unwrap();
            let mut sse = Sse::from_response(res);
            assert_eq!(sse.status, 200);
            let deadline = Instant::now() + window;
            let mut seqs = Vec::new();
            loop {
                if target.is_some_and(|t| seqs.last().is_some_and(|s| s >= &t)) {
                    return seqs;
                }
                match tokio::time::timeout_at(deadline, sse.next()).await {
                    Ok(Some(e)) if e.event == "event" => {
                        let seq = seq_of(&e.json());
                        assert_eq!(e.id, Some(seq.to_string()), "the id line is the seq");
                        seqs.push(seq);
                    }
                    Ok(Some(e)) => assert_ne!(e.event, "recovery", "{e:?}"),
                    Ok(None) | Err(_) => return seqs,
                }
            }
        }
    })
    .await;
}

#[tokio::test]
async fn long_poll_cursor_under_concurrent_publishing_and_aborted_requests() {
    let server = Server::start();
    let client = reqwest::Client::new();
    let rng = std::sync::Mutex::new(Rng::seeded());
    chaos("long-poll", &server, |cursor, window, target| {
        let (server, client) = (&server, client.clone());
        // Half the requests are abandoned mid-flight: their answers are lost to the client,
        // which polls again from the same cursor.
        let abort = target.is_none() && rng.lock().unwrap().below(2) == 0;
        async move {
            let mut seqs = Vec::new();
            let mut cursor = cursor;
            let deadline = Instant::now() + window;
            loop {
                let req = client
                    .get(server.url(&format!(
                        "/api/realtime/poll?cursor={cursor}&types={TYPES}&roomId={ROOM}&timeout=1"
                    )))
                    .send();
                let body: Value = if abort {
                    match tokio::time::timeout_at(deadline, req).await {
                        Ok(res) => res.unwrap().json().await.unwrap(),
                        Err(_) => return seqs,
                    }
                } else {
                    req.await.unwrap().json().await.unwrap()
                };
                assert_eq!(body["recovered"], true, "{body}");
                let events = body["events"].as_array().unwrap();
                for e in events {
                    seqs.push(seq_of(e));
                }
                let next = body["cursor"].as_u64().unwrap();
                match events.last() {
                    Some(e) => assert_eq!(next, seq_of(e)),
                    None => assert_eq!(next, cursor, "an empty answer keeps the cursor"),
                }
                cursor = next;
                let reached = target.is_some_and(|t| cursor >= t);
                if reached || Instant::now() >= deadline {
                    return seqs;
                }
            }
        }
    })
    .await;
}

#[tokio::test]
async fn resume_outside_retention_says_recovered_false_with_the_oldest_seq() {
    let server = Server::start_env(
        &["--retention-hours", "0"],
        &[("HERALD_RETENTION_INTERVAL_SECS", "1")],
    );
    let alice = token("alice");
    let mut seqs = Vec::new();
    for n in 0..3 {
        let ack = publish(
            &server,
            &alice,
            json!({"type": "chat.message", "data": {"n": n}}),
        )
        .await;
        seqs.push(seq_of(&ack));
    }
    stats_until(&server, |s| s["events"]["eventsInHistory"] == 0).await;
    // Nothing is stored any more: the oldest available seq is the next one to be assigned.
    let oldest = seqs[2] + 1;

    let (status, body) = get(
        &server,
        &format!(
            "/api/realtime/poll?cursor={}&types=chat.*&timeout=0",
            seqs[0]
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["recovered"], &body["oldestSeq"], &body["cursor"]),
        (&json!(false), &json!(oldest), &json!(seqs[0])),
        "{body}"
    );

    let res = reqwest::Client::new()
        .get(server.url("/api/realtime/stream?types=chat.*"))
        .header("last-event-id", seqs[0].to_string())
        .send()
        .await
        .unwrap();
    let mut sse = Sse::from_response(res);
    assert_eq!(sse.next().await.unwrap().event, "connection");
    let recovery = sse.next().await.unwrap();
    assert_eq!(recovery.event, "recovery", "{recovery:?}");
    assert_eq!(
        recovery.json(),
        json!({"recovered": false, "oldestSeq": oldest})
    );

    let mut ws = Ws::connect(&server, "/ws").await;
    ws.send(json!({"type": "subscribe", "data": {"eventTypes": ["chat.*"], "since": seqs[0]}}))
        .await;
    let created = ws.recv_type("subscription.created").await;
    assert_eq!(created["data"]["recovered"], false, "{created}");
    assert_eq!(created["data"]["oldestSeq"], oldest, "{created}");
    // Resuming at the newest seq lost nothing, even though nothing is stored.
    let mut caught_up = Ws::connect(&server, "/ws").await;
    caught_up
        .send(json!({"type": "subscribe", "data": {"eventTypes": ["chat.*"], "since": seqs[2]}}))
        .await;
    let created = caught_up.recv_type("subscription.created").await;
    assert_eq!(created["data"]["recovered"], true, "{created}");

    // Both are live afterwards.
    let next = publish(
        &server,
        &alice,
        json!({"type": "chat.message", "data": {"n": "next"}}),
    )
    .await;
    assert_eq!(seq_of(&next), oldest);
    for ws in [&mut ws, &mut caught_up] {
        let e = ws.recv_type("event").await;
        assert_eq!(e["data"]["seq"], next["seq"]);
    }
}

#[tokio::test]
async fn resume_never_replays_another_users_private_events() {
    let server = Server::start();
    let start = last_seq(&server).await;
    let mut public = Vec::new();
    let mut bobs = Vec::new();
    for (kind, user) in [
        ("user.notification", "alice"),
        ("user.notification", "bob"),
        ("chat.message", "alice"),
        ("user.message", "alice"),
        ("user.message", "bob"),
        ("chat.message", "bob"),
    ] {
        let ack = publish(
            &server,
            API_KEY,
            json!({"type": kind, "userId": user, "data": {}}),
        )
        .await;
        match (kind.starts_with("user."), user) {
            (false, _) => public.push(seq_of(&ack)),
            (true, "bob") => bobs.push(seq_of(&ack)),
            _ => {}
        }
    }
    let mut bob_sees: Vec<u64> = public.iter().chain(&bobs).copied().collect();
    bob_sees.sort_unstable();

    // WebSocket, as bob, everything since the start.
    let mut ws = Ws::user(&server, "bob").await;
    ws.send(json!({"type": "subscribe", "data": {"eventTypes": ["*"], "since": start}}))
        .await;
    assert_eq!(
        ws.recv_type("subscription.created").await["data"]["recovered"],
        true
    );
    for want in &bob_sees {
        let e = ws.recv_type("event").await;
        assert_eq!(seq_of(&e["data"]), *want, "{e}");
    }
    // Asking for alice's private events explicitly replays nothing either.
    ws.send(json!({"type": "subscribe", "data": {
        "eventTypes": ["user.*"], "filters": {"userId": "alice"}, "since": start}}))
        .await;
    ws.recv_type("subscription.created").await;
    ws.expect_silence(Duration::from_millis(300)).await;

    // SSE, anonymous: only public events.
    let res = reqwest::Client::new()
        .get(server.url("/api/realtime/stream?types=*"))
        .header("last-event-id", start.to_string())
        .send()
        .await
        .unwrap();
    let mut sse = Sse::from_response(res);
    for want in &public {
        let e = sse.next_event("event").await;
        assert_eq!(seq_of(&e.json()), *want, "{e:?}");
    }
    // SSE as bob (his personal subscription included), with the query parameter.
    let mut sse = Sse::open(
        &server,
        &format!("/api/realtime/stream?types=chat.*&lastEventId={start}"),
        Some(&token("bob")),
    )
    .await;
    for want in &bob_sees {
        let e = sse.next_event("event").await;
        assert_eq!(seq_of(&e.json()), *want, "{e:?}");
    }

    // Long-poll: anonymous gets no private events; bob gets his own.
    let poll = |query: String, bearer: Option<String>| {
        let server = &server;
        async move {
            let (status, body) = get(
                server,
                &format!("/api/realtime/poll?{query}&timeout=0"),
                bearer.as_deref(),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            body["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(seq_of)
                .collect::<Vec<_>>()
        }
    };
    assert!(
        poll(format!("cursor={start}&types=user.*"), None)
            .await
            .is_empty()
    );
    assert_eq!(poll(format!("cursor={start}&types=*"), None).await, public);
    assert_eq!(
        poll(format!("cursor={start}&types=*"), Some(token("bob"))).await,
        bob_sees
    );
    assert_eq!(
        poll(format!("cursor={start}&token={}", token("bob")), None).await,
        bobs
    );
}

#[tokio::test]
async fn long_poll_holds_until_an_event_or_the_timeout() {
    let server = Server::start();
    let alice = token("alice");
    let (status, body) = get(&server, "/api/realtime/poll", None).await;
    assert_eq!(status, 400, "types or credentials are required: {body}");
    assert_eq!(body["code"], "VALIDATION_ERROR");
    let (status, _) = get(&server, "/api/realtime/poll?types=a&cursor=x", None).await;
    assert_eq!(status, 400);

    // Without a cursor: only events from now on, and the head as the cursor.
    let old = publish(&server, &alice, json!({"type": "a.b", "data": {}})).await;
    let t = std::time::Instant::now();
    let (status, body) = get(&server, "/api/realtime/poll?types=a.*&timeout=1", None).await;
    assert_eq!(status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        body,
        json!({"events": [], "cursor": seq_of(&old), "recovered": true})
    );

    // A held poll answers as soon as a matching event is committed.
    let waiting = {
        let url = server.url(&format!(
            "/api/realtime/poll?types=a.*&cursor={}&timeout=30",
            seq_of(&old)
        ));
        tokio::spawn(async move {
            let t = std::time::Instant::now();
            let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            (body, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&server, &alice, json!({"type": "other", "data": {}})).await;
    let new = publish(&server, &alice, json!({"type": "a.c", "data": {}})).await;
    let (body, took) = waiting.await.unwrap();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(body["cursor"], new["seq"], "{body}");
    assert_eq!(body["events"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["events"][0]["id"], new["id"]);
}

#[tokio::test]
async fn bad_resume_positions_are_rejected() {
    let server = Server::start();
    let res = reqwest::Client::new()
        .get(server.url("/api/realtime/stream?types=*"))
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);

    let mut ws = Ws::connect(&server, "/ws").await;
    ws.send(json!({"type": "subscribe", "id": 1, "data": {"eventTypes": ["*"], "since": -1}}))
        .await;
    let r = ws.recv().await;
    assert_eq!(
        (&r["type"], &r["data"]["code"], &r["id"]),
        (&json!("error"), &json!("VALIDATION_ERROR"), &json!(1)),
        "{r}"
    );

    // `since` belongs to WebSocket subscribe; an SSE stream resumes with Last-Event-ID.
    let (status, body) = post(
        &server,
        &format!("/api/realtime/subscribe?connectionId={}", ws.connection_id),
        Some(&admin_token()),
        &json!({"eventTypes": ["*"], "since": 1}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn a_client_resumes_across_a_kill_9_and_restart_with_nothing_lost() {
    let mut server = Server::start();
    let alice = token("alice");
    let (mut ws, _) = ws_resume(&server, last_seq(&server).await).await;
    let mut acked = Vec::new();
    for i in 0..40 {
        let e = publish(
            &server,
            &alice,
            json!({"type": "chat.message", "roomId": ROOM, "data": {"i": i}}),
        )
        .await;
        acked.push(seq_of(&e));
    }
    // The client reads part of the stream, then the server dies without warning.
    let mut got = Vec::new();
    while got.len() < 15 {
        let v = ws.recv_type("event").await;
        got.push(seq_of(&v["data"]));
    }
    server.kill9();
    drop(ws);

    let restarted = server.restart();
    let (mut ws, created) = ws_resume(&restarted, *got.last().unwrap()).await;
    assert_eq!(created["data"]["recovered"], true, "{created}");
    let live = publish(
        &restarted,
        &alice,
        json!({"type": "chat.message", "roomId": ROOM, "data": {"i": "live"}}),
    )
    .await;
    assert!(
        seq_of(&live) > *acked.last().unwrap(),
        "seq reused after kill -9"
    );
    acked.push(seq_of(&live));
    let deadline = Instant::now() + WAIT;
    got.extend(ws_read(&mut ws, deadline, Some(seq_of(&live))).await);
    assert_eq!(
        got, acked,
        "every acknowledged event exactly once, in order, across the crash"
    );
}
