//! The behaviour every `EventStore` must have, written once and run against each
//! implementation: `behaviour_tests!` expands to one `#[tokio::test]` per check.
#![allow(dead_code)] // each test crate uses the helpers through the macro

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use herald_core::Access;
use herald_core::event::{EncodedEvent, NewEvent};
use herald_core::identity::{Identity, Role};
use herald_core::store::{EventStore, HistoryQuery, Order, ReadAccess};
use serde_json::json;

/// A place where a store keeps its data (a file, a database schema); `open` can be called
/// again to reopen the same data, as a restarted server would.
pub(crate) trait Backend {
    fn open(&self) -> impl Future<Output = Box<dyn EventStore>>;
}

/// One test per behaviour below, each on a fresh backend made by `$fresh` (an expression
/// evaluating to a future of a `Backend`).
#[macro_export]
macro_rules! behaviour_tests {
    ($fresh:expr) => {
        $crate::behaviour_tests!(@each $fresh;
            history_queries_filter_and_order_newest_first,
            personal_rooms_and_user_events_are_private,
            the_read_scope_is_the_access_decision,
            retention_deletes_old_events_but_seq_is_never_reused,
            a_failed_batch_commits_nothing,
            ascending_pages_between_two_seqs_and_the_oldest_seq,
            time_bounds_split_a_millisecond_shared_by_several_events,
            sessions_are_replaced_expire_and_survive_a_reopen,
            snapshots_keep_the_higher_seq_and_survive_a_reopen_and_retention,
            retention_keeps_the_document_changes_no_snapshot_covers,
        );
    };
    (@each $fresh:expr; $($name:ident,)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                behaviour::$name($fresh.await).await;
            }
        )*
    };
}

fn ev(
    seq: u64,
    kind: &str,
    user: Option<&str>,
    room: Option<&str>,
    age: Duration,
) -> Arc<EncodedEvent> {
    EncodedEvent::new(
        NewEvent {
            kind: kind.into(),
            data: json!({"n": seq}),
            user_id: user.map(Into::into),
            room_id: room.map(Into::into),
            metadata: Some(json!({"source": "test"})),
        }
        .commit(seq, Utc::now() - age),
    )
}

/// A reader of private events who may read every room.
fn own_only(user: Option<String>) -> ReadAccess {
    ReadAccess::Limited { user, rooms: None }
}

fn seqs(events: &[herald_core::Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

pub(crate) async fn history_queries_filter_and_order_newest_first(backend: impl Backend) {
    let store = backend.open().await;
    let none = Duration::zero();
    store
        .append(vec![
            ev(
                1,
                "chat.message",
                Some("alice"),
                Some("r1"),
                Duration::hours(2),
            ),
            ev(2, "chat.message", Some("bob"), Some("r2"), none),
            ev(3, "user.notification", Some("alice"), None, none),
            ev(4, "user.notification", Some("bob"), None, none),
            ev(5, "order.created", None, None, none),
        ])
        .await
        .unwrap();
    let q = |f: fn(&mut HistoryQuery)| {
        let mut q = HistoryQuery::default();
        f(&mut q);
        q
    };
    assert_eq!(
        seqs(&store.query(q(|_| {})).await.unwrap()),
        vec![5, 4, 3, 2, 1]
    );
    assert_eq!(
        seqs(
            &store
                .query(q(|q| q.types = vec!["chat.message".into()]))
                .await
                .unwrap()
        ),
        vec![2, 1]
    );
    assert_eq!(
        seqs(
            &store
                .query(q(
                    |q| q.types = vec!["user.*".into(), "order.created".into()]
                ))
                .await
                .unwrap()
        ),
        vec![5, 4, 3]
    );
    assert_eq!(
        seqs(
            &store
                .query(q(|q| q.user_id = Some("alice".into())))
                .await
                .unwrap()
        ),
        vec![3, 1]
    );
    assert_eq!(
        seqs(
            &store
                .query(q(|q| q.room_id = Some("r2".into())))
                .await
                .unwrap()
        ),
        vec![2]
    );
    assert_eq!(
        seqs(&store.query(q(|q| q.after_seq = Some(3))).await.unwrap()),
        vec![5, 4]
    );
    assert_eq!(
        seqs(
            &store
                .query(q(|q| q.since_time = Some(Utc::now() - Duration::hours(1))))
                .await
                .unwrap()
        ),
        vec![5, 4, 3, 2]
    );
    assert_eq!(
        seqs(&store.query(q(|q| q.limit = 2)).await.unwrap()),
        vec![5, 4]
    );
    assert_eq!(
        seqs(
            &store
                .query(q(|q| q.access = own_only(Some("alice".into()))))
                .await
                .unwrap()
        ),
        vec![5, 3, 2, 1]
    );
    assert_eq!(
        seqs(&store.query(q(|q| q.access = own_only(None))).await.unwrap()),
        vec![5, 2, 1]
    );
    let back = &store.query(q(|q| q.limit = 1)).await.unwrap()[0];
    assert_eq!(back.data, json!({"n": 5}));
    assert_eq!(back.metadata, Some(json!({"source": "test"})));
    assert_eq!(
        store
            .count_since(Utc::now() - Duration::hours(1))
            .await
            .unwrap(),
        4
    );
    let s = store.summary().await.unwrap();
    assert_eq!(
        (s.events, s.oldest_seq, s.newest_seq),
        (5, Some(1), Some(5))
    );
    assert_eq!(
        s.recent_types,
        vec!["chat.message", "order.created", "user.notification"]
    );
}

pub(crate) async fn personal_rooms_and_user_events_are_private(backend: impl Backend) {
    let store = backend.open().await;
    let none = Duration::zero();
    store
        .append(vec![
            ev(1, "chat.message", Some("bob"), Some("user:alice"), none),
            ev(2, "chat.message", Some("alice"), Some("user:bob"), none),
            ev(3, "chat.message", Some("carol"), Some("user:"), none),
            ev(4, "chat.message", Some("carol"), Some("users"), none),
            ev(5, "user.profile", Some("alice"), Some("user:alice"), none),
            ev(6, "userx.thing", Some("bob"), None, none),
        ])
        .await
        .unwrap();
    let visible = |access| {
        let store = &store;
        async move {
            let q = HistoryQuery {
                access,
                ..Default::default()
            };
            seqs(&store.query(q).await.unwrap())
        }
    };
    // Alice sees her personal room (whoever posted there) and her own `user.*` events, not
    // Bob's room; `user:` with an empty id is still a personal room, `users` and `userx.*`
    // are not private at all.
    assert_eq!(
        visible(own_only(Some("alice".into()))).await,
        vec![6, 5, 4, 1]
    );
    assert_eq!(visible(own_only(Some("bob".into()))).await, vec![6, 4, 2]);
    assert_eq!(visible(own_only(None)).await, vec![6, 4]);
    assert_eq!(visible(ReadAccess::All).await, vec![6, 5, 4, 3, 2, 1]);
}

/// What a history query returns to a reader is exactly what `Access::may_read` lets it see,
/// for every kind of reader and room (the store filters in the query, so pages stay full).
pub(crate) async fn the_read_scope_is_the_access_decision(backend: impl Backend) {
    let store = backend.open().await;
    let none = Duration::zero();
    let rooms = [
        None,
        Some("lobby"),
        Some("open-1"),
        Some("open"),
        Some("secret"),
        Some("team-a"),
        Some("téam-ß"),
        Some("user:alice"),
        Some("user:bob"),
        Some("users"),
    ];
    let mut batch = Vec::new();
    for room in rooms {
        for (kind, user) in [
            ("chat.message", Some("bob")),
            ("user.note", Some("alice")),
            ("x", None),
        ] {
            batch.push(ev(batch.len() as u64 + 1, kind, user, room, none));
        }
    }
    let all: Vec<herald_core::Event> = batch.iter().map(|e| e.event.clone()).collect();
    store.append(batch).await.unwrap();
    let access = Access::new(vec!["lobby".into(), "open-*".into()]);
    let readers = [
        None,
        Some(Identity::user("alice")),
        Some(Identity {
            rooms: Some(vec!["team-*".into(), "téam-*".into(), "secret".into()]),
            ..Identity::user("carol")
        }),
        Some(Identity {
            rooms: Some(vec!["*".into()]),
            ..Identity::user("dave")
        }),
        Some(Identity::with_role("ops", Role::Admin)),
    ];
    for reader in readers {
        let q = HistoryQuery {
            access: access.read_scope(reader.as_ref()),
            order: Order::OldestFirst,
            limit: 1000,
            ..Default::default()
        };
        let expected: Vec<u64> = all
            .iter()
            .filter(|e| access.may_read(reader.as_ref(), e))
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs(&store.query(q).await.unwrap()), expected, "{reader:?}");
    }
}

pub(crate) async fn retention_deletes_old_events_but_seq_is_never_reused(backend: impl Backend) {
    let store = backend.open().await;
    assert_eq!(store.last_seq().await.unwrap(), 0);
    store
        .append(vec![
            ev(1, "a", None, None, Duration::hours(30)),
            ev(2, "a", None, None, Duration::hours(25)),
        ])
        .await
        .unwrap();
    assert_eq!(
        store
            .delete_before(Utc::now() - Duration::hours(24))
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.summary().await.unwrap().events, 0);
    assert_eq!(store.last_seq().await.unwrap(), 2);
    store.close().await.unwrap();
    assert!(
        store
            .append(vec![ev(3, "a", None, None, Duration::zero())])
            .await
            .is_err()
    );

    let reopened = backend.open().await;
    assert_eq!(reopened.last_seq().await.unwrap(), 2);
}

pub(crate) async fn a_failed_batch_commits_nothing(backend: impl Backend) {
    let store = backend.open().await;
    store
        .append(vec![ev(1, "a", None, None, Duration::zero())])
        .await
        .unwrap();
    // seq 1 again violates the primary key: the whole batch must roll back.
    let err = store
        .append(vec![
            ev(2, "a", None, None, Duration::zero()),
            ev(1, "a", None, None, Duration::zero()),
        ])
        .await;
    assert!(err.is_err());
    assert_eq!(
        seqs(&store.query(HistoryQuery::default()).await.unwrap()),
        vec![1]
    );
    assert_eq!(store.last_seq().await.unwrap(), 1);
}

pub(crate) async fn ascending_pages_between_two_seqs_and_the_oldest_seq(backend: impl Backend) {
    let store = backend.open().await;
    assert_eq!(store.oldest_seq().await.unwrap(), None);
    let old = Duration::hours(2);
    store
        .append(
            (1..=10)
                .map(|s| {
                    let age = if s <= 3 { old } else { Duration::zero() };
                    ev(
                        s,
                        if s % 2 == 0 { "a.even" } else { "a.odd" },
                        None,
                        None,
                        age,
                    )
                })
                .collect(),
        )
        .await
        .unwrap();
    let page = |after, until, limit| HistoryQuery {
        types: vec!["a.*".into()],
        after_seq: Some(after),
        until_seq: Some(until),
        order: Order::OldestFirst,
        limit,
        ..Default::default()
    };
    assert_eq!(
        seqs(&store.query(page(2, 8, 4)).await.unwrap()),
        vec![3, 4, 5, 6]
    );
    assert_eq!(seqs(&store.query(page(6, 8, 4)).await.unwrap()), vec![7, 8]);
    let mut even = page(0, 10, 100);
    even.types = vec!["a.even".into()];
    assert_eq!(
        seqs(&store.query(even).await.unwrap()),
        vec![2, 4, 6, 8, 10]
    );
    assert_eq!(store.oldest_seq().await.unwrap(), Some(1));
    store
        .delete_before(Utc::now() - Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(store.oldest_seq().await.unwrap(), Some(4));
}

pub(crate) async fn time_bounds_split_a_millisecond_shared_by_several_events(
    backend: impl Backend,
) {
    let store = backend.open().await;
    // 60 events stamped in runs of four per millisecond (as one commit stamps its batch), with
    // `seq`s that skip every seventh: each bound must land on the exact first event.
    let start = Utc::now().timestamp_millis() - 1_000;
    let stamps: Vec<(u64, i64)> = (1..=70u64)
        .filter(|s| s % 7 != 0)
        .enumerate()
        .map(|(i, seq)| (seq, start + (i as i64) / 4))
        .collect();
    let at = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap();
    store
        .append(
            stamps
                .iter()
                .map(|&(seq, ms)| {
                    EncodedEvent::new(
                        NewEvent {
                            kind: "tick".into(),
                            data: json!({}),
                            user_id: None,
                            room_id: None,
                            metadata: None,
                        }
                        .commit(seq, at(ms)),
                    )
                })
                .collect(),
        )
        .await
        .unwrap();
    let stamped = |keep: &dyn Fn(i64) -> bool| -> Vec<u64> {
        stamps
            .iter()
            .filter(|(_, ms)| keep(*ms))
            .map(|(s, _)| *s)
            .collect()
    };
    for t in start - 2..=start + 17 {
        let mut after = HistoryQuery {
            since_time: Some(at(t)),
            order: Order::OldestFirst,
            limit: 1_000,
            ..Default::default()
        };
        assert_eq!(
            seqs(&store.query(after.clone()).await.unwrap()),
            stamped(&|ms| ms > t),
            "since {t}"
        );
        after.after_seq = Some(40);
        assert_eq!(
            seqs(&store.query(after).await.unwrap()),
            stamped(&|ms| ms > t)
                .into_iter()
                .filter(|&s| s > 40)
                .collect::<Vec<_>>(),
            "since {t} and after 40"
        );
        assert_eq!(
            store.count_since(at(t)).await.unwrap() as usize,
            stamped(&|ms| ms >= t).len(),
            "count since {t}"
        );
    }
    let cutoff = start + 9;
    assert_eq!(
        store.delete_before(at(cutoff)).await.unwrap() as usize,
        stamped(&|ms| ms < cutoff).len()
    );
    let left = HistoryQuery {
        order: Order::OldestFirst,
        limit: 1_000,
        ..Default::default()
    };
    assert_eq!(
        seqs(&store.query(left.clone()).await.unwrap()),
        stamped(&|ms| ms >= cutoff)
    );
    assert_eq!(
        store.delete_before(at(start + 100)).await.unwrap() as usize,
        stamped(&|ms| ms >= cutoff).len()
    );
    assert!(store.query(left).await.unwrap().is_empty());
    assert_eq!(store.count_since(at(start)).await.unwrap(), 0);
    assert_eq!(store.last_seq().await.unwrap(), 69);
}

pub(crate) async fn sessions_are_replaced_expire_and_survive_a_reopen(backend: impl Backend) {
    let store = backend.open().await;
    let later = Utc::now() + Duration::hours(1);
    assert_eq!(store.load_session("a").await.unwrap(), None);
    store.save_session("a", r#"{"v":1}"#, later).await.unwrap();
    store.save_session("a", r#"{"v":2}"#, later).await.unwrap();
    store
        .save_session("gone", "{}", Utc::now() - Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(
        store.load_session("a").await.unwrap().as_deref(),
        Some(r#"{"v":2}"#)
    );
    assert_eq!(store.load_session("gone").await.unwrap(), None);
    store.close().await.unwrap();
    let store = backend.open().await;
    assert_eq!(
        store.load_session("a").await.unwrap().as_deref(),
        Some(r#"{"v":2}"#)
    );
    store.close().await.unwrap();
}

pub(crate) async fn snapshots_keep_the_higher_seq_and_survive_a_reopen_and_retention(
    backend: impl Backend,
) {
    let store = backend.open().await;
    assert_eq!(store.load_snapshot("document:d").await.unwrap(), None);
    store
        .save_snapshot("document:d", 5, &json!({"v": 5}))
        .await
        .unwrap();
    store
        .save_snapshot("document:d", 3, &json!({"v": 3}))
        .await
        .unwrap();
    store
        .save_snapshot("yjs:d", 2, &json!({"v": 2}))
        .await
        .unwrap();
    assert_eq!(
        store.load_snapshot("document:d").await.unwrap(),
        Some((5, json!({"v": 5}))),
        "an older snapshot does not replace a newer one"
    );
    store
        .save_snapshot("document:d", 7, &json!({"v": 7}))
        .await
        .unwrap();
    store.delete_before(Utc::now()).await.unwrap();
    store.close().await.unwrap();
    let store = backend.open().await;
    assert_eq!(
        store.load_snapshot("document:d").await.unwrap(),
        Some((7, json!({"v": 7})))
    );
    assert_eq!(
        store.load_snapshot("yjs:d").await.unwrap(),
        Some((2, json!({"v": 2})))
    );
    store.close().await.unwrap();
}

pub(crate) async fn retention_keeps_the_document_changes_no_snapshot_covers(backend: impl Backend) {
    let store = backend.open().await;
    let old = Duration::hours(2);
    let doc = Some("document:d");
    let pad = Some("yjs:p");
    store
        .append(vec![
            ev(1, "document.change", None, doc, old),
            ev(2, "document.change", None, doc, old),
            ev(3, "document.change", None, Some("document:none"), old),
            ev(4, "yjs.update", None, pad, old),
            ev(5, "document.change", None, doc, old),
            ev(6, "yjs.update", None, pad, old),
            ev(7, "chat.message", None, doc, old),
            ev(8, "document.change", None, doc, Duration::zero()),
        ])
        .await
        .unwrap();
    store
        .save_snapshot("document:d", 2, &json!({}))
        .await
        .unwrap();
    store.save_snapshot("yjs:p", 6, &json!({})).await.unwrap();
    let deleted = store
        .delete_before(Utc::now() - Duration::hours(1))
        .await
        .unwrap();
    // Covered changes and other events go; changes after their room's snapshot (or in a room
    // without one) stay, as does everything within retention.
    let left = store
        .query(HistoryQuery {
            order: Order::OldestFirst,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(seqs(&left), [3, 5, 8]);
    assert_eq!(deleted, 5);
    // Resume may not start below what retention deleted, whatever older changes are kept.
    assert_eq!(store.oldest_seq().await.unwrap(), Some(8));
    store.close().await.unwrap();
    let store = backend.open().await;
    assert_eq!(store.oldest_seq().await.unwrap(), Some(8));
    store.close().await.unwrap();
}
