//! Micro-benchmarks of the publish hot path: matching an event against the subscription index,
//! and encoding it once per wire format. `cargo bench -p herald-core`.

use std::sync::Arc;

use chrono::Utc;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use herald_core::Connection;
use herald_core::protocol::Envelope;
use herald_core::wire::EventFrames;
use herald_core::{
    Access, EncodedEvent, Filters, Hub, NewEvent, OutboxLimits, SubscriptionSpec, Transport,
};
use serde_json::json;

fn event(seq: u64, room: &str) -> Arc<EncodedEvent> {
    EncodedEvent::new(
        NewEvent {
            kind: "chat.message".into(),
            data: json!({"text": "x".repeat(100), "level": "high"}),
            user_id: Some("alice".into()),
            room_id: Some(room.into()),
            metadata: None,
        }
        .commit(seq, Utc::now()),
    )
}

/// Every room public: the connections here are anonymous, and the access decision is still
/// asked for each recipient.
fn unbounded_hub() -> Hub {
    Hub::new(
        20_000,
        10,
        OutboxLimits {
            max_messages: usize::MAX,
            max_bytes: usize::MAX,
        },
    )
    .with_access(Arc::new(Access::new(vec!["*".into()])))
}

fn spec(types: &[&str], room: Option<String>) -> SubscriptionSpec {
    let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
    SubscriptionSpec::parse(
        &types,
        Filters {
            room_id: room,
            ..Default::default()
        },
    )
    .unwrap()
}

/// 10 000 connections, each subscribed to `chat.message` in one of 1 000 rooms, plus 100
/// wildcard and 100 prefix subscribers: an event in one room should visit ~210 subscriptions.
fn index(c: &mut Criterion) {
    let hub = unbounded_hub();
    let mut conns = Vec::new();
    for i in 0..10_000 {
        let conn = hub.connect(Transport::WebSocket).unwrap();
        hub.subscribe(
            &conn,
            spec(&["chat.message"], Some(format!("room-{}", i % 1000))),
        )
        .unwrap();
        conns.push(conn);
    }
    for _ in 0..100 {
        for types in [["*"], ["chat.*"]] {
            let conn = hub.connect(Transport::WebSocket).unwrap();
            hub.subscribe(&conn, spec(&types, None)).unwrap();
            conns.push(conn);
        }
    }
    deliver(
        c,
        "deliver: 1 event, 10 200 subscriptions, 210 matching",
        &hub,
        &conns,
        "room-7",
        1,
    );
}

/// The fan-out benchmark's shape: 1 000 connections subscribed to one room.
fn busy_room(c: &mut Criterion) {
    let hub = unbounded_hub();
    let conns: Vec<_> = (0..1000)
        .map(|_| {
            let conn = hub.connect(Transport::WebSocket).unwrap();
            hub.subscribe(&conn, spec(&["chat.message"], Some("lobby".into())))
                .unwrap();
            conn
        })
        .collect();
    deliver(
        c,
        "deliver: 1 event to a room of 1 000",
        &hub,
        &conns,
        "lobby",
        1,
    );
    deliver(
        c,
        "deliver: a batch of 32 events to a room of 1 000",
        &hub,
        &conns,
        "lobby",
        32,
    );
}

/// 1 000 authenticated users subscribed to a room that is not public: the access decision is
/// asked for each recipient.
fn private_room(c: &mut Criterion) {
    let hub = Hub::new(
        20_000,
        10,
        OutboxLimits {
            max_messages: usize::MAX,
            max_bytes: usize::MAX,
        },
    );
    let conns: Vec<_> = (0..1000)
        .map(|i| {
            let conn = hub.connect(Transport::WebSocket).unwrap();
            hub.authenticate(&conn, herald_core::Identity::user(format!("u{i}")))
                .unwrap();
            hub.subscribe(&conn, spec(&["chat.message"], Some("team".into())))
                .unwrap();
            conn
        })
        .collect();
    deliver(
        c,
        "deliver: 1 event to a private room of 1 000 users",
        &hub,
        &conns,
        "team",
        1,
    );
}

/// Times `Hub::deliver` of a committed batch of `events` in `room`. Each iteration delivers
/// new seqs (the hub delivers a seq once per connection); the untimed setup empties the
/// outboxes now and then so memory stays flat.
fn deliver(
    c: &mut Criterion,
    name: &str,
    hub: &Hub,
    conns: &[Arc<Connection>],
    room: &str,
    events: u64,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut seq = 0;
    let mut scratch = Vec::new();
    c.bench_function(name, |b| {
        b.iter_batched(
            || {
                seq += events;
                if seq % 1024 < events {
                    for conn in conns.iter().filter(|c| c.outbox.queued().0 > 0) {
                        rt.block_on(conn.outbox.drain(&mut scratch));
                        scratch.clear();
                    }
                }
                (seq - events + 1..=seq)
                    .map(|s| event(s, room))
                    .collect::<Vec<_>>()
            },
            |batch| black_box(hub.deliver(&batch)),
            BatchSize::SmallInput,
        )
    });
}

fn encoding(c: &mut Criterion) {
    c.bench_function("encode: event JSON + WebSocket frame + SSE record", |b| {
        b.iter(|| {
            let e = event(1, "lobby");
            black_box((e.ws_frame().len(), e.sse_frame().len()))
        })
    });
    let text = r#"{"type":"publish","id":7,"data":{"type":"chat.message","roomId":"lobby","data":{"text":"hello there"}}}"#;
    c.bench_function("parse: publish command", |b| {
        b.iter(|| black_box(Envelope::parse(black_box(text)).unwrap()))
    });
}

criterion_group!(benches, index, busy_room, private_room, encoding);
criterion_main!(benches);
