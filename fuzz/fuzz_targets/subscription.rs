//! Subscription specs and filters from JSON, as `subscribe` sends them, and the fan-out that
//! matches events against them. The input is a JSON object: the `subscribe` arguments
//! (`eventTypes`, `filters`), plus optionally `also` (more `subscribe` arguments on the same
//! connection), `events` (`{type, roomId, userId, data}` objects to publish) and `batch` (how
//! many events the log commits at a time). Besides not panicking:
//! - `SubscriptionSpec::parse` accepts exactly 1..=32 valid patterns, keeps each once, and the
//!   `eventTypes` it reports (`subscription.created`) parse back to the same spec; the filters
//!   serialise and deserialise unchanged;
//! - an event built to fit each pattern and every filter matches;
//! - the hub's fan-out (the subscription index, runs of events of one route, its shortcuts
//!   for runs open to everyone or to every plain user) queues on each connection exactly the
//!   events that `SubscriptionSpec::matches` and `Access::may_read` let it see, once each, in
//!   `seq` order.
#![no_main]

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use chrono::DateTime;
use herald_core::Connection;
use herald_core::protocol::SubscribeArgs;
use herald_core::access::personal_owner;
use herald_core::{
    Access, EncodedEvent, Event, Filters, Hub, Identity, OutboxLimits, Outgoing, Role,
    SubscriptionSpec, Transport, TypePattern,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

const MAX_EVENTS: usize = 300;

fn spec_of(args: &SubscribeArgs) -> Result<SubscriptionSpec, String> {
    SubscriptionSpec::parse(&args.event_types, args.filters.clone().unwrap_or_default())
}

/// The checks on one spec alone.
fn check_spec(args: &SubscribeArgs, spec: &Result<SubscriptionSpec, String>) {
    let patterns: Vec<_> = args
        .event_types
        .iter()
        .map(|t| TypePattern::parse(t))
        .collect();
    let custom = args.filters.clone().unwrap_or_default().custom;
    let valid = (1..=herald_core::subscription::MAX_PATTERNS).contains(&patterns.len())
        && patterns.iter().all(Result::is_ok)
        && custom.len() <= herald_core::subscription::MAX_CUSTOM_FILTERS
        && Value::Object(custom).to_string().len() <= herald_core::subscription::MAX_CUSTOM_BYTES;
    let Ok(spec) = spec else {
        assert!(!valid, "{args:?} refused: {spec:?}");
        return;
    };
    assert!(valid, "{args:?} accepted");
    assert_eq!(spec.filters, args.filters.clone().unwrap_or_default());
    for p in patterns.into_iter().flatten() {
        assert_eq!(
            spec.patterns.iter().filter(|q| **q == p).count(),
            1,
            "{p} once"
        );
    }
    assert!(spec.patterns.len() <= args.event_types.len());
    let reported = SubscriptionSpec::parse(&spec.event_types(), spec.filters.clone());
    assert_eq!(reported.as_ref(), Ok(spec), "eventTypes reported back");
    let filters = serde_json::to_value(&spec.filters).expect("filters serialise");
    let back: Filters = serde_json::from_value(filters).expect("filters deserialise");
    assert_eq!(back, spec.filters);
    for p in &spec.patterns {
        let kind = match p {
            TypePattern::All => "any.type".to_owned(),
            TypePattern::Exact(t) => t.clone(),
            TypePattern::Prefix(p) => format!("{p}x"),
        };
        let fits = event(
            0,
            kind,
            spec.filters.room_id.clone(),
            spec.filters.user_id.clone(),
            Value::Object(spec.filters.custom.clone()),
        );
        assert!(spec.matches(&fits), "{p} with its filters matches {fits:?}");
    }
}

fn event(
    seq: u64,
    kind: String,
    room_id: Option<String>,
    user_id: Option<String>,
    data: Value,
) -> Event {
    Event {
        id: uuid::Uuid::nil(),
        seq,
        kind,
        data,
        user_id,
        room_id,
        timestamp: DateTime::UNIX_EPOCH,
        metadata: None,
    }
}

fn string(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_owned)
}

/// Takes what the connection's outbox holds: the events' `seq`s.
fn drain(conn: &Connection) -> Vec<u64> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut next = std::pin::pin!(conn.outbox.next_batch());
    match next.as_mut().poll(&mut cx) {
        Poll::Ready((batch, _)) => batch
            .iter()
            .map(|item| match item {
                Outgoing::Event(e) => e.event.seq,
                other => panic!("unexpected {other:?}"),
            })
            .collect(),
        Poll::Pending => Vec::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(args) = serde_json::from_value::<SubscribeArgs>(doc.clone()) else {
        return;
    };
    let spec = spec_of(&args);
    check_spec(&args, &spec);
    let Ok(spec) = spec else {
        return;
    };
    let mut also = Vec::new();
    for more in doc["also"].as_array().into_iter().flatten().take(8) {
        if let Ok(more) = serde_json::from_value::<SubscribeArgs>(more.clone()) {
            let s = spec_of(&more);
            check_spec(&more, &s);
            also.extend(s);
        }
    }

    // Events from the input, then one that fits each pattern of the main spec.
    let mut events = Vec::new();
    for e in doc["events"]
        .as_array()
        .into_iter()
        .flatten()
        .take(MAX_EVENTS)
    {
        let Value::Object(e) = e else { continue };
        let kind = string(e.get("type")).unwrap_or_default();
        let data = e.get("data").cloned().unwrap_or(Value::Object(Map::new()));
        let (room, user) = (string(e.get("roomId")), string(e.get("userId")));
        events.push(event(0, kind, room, user, data));
    }
    for p in &spec.patterns {
        let kind = match p {
            TypePattern::All => "a.b".to_owned(),
            TypePattern::Exact(t) => t.clone(),
            TypePattern::Prefix(p) => format!("{p}y"),
        };
        let (room, user) = (spec.filters.room_id.clone(), spec.filters.user_id.clone());
        events.push(event(
            0,
            kind,
            room,
            user,
            Value::Object(spec.filters.custom.clone()),
        ));
    }
    for (i, e) in events.iter_mut().enumerate() {
        e.seq = i as u64 + 1;
    }

    // An admin (sees everything) with every spec; an anonymous connection, a user, and a user
    // whose token limits its rooms, with the main one. Some rooms are public.
    let limits = OutboxLimits {
        max_messages: 1 << 20,
        max_bytes: usize::MAX / 2,
    };
    let access = Arc::new(Access::new(vec!["lobby".into(), "open-*".into()]));
    let hub = Hub::new(8, 16, limits).with_access(access.clone());
    let admin = hub.connect(Transport::WebSocket).unwrap();
    hub.authenticate(&admin, Identity::with_role("root", Role::Admin))
        .unwrap();
    let anonymous = hub.connect(Transport::Sse).unwrap();
    let user = hub.connect(Transport::WebSocket).unwrap();
    hub.authenticate(&user, Identity::user("u1")).unwrap();
    let claimed = hub.connect(Transport::WebSocket).unwrap();
    let limited = Identity {
        rooms: Some(vec!["team-*".into()]),
        ..Identity::user("u2")
    };
    hub.authenticate(&claimed, limited).unwrap();
    let conns = [
        (&admin, [&[spec.clone()][..], &also[..]].concat()),
        (&anonymous, vec![spec.clone()]),
        (&user, vec![spec.clone()]),
        (&claimed, vec![spec.clone()]),
    ];
    for (conn, specs) in &conns {
        for s in specs {
            hub.subscribe(conn, s.clone()).unwrap();
        }
    }

    let batch = doc["batch"]
        .as_u64()
        .map_or(events.len(), |b| b as usize)
        .max(1);
    let encoded: Vec<_> = events.iter().cloned().map(EncodedEvent::new).collect();
    let mut delivered = 0;
    for b in encoded.chunks(batch) {
        delivered += hub.deliver(b);
    }

    let mut total = 0;
    for (conn, specs) in &conns {
        let identity = conn.identity();
        let expected: Vec<u64> = events
            .iter()
            .filter(|e| {
                // The fan-out's shortcuts (a run open to everyone, or to every plain user)
                // must agree with the decision itself.
                let may_see = access.may_read(identity.as_ref(), e);
                // Events in a personal room reach its owner's connections whatever they
                // subscribed to.
                let own_room = e
                    .room_id
                    .as_deref()
                    .and_then(personal_owner)
                    .is_some_and(|o| identity.as_ref().is_some_and(|i| i.user_id == o));
                may_see && (own_room || specs.iter().any(|s| s.matches(e)))
            })
            .map(|e| e.seq)
            .collect();
        total += expected.len();
        assert_eq!(drain(conn), expected, "{:?} with {specs:?}", identity);
    }
    assert_eq!(delivered, total);
});
