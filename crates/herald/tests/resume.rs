//! Resume (guarantee 2) against the real binary: a client that resumes with its last `seq` —
//! WebSocket `since`, SSE `Last-Event-ID`, the long-poll cursor — gets every missed matching
//! event exactly once and in order, also while events are being published and when clients on
//! every transport are disconnected hundreds of times at random moments; outside retention it
//! is told `recovered: false`; and a resume never replays another user's `user.*` events.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// What the single-client tests subscribe to: `chat.*` in room `r1`.
const TYPES: &str = "chat.*";
const ROOM: &str = "r1";

fn seq_of(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"))
}

/// The highest committed `seq`, from `/health`.
async fn last_seq(server: &Server) -> u64 {
    let (status, body) = get(server, "/health", None).await;
    assert_eq!(status, 200, "{body}");
    body["events"]["lastSeq"].as_u64().unwrap_or(0)
}

/// A small xorshift generator, so a failing chaos run can be replayed with its seed.
struct Rng(u64);

impl Rng {
    /// `CHAOS_SEED` when set (to replay a failure), else the clock; printed either way.
    fn seed() -> u64 {
        let seed = std::env::var("CHAOS_SEED").map_or_else(
            |_| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            },
            |s| s.parse().expect("CHAOS_SEED is a number"),
        );
        eprintln!("chaos seed {seed} (CHAOS_SEED={seed} replays it)");
        seed
    }

    /// One of several independent generators derived from a seed.
    fn new(seed: u64, stream: u64) -> Self {
        Rng((seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

// ---------------------------------------------------------------------------------------------
// The delivery chaos test (issue 4): clients on every transport, each with its own
// subscription, disconnected at random moments while several publishers send thousands of
// events.

/// Events published in total, by `PUBLISHERS` concurrent HTTP clients.
const EVENTS: usize = 3000;
const PUBLISHERS: usize = 4;
/// How many times each client disconnects before its final resume (at least: it goes on until
/// the publishers are done).
const DISCONNECTS: std::ops::RangeInclusive<u64> = 40..=70;

/// The published mix: event `i` has type `KINDS[i % 4]`, room `ROOMS[i / 4 % 4]` and user
/// `USERS[i / 16 % 3]`, so every 48 events hold each combination once.
const KINDS: [&str; 4] = ["chat.message", "chat.typing", "news.item", "order.created"];
const ROOMS: [Option<&str>; 4] = [Some("r1"), Some("r2"), Some("r3"), None];
const USERS: [&str; 3] = ["u1", "u2", "u3"];

fn nth_event(i: usize) -> (&'static str, Option<&'static str>, &'static str) {
    (KINDS[i % 4], ROOMS[i / 4 % 4], USERS[i / 16 % 3])
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    WebSocket,
    Sse,
    LongPoll,
}

/// A client's subscription: type patterns (comma-separated) and the `roomId`/`userId` filters.
#[derive(Clone, Copy, Debug)]
struct Filter {
    types: &'static str,
    room: Option<&'static str>,
    user: Option<&'static str>,
}

impl Filter {
    fn matches(&self, (kind, room, user): (&str, Option<&str>, &str)) -> bool {
        let pattern = |p: &str| match p.strip_suffix(".*") {
            _ if p == "*" => true,
            Some(prefix) => kind
                .strip_prefix(prefix)
                .is_some_and(|r| r.starts_with('.')),
            None => p == kind,
        };
        self.types.split(',').any(pattern)
            && self.room.is_none_or(|r| room == Some(r))
            && self.user.is_none_or(|u| user == u)
    }

    /// The query parameters of SSE, long-polling and history.
    fn query(&self) -> String {
        let mut q = format!("types={}", self.types);
        if let Some(r) = self.room {
            q.push_str(&format!("&roomId={r}"));
        }
        if let Some(u) = self.user {
            q.push_str(&format!("&userId={u}"));
        }
        q
    }

    /// The WebSocket `subscribe` data resuming after `since`.
    fn subscribe(&self, since: u64) -> Value {
        let mut filters = serde_json::Map::new();
        if let Some(r) = self.room {
            filters.insert("roomId".into(), r.into());
        }
        if let Some(u) = self.user {
            filters.insert("userId".into(), u.into());
        }
        json!({"eventTypes": self.types.split(',').collect::<Vec<_>>(), "filters": filters, "since": since})
    }
}

/// The acknowledged events: each one's seq and its index in the mix.
type Acked = Arc<Vec<(u64, usize)>>;

/// Publishes `EVENTS` events of the mix (as the API key, which may set `userId`) from
/// `PUBLISHERS` concurrent HTTP clients; returns each event's seq with its index in the mix.
async fn publish_mix(url: String) -> Vec<(u64, usize)> {
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in (p..EVENTS).step_by(PUBLISHERS) {
                    let (kind, room, user) = nth_event(i);
                    let res = client
                        .post(&url)
                        .bearer_auth(API_KEY)
                        .json(&json!({"type": kind, "roomId": room, "userId": user, "data": {"i": i}}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(res.status().as_u16(), 201);
                    let body: Value = res.json().await.unwrap();
                    acked.push((seq_of(&body["event"]), i));
                }
                acked
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// When a round ends: after `events` events or at `deadline`, whichever comes first; the final
/// round instead reads until `target` arrived.
struct Cut {
    deadline: Instant,
    events: usize,
    target: Option<u64>,
}

impl Cut {
    fn reached(&self, seqs: &[u64]) -> bool {
        seqs.len() >= self.events || self.target.is_some_and(|t| seqs.last() >= Some(&t))
    }
}

/// Records a received event: its seq must follow the last one (no duplicate, in order).
fn take(got: &mut Vec<u64>, last: &mut u64, seq: u64, client: &str) {
    assert!(
        seq > *last,
        "{client}: seq {seq} after {last}: duplicate or out of order"
    );
    *last = seq;
    got.push(seq);
}

/// One connection of a chaos client: resume after `since`, read until `cut`, disconnect (drop
/// the socket, or abandon the long-poll request). Returns the seqs received.
async fn round(
    server: &Server,
    transport: Transport,
    filter: Filter,
    since: u64,
    cut: &Cut,
) -> Vec<u64> {
    match transport {
        Transport::WebSocket => {
            let (mut ws, created) = ws_resume_with(server, filter.subscribe(since)).await;
            assert_eq!(created["data"]["recovered"], true, "{created}");
            ws_read(&mut ws, cut).await
            // Dropped here: the TCP connection closes without a closing handshake.
        }
        Transport::Sse => {
            let res = http()
                .get(server.url(&format!("/api/realtime/stream?{}", filter.query())))
                .header("last-event-id", since.to_string())
                .send()
                .await
                .unwrap();
            let mut sse = Sse::from_response(res);
            assert_eq!(sse.status, 200);
            let mut seqs = Vec::new();
            while !cut.reached(&seqs) {
                match tokio::time::timeout_at(cut.deadline, sse.next()).await {
                    Ok(Some(e)) if e.event == "event" => {
                        let seq = seq_of(&e.json());
                        assert_eq!(e.id, Some(seq.to_string()), "the id line is the seq");
                        seqs.push(seq);
                    }
                    Ok(Some(e)) => assert_ne!(e.event, "recovery", "{e:?}"),
                    Ok(None) | Err(_) => break,
                }
            }
            seqs
        }
        Transport::LongPoll => {
            let mut seqs = Vec::new();
            let mut cursor = since;
            while !cut.reached(&seqs) {
                let poll = http()
                    .get(server.url(&format!(
                        "/api/realtime/poll?cursor={cursor}&{}&timeout=1",
                        filter.query()
                    )))
                    .send();
                // A request still out at the deadline is abandoned: its answer is lost to the
                // client, which polls again from the same cursor.
                let Ok(res) = tokio::time::timeout_at(cut.deadline, poll).await else {
                    break;
                };
                let body: Value = res.unwrap().json().await.unwrap();
                assert_eq!(body["recovered"], true, "{body}");
                let events = body["events"].as_array().unwrap();
                match events.last() {
                    Some(e) => assert_eq!(body["cursor"], e["seq"], "{body}"),
                    None => assert_eq!(body["cursor"], cursor, "an empty answer keeps the cursor"),
                }
                // The client may stop part-way through an answer: any seq it got is a cursor.
                for e in events {
                    if cut.reached(&seqs) {
                        break;
                    }
                    cursor = seq_of(e);
                    seqs.push(cursor);
                }
            }
            seqs
        }
    }
}

/// A chaos client: disconnects at random moments — after a random number of events (often in
/// the middle of a replay) or a random time — at least `DISCONNECTS` times and until
/// `published` says the publishers are done; then resumes once more and reads up to the last
/// matching event. Returns what it received and how many times it disconnected.
async fn chaos_client(
    server: Arc<Server>,
    name: String,
    transport: Transport,
    filter: Filter,
    mut rng: Rng,
    start: u64,
    mut published: tokio::sync::watch::Receiver<Option<Acked>>,
) -> (Vec<u64>, u64) {
    let disconnects = DISCONNECTS.start() + rng.below(DISCONNECTS.end() - DISCONNECTS.start() + 1);
    let matching = (0..EVENTS)
        .filter(|i| filter.matches(nth_event(*i)))
        .count() as u64;
    // Spreads the event-count cuts over the whole stream.
    let per_round = (2 * matching / disconnects).max(2);
    let (mut got, mut last, mut rounds) = (Vec::new(), start, 0);
    let all = loop {
        if rounds >= disconnects
            && let Some(all) = published.borrow_and_update().clone()
        {
            break all;
        }
        let cut = Cut {
            deadline: Instant::now() + Duration::from_millis(50 + rng.below(950)),
            events: 1 + rng.below(per_round) as usize,
            target: None,
        };
        for seq in round(&server, transport, filter, last, &cut).await {
            take(&mut got, &mut last, seq, &name);
        }
        rounds += 1;
        assert!(rounds < 2000, "{name}: the publishers never finished");
    };
    let target = all
        .iter()
        .filter(|(_, i)| filter.matches(nth_event(*i)))
        .map(|(seq, _)| *seq)
        .max()
        .expect("some events match");
    let deadline = Instant::now() + Duration::from_secs(20);
    while last < target {
        assert!(
            Instant::now() < deadline,
            "{name}: stuck at {last}, expected up to {target}"
        );
        let cut = Cut {
            deadline: Instant::now() + Duration::from_secs(2),
            events: usize::MAX,
            target: Some(target),
        };
        for seq in round(&server, transport, filter, last, &cut).await {
            take(&mut got, &mut last, seq, &name);
        }
    }
    (got, rounds)
}

/// Reads WebSocket events until `cut`; returns their seqs.
async fn ws_read(ws: &mut Ws, cut: &Cut) -> Vec<u64> {
    let mut seqs = Vec::new();
    while !cut.reached(&seqs) {
        match tokio::time::timeout_at(cut.deadline, ws.stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "event" {
                    seqs.push(seq_of(&v["data"]));
                }
            }
            Ok(Some(Ok(_))) => {}
            Err(_) | Ok(Some(Err(_)) | None) => break,
        }
    }
    seqs
}

/// Connects and subscribes with `data` (which may carry `since`); returns the socket and the
/// `subscription.created` reply.
async fn ws_resume_with(server: &Server, data: Value) -> (Ws, Value) {
    let mut ws = Ws::connect(server, "/ws").await;
    ws.send(json!({"type": "subscribe", "id": "r", "data": data}))
        .await;
    let created = ws.recv().await;
    assert_eq!(created["type"], "subscription.created", "{created}");
    assert_eq!(created["id"], "r");
    (ws, created)
}

/// Resumes `chat.*` in `r1` after `since`.
async fn ws_resume(server: &Server, since: u64) -> (Ws, Value) {
    let filter = Filter {
        types: TYPES,
        room: Some(ROOM),
        user: None,
    };
    ws_resume_with(server, filter.subscribe(since)).await
}

#[tokio::test]
async fn websocket_resume_gets_exactly_the_missed_events_once() {
    let server = Server::start_open();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_resumes_exactly_under_concurrent_publishing_and_hundreds_of_disconnects() {
    // Reconnecting is the point here: the per-IP connection rate is not under test.
    let server = Arc::new(Server::start_with(&[
        "--connection-rate-per-ip",
        "100000",
        "--public-room",
        "*",
    ]));
    let seed = Rng::seed();
    let started = std::time::Instant::now();
    let start = last_seq(&server).await;
    let filter = |types, room, user| Filter { types, room, user };
    let clients = [
        (Transport::WebSocket, filter("chat.*", Some("r1"), None)),
        (Transport::WebSocket, filter("news.item", None, None)),
        (Transport::WebSocket, filter("*", Some("r2"), Some("u2"))),
        (Transport::Sse, filter("chat.message", Some("r2"), None)),
        (Transport::Sse, filter("order.*", None, Some("u1"))),
        (
            Transport::Sse,
            filter("news.*,chat.typing", Some("r3"), None),
        ),
        (Transport::LongPoll, filter("chat.*", None, Some("u3"))),
        (Transport::LongPoll, filter("*", Some("r1"), None)),
        (
            Transport::LongPoll,
            filter("order.created,news.item", Some("r2"), None),
        ),
    ];
    let (done, published) = tokio::sync::watch::channel(None);
    let running: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(n, &(transport, filter))| {
            let name = format!("{transport:?} {}", filter.query());
            let rng = Rng::new(seed, n as u64 + 1);
            let task = chaos_client(
                server.clone(),
                name.clone(),
                transport,
                filter,
                rng,
                start,
                published.clone(),
            );
            (name, filter, tokio::spawn(task))
        })
        .collect();
    let all = publish_mix(server.url("/api/realtime/publish")).await;
    let published_in = started.elapsed();
    done.send_replace(Some(Arc::new(all.clone())));

    let mut total_rounds = 0;
    for (name, filter, task) in running {
        let (got, rounds) = task.await.unwrap();
        total_rounds += rounds;
        let mut expected: Vec<u64> = all
            .iter()
            .filter(|(_, i)| filter.matches(nth_event(*i)))
            .map(|(seq, _)| *seq)
            .collect();
        expected.sort_unstable();
        // History holds the same events (newest first; every filter matches fewer than 1000).
        let (status, history) = get(
            &server,
            &format!(
                "/api/realtime/events?{}&since={start}&limit=1000",
                filter.query()
            ),
            Some(API_KEY),
        )
        .await;
        assert_eq!(status, 200, "{history}");
        let mut stored: Vec<u64> = history["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(seq_of)
            .collect();
        stored.reverse();
        assert!(stored.len() < 1000, "{name}: history is truncated");
        assert_eq!(
            stored, expected,
            "{name}: history differs from the acknowledged events"
        );
        assert_eq!(got.len(), expected.len(), "{name}: count differs");
        assert!(
            got == expected,
            "{name}: received events differ from the matching ones"
        );
        eprintln!("{name}: {} events over {rounds} disconnects", got.len());
    }
    eprintln!(
        "{EVENTS} events published in {published_in:?}; {total_rounds} disconnects; done in {:?}",
        started.elapsed()
    );
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
    let mut server = Server::start_open();
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
    let cut = Cut {
        deadline: Instant::now() + WAIT,
        events: usize::MAX,
        target: Some(seq_of(&live)),
    };
    got.extend(ws_read(&mut ws, &cut).await);
    assert_eq!(
        got, acked,
        "every acknowledged event exactly once, in order, across the crash"
    );
}
