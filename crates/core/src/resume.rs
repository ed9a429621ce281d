//! Resume: replays the events a subscriber missed after its last `seq`, then hands it over to
//! live delivery with no gap and no duplicate at the seam.
//!
//! The seam. The log fans an event out only after the store has committed it, batch by batch
//! in `seq` order, under the hub's read lock. `Hub::begin_replay` registers the resuming
//! subscriptions under the write lock — between two fan-outs — and reads the fan-out head `H`
//! there: every event up to `H` was fanned out before the subscriptions existed and is in the
//! store; every later one is fanned out after, and while the connection replays, the hub holds
//! those aside (bounded like the outbox) instead of queuing them. The replay pages through the
//! store for `(since, H]` in ascending order into the outbox, paced by the connection's writer;
//! then `Hub::end_replay` — under the write lock again — queues the held events and turns the
//! connection back to live delivery.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use uuid::Uuid;

use crate::connection::Connection;
use crate::event::{EncodedEvent, Event};
use crate::hub::{Hub, HubError, ReplayStart};
use crate::outbox::{OutboxLimits, Outgoing};
use crate::pattern::TypePattern;
use crate::store::{EventStore, HistoryQuery, Order, ReadAccess, StoreError};
use crate::subscription::SubscriptionSpec;
use crate::wire::CloseReason;

/// Events read from the store per query.
pub const PAGE: usize = 500;

/// Whether a resume position could be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// False when events after the position are gone (retention) or the position was never
    /// issued by this server; the replay then starts at the oldest event still stored.
    pub recovered: bool,
    /// When not recovered: the oldest `seq` still available (the next `seq` to be assigned
    /// when nothing is stored).
    pub oldest_seq: Option<u64>,
}

impl Recovery {
    /// `since`: the client's position; `oldest`: the lowest `seq` stored; `last`: the highest
    /// `seq` ever committed.
    pub fn assess(since: u64, oldest: Option<u64>, last: u64) -> Self {
        let oldest = oldest.unwrap_or(last + 1);
        let recovered = since <= last && (since == 0 || oldest <= since + 1);
        Self {
            recovered,
            oldest_seq: (!recovered).then_some(oldest),
        }
    }
}

/// One store query covering several subscriptions: the union of their patterns, and a user or
/// room filter only when they all share it. Rows still have to pass `matches_any`.
pub fn union_query(specs: &[SubscriptionSpec], access: ReadAccess) -> HistoryQuery {
    let patterns = || specs.iter().flat_map(|s| &s.patterns);
    let mut types: Vec<String> = Vec::new();
    if !patterns().any(|p| *p == TypePattern::All) {
        for t in patterns().map(ToString::to_string) {
            if !types.contains(&t) {
                types.push(t);
            }
        }
    }
    let common = |field: fn(&SubscriptionSpec) -> &Option<String>| {
        let first = specs.first().and_then(|s| field(s).clone());
        specs
            .iter()
            .all(|s| *field(s) == first)
            .then_some(first)
            .flatten()
    };
    HistoryQuery {
        types,
        user_id: common(|s| &s.filters.user_id),
        room_id: common(|s| &s.filters.room_id),
        order: Order::OldestFirst,
        limit: PAGE,
        access,
        ..Default::default()
    }
}

pub fn matches_any(specs: &[SubscriptionSpec], event: &Event) -> bool {
    specs.iter().any(|s| s.matches(event))
}

/// The events of `query` in `(after, until]`, oldest first.
pub async fn page(
    store: &dyn EventStore,
    query: &HistoryQuery,
    after: u64,
    until: u64,
) -> Result<Vec<Event>, StoreError> {
    if after >= until {
        return Ok(Vec::new());
    }
    let mut q = query.clone();
    q.after_seq = Some(after);
    q.until_seq = Some(until);
    store.query(q).await
}

/// Where reading for a resume from `since` starts, and the highest committed `seq` to judge
/// its recovery against. `since` beyond the fan-out `head` is either committed but not yet
/// fanned out, or a position this server never issued (its database was replaced): then
/// everything still stored is read (from 0).
pub async fn locate(
    store: &dyn EventStore,
    since: u64,
    head: u64,
) -> Result<(u64, u64), StoreError> {
    if since <= head {
        return Ok((since, head));
    }
    let last = store.last_seq().await?.max(head);
    Ok((if since > last { 0 } else { since }, last))
}

/// A resume in progress on one connection; see the module documentation.
pub struct Replay {
    /// One of the hub's concurrent replays, returned when the replay ends.
    _permit: tokio::sync::OwnedSemaphorePermit,
    hub: Arc<Hub>,
    conn: Arc<Connection>,
    specs: Vec<SubscriptionSpec>,
    start: ReplayStart,
    since: u64,
    done: bool,
}

impl Replay {
    /// Registers the subscriptions and puts the connection in replay mode (live events held).
    /// Fails when the connection is gone, over its subscription limit, already replaying, or
    /// when the server already runs as many replays as it allows at once.
    pub fn begin(
        hub: &Arc<Hub>,
        conn: &Arc<Connection>,
        specs: Vec<SubscriptionSpec>,
        since: u64,
    ) -> Result<Self, HubError> {
        let permit = hub.replay_permit()?;
        let start = hub.begin_replay(conn, specs.clone(), since)?;
        Ok(Self {
            _permit: permit,
            hub: hub.clone(),
            conn: conn.clone(),
            specs,
            start,
            since,
            done: false,
        })
    }

    /// The new subscriptions' ids, in the order of the specs.
    pub fn ids(&self) -> &[Uuid] {
        &self.start.ids
    }

    /// Replays, then switches to live delivery. `on_start` runs once, before any replayed
    /// event is queued, with the recovery status (to queue the reply that precedes the events)
    /// or the store error. A store failure closes the connection
    /// (`CloseReason::RESUME_STORE_FAILED`): it is never left with a gap. If the connection
    /// closes meanwhile, the replay just stops.
    pub async fn run(
        mut self,
        store: &dyn EventStore,
        on_start: impl FnOnce(Result<Recovery, &StoreError>),
    ) -> Result<(), StoreError> {
        let head = self.start.head;
        let access = self.hub.access().read_scope(self.conn.identity().as_ref());
        let query = union_query(&self.specs, access);
        let (start, mut events, recovery) = match self.open(store, &query).await {
            Ok(opened) => opened,
            Err(e) => {
                on_start(Err(&e));
                self.abandon(CloseReason::RESUME_STORE_FAILED);
                return Err(e);
            }
        };
        if start != self.since {
            for id in &self.start.ids {
                self.hub.set_start(*id, start);
            }
        }
        on_start(Ok(recovery));
        let limits = self.hub.outbox_limits();
        let mut cursor = start;
        loop {
            let full = events.len() == PAGE;
            for e in events.drain(..) {
                cursor = e.seq;
                if !self.wanted(&e) {
                    continue;
                }
                let e = EncodedEvent::new(e);
                if !self.conn.may_see(&e, self.hub.access()) {
                    continue;
                }
                if !self.room(limits).await || !self.conn.send(Outgoing::Event(e)) {
                    // Closed (client gone, or overflow): dropping `self` cleans up.
                    return Ok(());
                }
            }
            let subscribed = self.ids().iter().any(|id| self.conn.has_subscription(*id));
            if !full || cursor >= head || !subscribed {
                break;
            }
            events = match page(store, &query, cursor, head).await {
                Ok(p) => p,
                Err(e) => {
                    self.abandon(CloseReason::RESUME_STORE_FAILED);
                    return Err(e);
                }
            };
        }
        self.done = true;
        self.hub.end_replay(&self.conn, head.max(start));
        Ok(())
    }

    /// Where the replay starts, its first page and the recovery status.
    async fn open(
        &self,
        store: &dyn EventStore,
        query: &HistoryQuery,
    ) -> Result<(u64, Vec<Event>, Recovery), StoreError> {
        let head = self.start.head;
        let (start, last) = locate(store, self.since, head).await?;
        let first = page(store, query, start, head).await?;
        // Checked after the first page: retention deletes only below a bound that never goes
        // down, where `oldest_seq` starts, so if nothing after `since` is missing now, nothing
        // was missing when the page was read.
        let oldest = store.oldest_seq().await?;
        Ok((start, first, Recovery::assess(self.since, oldest, last)))
    }

    /// Matches the new subscriptions, and was not already queued on this connection by one of
    /// its other subscriptions.
    fn wanted(&self, e: &Event) -> bool {
        matches_any(&self.specs, e)
            && !self
                .start
                .others
                .iter()
                .any(|o| e.seq > o.from_seq.load(Ordering::Relaxed) && o.spec.matches(e))
    }

    /// Waits until the outbox is at most half full, so a long replay never overflows it; false
    /// when the connection closed. The wait backs off (2 ms to 100 ms), so a client that stops
    /// reading costs a stalled replay a few wake-ups a second until its write times out.
    async fn room(&self, limits: OutboxLimits) -> bool {
        let mut pause = Duration::from_millis(2);
        loop {
            if self.conn.outbox.is_closed() {
                return false;
            }
            let (n, bytes) = self.conn.outbox.queued();
            if n < (limits.max_messages / 2).max(1) && bytes < limits.max_bytes / 2 {
                return true;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    fn abandon(&mut self, reason: CloseReason) {
        self.done = true;
        self.conn.outbox.close(reason);
        self.hub.end_replay(&self.conn, u64::MAX);
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        if !self.done {
            self.abandon(CloseReason::RESUME_INTERRUPTED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::Transport;
    use crate::event::NewEvent;
    use crate::outbox::Drained;
    use crate::subscription::Filters;
    use async_trait::async_trait;
    use chrono::{DateTime, Utc};
    use parking_lot::Mutex;

    /// Just enough of a store for replays: ascending `(after, until]` queries on types.
    #[derive(Default)]
    struct Mem(Mutex<Vec<Event>>);

    #[async_trait]
    impl EventStore for Mem {
        async fn append(&self, batch: Vec<Arc<EncodedEvent>>) -> Result<(), StoreError> {
            self.0.lock().extend(batch.iter().map(|e| e.event.clone()));
            Ok(())
        }
        async fn last_seq(&self) -> Result<u64, StoreError> {
            Ok(self.0.lock().last().map_or(0, |e| e.seq))
        }
        async fn query(&self, q: HistoryQuery) -> Result<Vec<Event>, StoreError> {
            let types: Vec<TypePattern> = q
                .types
                .iter()
                .map(|t| TypePattern::parse(t).unwrap())
                .collect();
            Ok(self
                .0
                .lock()
                .iter()
                .filter(|e| types.is_empty() || types.iter().any(|p| p.matches(&e.kind)))
                .filter(|e| q.after_seq.is_none_or(|a| e.seq > a))
                .filter(|e| q.until_seq.is_none_or(|u| e.seq <= u))
                .take(q.limit)
                .cloned()
                .collect())
        }
        async fn count_since(&self, _: DateTime<Utc>) -> Result<u64, StoreError> {
            Ok(0)
        }
        async fn summary(&self) -> Result<crate::store::StoreSummary, StoreError> {
            let v = self.0.lock();
            Ok(crate::store::StoreSummary {
                events: v.len() as u64,
                oldest_seq: v.first().map(|e| e.seq),
                newest_seq: v.last().map(|e| e.seq),
                recent_types: Vec::new(),
            })
        }
        async fn delete_before(&self, _: DateTime<Utc>) -> Result<u64, StoreError> {
            Ok(0)
        }
        async fn close(&self) -> Result<(), StoreError> {
            Ok(())
        }
        async fn save_session(&self, _: &str, _: &str, _: DateTime<Utc>) -> Result<(), StoreError> {
            unreachable!("replays keep no sessions")
        }
        async fn load_session(&self, _: &str) -> Result<Option<String>, StoreError> {
            unreachable!("replays keep no sessions")
        }
        async fn save_snapshot(
            &self,
            _: &str,
            _: u64,
            _: &serde_json::Value,
        ) -> Result<(), StoreError> {
            unreachable!("replays keep no snapshots")
        }
        async fn load_snapshot(
            &self,
            _: &str,
        ) -> Result<Option<(u64, serde_json::Value)>, StoreError> {
            unreachable!("replays keep no snapshots")
        }
    }

    fn event(seq: u64, kind: &str) -> Arc<EncodedEvent> {
        EncodedEvent::new(
            NewEvent {
                kind: kind.into(),
                data: serde_json::json!({}),
                user_id: None,
                room_id: None,
                metadata: None,
            }
            .commit(seq, Utc::now()),
        )
    }

    /// Commits and fans out, as the log does.
    async fn publish(hub: &Hub, store: &Mem, seqs: std::ops::RangeInclusive<u64>, kind: &str) {
        let batch: Vec<_> = seqs.map(|s| event(s, kind)).collect();
        store.append(batch.clone()).await.unwrap();
        hub.deliver(&batch);
    }

    #[tokio::test]
    async fn replay_then_held_events_then_live_without_gap_or_duplicate() {
        let hub = Arc::new(Hub::new(10, 10, OutboxLimits::default()));
        let store = Mem::default();
        publish(&hub, &store, 1..=10, "a").await;
        let conn = hub.connect(Transport::WebSocket).unwrap();
        let replay = Replay::begin(&hub, &conn, vec![spec(&["a"], None, None)], 3).unwrap();
        // Published while the replay has not run yet: held, not queued.
        publish(&hub, &store, 11..=12, "a").await;
        publish(&hub, &store, 13..=13, "b").await;
        assert_eq!(conn.outbox.queued().0, 0);
        let mut seen = None;
        replay
            .run(&store, |r| seen = Some(r.unwrap()))
            .await
            .unwrap();
        assert!(seen.unwrap().recovered);
        publish(&hub, &store, 14..=14, "a").await;
        assert_eq!(
            conn.outbox.drain_event_seqs().await,
            (4..=12).chain([14]).collect::<Vec<_>>()
        );
    }

    /// Replays are bounded server-wide: past the limit a resume is refused until one ends.
    #[tokio::test]
    async fn replays_at_once_are_bounded() {
        let hub = Arc::new(Hub::new(10, 10, OutboxLimits::default()).with_replay_limit(1));
        let store = Mem::default();
        publish(&hub, &store, 1..=3, "a").await;
        let (a, b) = (
            hub.connect(Transport::WebSocket).unwrap(),
            hub.connect(Transport::WebSocket).unwrap(),
        );
        let first = Replay::begin(&hub, &a, vec![spec(&["a"], None, None)], 0).unwrap();
        let refused = Replay::begin(&hub, &b, vec![spec(&["a"], None, None)], 0);
        assert_eq!(refused.err(), Some(HubError::TooManyReplays));
        assert_eq!(b.subscription_count(), 0, "nothing registered when refused");
        first.run(&store, |_| {}).await.unwrap();
        let second = Replay::begin(&hub, &b, vec![spec(&["a"], None, None)], 0).unwrap();
        second.run(&store, |_| {}).await.unwrap();
        assert_eq!(b.outbox.drain_event_seqs().await, [1, 2, 3]);
    }

    #[tokio::test]
    async fn a_second_resume_skips_what_other_subscriptions_already_queued() {
        let hub = Arc::new(Hub::new(10, 10, OutboxLimits::default()));
        let store = Mem::default();
        publish(&hub, &store, 1..=4, "a").await;
        let conn = hub.connect(Transport::WebSocket).unwrap();
        hub.subscribe(&conn, spec(&["a"], None, None)).unwrap();
        publish(&hub, &store, 5..=6, "a").await;
        publish(&hub, &store, 7..=7, "b").await;
        assert_eq!(conn.outbox.drain_event_seqs().await, [5, 6]);
        let replay = Replay::begin(&hub, &conn, vec![spec(&["*"], None, None)], 2).unwrap();
        replay.run(&store, |_| {}).await.unwrap();
        // 3 and 4 predate the first subscription; 5 and 6 it already queued.
        assert_eq!(conn.outbox.drain_event_seqs().await, [3, 4, 7]);
        publish(&hub, &store, 8..=8, "a").await;
        assert_eq!(conn.outbox.drain_event_seqs().await, [8]);
    }

    #[tokio::test]
    async fn held_overflow_closes_as_slow_consumer() {
        let limits = OutboxLimits {
            max_messages: 4,
            max_bytes: 1 << 20,
        };
        let hub = Arc::new(Hub::new(10, 10, limits));
        let store = Mem::default();
        let conn = hub.connect(Transport::WebSocket).unwrap();
        let replay = Replay::begin(&hub, &conn, vec![spec(&["a"], None, None)], 0).unwrap();
        publish(&hub, &store, 1..=5, "a").await;
        assert!(conn.outbox.is_closed());
        replay.run(&store, |_| {}).await.unwrap();
        let mut batch = Vec::new();
        assert_eq!(
            conn.outbox.drain(&mut batch).await,
            Drained::Close(CloseReason::SLOW_CONSUMER)
        );
        assert!(batch.is_empty());
    }

    #[tokio::test]
    async fn a_dropped_replay_closes_the_connection() {
        let hub = Arc::new(Hub::new(10, 10, OutboxLimits::default()));
        let conn = hub.connect(Transport::WebSocket).unwrap();
        let replay = Replay::begin(&hub, &conn, vec![spec(&["a"], None, None)], 0).unwrap();
        assert_eq!(
            Replay::begin(&hub, &conn, vec![spec(&["a"], None, None)], 0).err(),
            Some(HubError::Replaying)
        );
        drop(replay);
        let mut batch = Vec::new();
        assert_eq!(
            conn.outbox.drain(&mut batch).await,
            Drained::Close(CloseReason::RESUME_INTERRUPTED)
        );
    }

    fn spec(types: &[&str], user: Option<&str>, room: Option<&str>) -> SubscriptionSpec {
        SubscriptionSpec::parse(
            &types.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            Filters {
                user_id: user.map(Into::into),
                room_id: room.map(Into::into),
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn recovery_is_lost_only_when_events_after_since_are_gone() {
        let ok = |r: Recovery| r.recovered && r.oldest_seq.is_none();
        assert!(ok(Recovery::assess(0, Some(40), 50)));
        assert!(ok(Recovery::assess(10, Some(5), 50)));
        assert!(ok(Recovery::assess(10, Some(11), 50)));
        assert!(ok(Recovery::assess(50, None, 50)));
        let lost = Recovery::assess(10, Some(12), 50);
        assert_eq!((lost.recovered, lost.oldest_seq), (false, Some(12)));
        let empty = Recovery::assess(10, None, 50);
        assert_eq!((empty.recovered, empty.oldest_seq), (false, Some(51)));
        let future = Recovery::assess(60, Some(1), 50);
        assert_eq!((future.recovered, future.oldest_seq), (false, Some(1)));
    }

    #[test]
    fn union_query_keeps_only_shared_filters() {
        let one = union_query(
            &[spec(&["chat.*", "a.b"], None, Some("r1"))],
            ReadAccess::All,
        );
        assert_eq!(one.types, ["chat.*", "a.b"]);
        assert_eq!(one.room_id.as_deref(), Some("r1"));
        assert_eq!(one.order, Order::OldestFirst);
        let two = union_query(
            &[
                spec(&["user.notification"], Some("bob"), None),
                spec(&["chat.*"], Some("bob"), Some("r1")),
            ],
            ReadAccess::All,
        );
        assert_eq!(two.types, ["user.notification", "chat.*"]);
        assert_eq!((two.user_id.as_deref(), two.room_id), (Some("bob"), None));
        let all = union_query(
            &[spec(&["*"], None, None), spec(&["a"], None, None)],
            ReadAccess::All,
        );
        assert!(all.types.is_empty());
    }
}
