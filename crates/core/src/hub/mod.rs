//! The connection manager: every live connection (WebSocket or SSE), who it belongs to, what
//! it subscribed to, and the fan-out of committed events into their outboxes.
//!
//! Here the hub, its connections by id and by user, and subscriptions; in `fanout` the
//! delivery of committed batches, in `rooms` rooms and presence, in `replay` beginning and
//! ending a replay (the connection holds its live events meanwhile: `crate::connection`).

mod fanout;
mod replay;
mod rooms;

pub use replay::ReplayStart;
use rooms::announce_leave;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use chrono::Utc;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::Access;
use crate::connection::{Connection, Transport};
use crate::identity::Identity;
use crate::outbox::{Outbox, OutboxLimits, Outgoing, WokenWriters};
use crate::presence::ClusterPresence;
use crate::room::{RoomDirectory, RoomStats};
use crate::signal::ClusterSignals;
use crate::subscription::{Subscription, SubscriptionIndex, SubscriptionSpec};
use crate::wire::CloseReason;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HubError {
    #[error("connection limit reached ({0})")]
    Full(usize),
    #[error("connection not found")]
    NoConnection,
    #[error("subscription limit reached ({0} per connection)")]
    TooManySubscriptions(usize),
    #[error("subscription not found")]
    NoSubscription,
    #[error("a resume is already replaying on this connection")]
    Replaying,
    #[error("not in that room; join it first")]
    NotInRoom,
    #[error("too many resumes in progress on this server; retry in a moment")]
    TooManyReplays,
    #[error("subscriptions too large: at most {0} bytes of patterns and filters per connection")]
    SubscriptionsTooLarge(usize),
    #[error("room limit reached ({0} per connection)")]
    TooManyRooms(usize),
    #[error("this connection is authenticated as {0}; open a new connection for another user")]
    OtherUser(String),
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ByTransport {
    pub websocket: usize,
    pub sse: usize,
    /// Held long-polls. Defaulted when absent (a node of an earlier version reporting).
    #[serde(default)]
    pub longpoll: usize,
    /// Socket.IO sessions. Defaulted when absent (a node of an earlier version reporting).
    #[serde(default)]
    pub socketio: usize,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct HubStats {
    pub total: usize,
    pub by_type: ByTransport,
    pub unique_users: usize,
    pub subscriptions: usize,
    pub average_subscriptions: f64,
    pub rooms: RoomStats,
}

#[derive(Default)]
struct State {
    connections: HashMap<Uuid, Arc<Connection>>,
    users: HashMap<String, HashSet<Uuid>>,
    subscriptions: HashMap<Uuid, Arc<Subscription>>,
    index: SubscriptionIndex,
    rooms: RoomDirectory,
}

/// What one connection's subscriptions may weigh together (`SubscriptionSpec::weight`): a
/// hundred ordinary subscriptions, not a hundred of the largest.
pub const MAX_SUBSCRIPTION_BYTES: usize = 64 * 1024;

pub struct Hub {
    state: RwLock<State>,
    count: AtomicUsize,
    max_connections: usize,
    max_subscriptions: usize,
    outbox_limits: OutboxLimits,
    /// The connections' writers woken by fan-out and not yet run (the embedded log's pacing).
    woken: Arc<WokenWriters>,
    /// The highest `seq` fanned out; advanced under the read lock by `deliver`.
    head: AtomicU64,
    /// Room presence on the other nodes of a cluster; unset when embedded.
    cluster: OnceLock<Arc<dyn ClusterPresence>>,
    /// Typing notices to and from the other nodes of a cluster; unset when embedded.
    signals: OnceLock<Arc<dyn ClusterSignals>>,
    /// Who may see what: asked for every recipient of every event.
    access: Arc<Access>,
    /// Replays running at once (each holds a page of history and reads the store).
    replays: Arc<tokio::sync::Semaphore>,
}

/// Replays allowed at once unless `with_replay_limit` says otherwise.
pub const DEFAULT_CONCURRENT_REPLAYS: usize = 64;

impl Hub {
    pub fn new(
        max_connections: usize,
        max_subscriptions: usize,
        outbox_limits: OutboxLimits,
    ) -> Self {
        Self {
            state: RwLock::default(),
            count: AtomicUsize::new(0),
            max_connections,
            max_subscriptions,
            outbox_limits,
            woken: Arc::default(),
            head: AtomicU64::new(0),
            cluster: OnceLock::new(),
            signals: OnceLock::new(),
            access: Arc::default(),
            replays: Arc::new(tokio::sync::Semaphore::new(DEFAULT_CONCURRENT_REPLAYS)),
        }
    }

    /// At most `n` replays (resumes, room joins' history excepted) run at once; more are
    /// refused (`HubError::TooManyReplays`) until one ends.
    pub fn with_replay_limit(self, n: usize) -> Self {
        Self {
            replays: Arc::new(tokio::sync::Semaphore::new(n.max(1))),
            ..self
        }
    }

    /// The access rules deliveries follow (by default: no public rooms).
    pub fn with_access(self, access: Arc<Access>) -> Self {
        Self { access, ..self }
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    pub fn outbox_limits(&self) -> OutboxLimits {
        self.outbox_limits
    }

    /// The highest `seq` fanned out so far (or the store's last `seq` at start-up).
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Starts the fan-out head at the store's last `seq` (nothing newer has been fanned out).
    pub fn advance_head(&self, seq: u64) {
        self.head.fetch_max(seq, Ordering::AcqRel);
    }

    pub fn connection_count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Registers a connection, or refuses when the server is at its connection limit.
    pub fn connect(&self, transport: Transport) -> Result<Arc<Connection>, HubError> {
        if self.count.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return Err(HubError::Full(self.max_connections));
        }
        let conn = Arc::new(Connection::new(
            transport,
            Outbox::new(self.outbox_limits, self.woken.clone()),
        ));
        self.state.write().connections.insert(conn.id, conn.clone());
        Ok(conn)
    }

    /// Forgets a connection and everything it subscribed to. Idempotent.
    pub fn disconnect(&self, id: Uuid) {
        let mut s = self.state.write();
        let Some(conn) = s.connections.remove(&id) else {
            return;
        };
        self.count.fetch_sub(1, Ordering::AcqRel);
        for sub_id in conn.subscriptions.lock().drain(..) {
            if let Some(sub) = s.subscriptions.remove(&sub_id) {
                s.index.remove(&sub);
            }
        }
        if let Some(user) = conn.user_id() {
            remove_user_conn(&mut s.users, &user, id);
        }
        for mut left in s.rooms.leave_all(id) {
            self.cluster_left(&s.rooms, &mut left);
            announce_leave(&s.rooms, &left);
        }
        conn.outbox.close(CloseReason::NORMAL);
    }

    pub fn get(&self, id: Uuid) -> Option<Arc<Connection>> {
        self.state.read().connections.get(&id).cloned()
    }

    /// Binds a connection to an identity. Authenticating again as the same user replaces the
    /// identity (a fresh token, a later expiry); as another user is refused — the rooms,
    /// subscriptions and profile the connection holds were granted to the first.
    pub fn authenticate(&self, conn: &Connection, identity: Identity) -> Result<(), HubError> {
        let mut s = self.state.write();
        if !s.connections.contains_key(&conn.id) {
            return Err(HubError::NoConnection);
        }
        if let Some(old) = conn.user_id() {
            if old != identity.user_id {
                return Err(HubError::OtherUser(old));
            }
            remove_user_conn(&mut s.users, &old, conn.id);
        }
        s.users
            .entry(identity.user_id.clone())
            .or_default()
            .insert(conn.id);
        conn.plain_user.store(
            !identity.is_privileged() && identity.rooms.is_none(),
            Ordering::Relaxed,
        );
        *conn.identity.write() = Some(Box::new(identity));
        Ok(())
    }

    pub fn subscribe(
        &self,
        conn: &Arc<Connection>,
        spec: SubscriptionSpec,
    ) -> Result<Uuid, HubError> {
        // Weighed before the write lock, which holds up every fan-out.
        let weight = spec.weight();
        let mut s = self.state.write();
        if !s.connections.contains_key(&conn.id) {
            return Err(HubError::NoConnection);
        }
        let mut owned = conn.subscriptions.lock();
        self.admit_subscriptions(&s, &owned, 1, weight)?;
        let sub = Arc::new(Subscription {
            id: Uuid::new_v4(),
            spec,
            connection: conn.clone(),
            from_seq: AtomicU64::new(self.head()),
            weight,
        });
        owned.push(sub.id);
        s.index.insert(sub.clone());
        s.subscriptions.insert(sub.id, sub.clone());
        Ok(sub.id)
    }

    /// Whether a connection holding `owned` may add `count` subscriptions weighing `weight`: at
    /// most `max_subscriptions`, weighing at most `MAX_SUBSCRIPTION_BYTES` together.
    fn admit_subscriptions(
        &self,
        s: &State,
        owned: &[Uuid],
        count: usize,
        weight: usize,
    ) -> Result<(), HubError> {
        if owned.len() + count > self.max_subscriptions {
            return Err(HubError::TooManySubscriptions(self.max_subscriptions));
        }
        let held: usize = owned
            .iter()
            .filter_map(|id| s.subscriptions.get(id))
            .map(|sub| sub.weight)
            .sum();
        if held + weight > MAX_SUBSCRIPTION_BYTES {
            return Err(HubError::SubscriptionsTooLarge(MAX_SUBSCRIPTION_BYTES));
        }
        Ok(())
    }

    /// Removes one of the connection's own subscriptions.
    pub fn unsubscribe(&self, conn: &Connection, sub_id: Uuid) -> Result<(), HubError> {
        let mut s = self.state.write();
        let mut owned = conn.subscriptions.lock();
        let pos = owned
            .iter()
            .position(|id| *id == sub_id)
            .ok_or(HubError::NoSubscription)?;
        owned.swap_remove(pos);
        if let Some(sub) = s.subscriptions.remove(&sub_id) {
            s.index.remove(&sub);
        }
        Ok(())
    }

    /// Sends to every connection of a user; returns how many.
    pub fn send_to_user(&self, user_id: &str, item: &Outgoing) -> usize {
        let s = self.state.read();
        let Some(ids) = s.users.get(user_id) else {
            return 0;
        };
        ids.iter()
            .filter_map(|id| s.connections.get(id))
            .filter(|c| c.send(item.clone()))
            .count()
    }

    pub fn broadcast(&self, item: &Outgoing) -> usize {
        let s = self.state.read();
        s.connections
            .values()
            .filter(|c| c.send(item.clone()))
            .count()
    }

    /// Queues the heartbeat on every connection — a WebSocket sends it as a ping frame, an SSE
    /// stream as its keep-alive record — so that no connection needs a timer of its own;
    /// returns how many took it.
    pub fn heartbeat(&self) -> usize {
        let s = self.state.read();
        s.connections
            .values()
            .filter(|c| c.send(Outgoing::Ping))
            .count()
    }

    /// Closes every connection with no client traffic for longer than `max_idle_ms`.
    pub fn close_idle(&self, max_idle_ms: i64) -> usize {
        let now = Utc::now();
        let s = self.state.read();
        s.connections
            .values()
            .filter(|c| c.idle_ms(now) > max_idle_ms)
            .inspect(|c| c.outbox.close(CloseReason::IDLE))
            .count()
    }

    /// Closes every connection whose token has expired (`now` in Unix seconds).
    pub fn close_expired(&self, now: i64) -> usize {
        let s = self.state.read();
        s.connections
            .values()
            .filter(|c| c.expired(now))
            .inspect(|c| c.outbox.close(CloseReason::TOKEN_EXPIRED))
            .count()
    }

    pub fn close_all(&self, reason: CloseReason) {
        for c in self.state.read().connections.values() {
            c.outbox.close(reason.clone());
        }
    }

    pub fn stats(&self) -> HubStats {
        let s = self.state.read();
        let mut by_type = ByTransport::default();
        let mut subs = 0;
        for c in s.connections.values() {
            match c.transport {
                Transport::WebSocket => by_type.websocket += 1,
                Transport::Sse => by_type.sse += 1,
                Transport::LongPoll => by_type.longpoll += 1,
                Transport::SocketIo => by_type.socketio += 1,
            }
            subs += c.subscription_count();
        }
        let total = s.connections.len();
        HubStats {
            total,
            by_type,
            unique_users: s.users.len(),
            subscriptions: s.index.len(),
            average_subscriptions: if total == 0 {
                0.0
            } else {
                subs as f64 / total as f64
            },
            rooms: s.rooms.stats(),
        }
    }
}

fn remove_user_conn(users: &mut HashMap<String, HashSet<Uuid>>, user: &str, id: Uuid) {
    if let Some(set) = users.get_mut(user) {
        set.remove(&id);
        if set.is_empty() {
            users.remove(user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EncodedEvent, NewEvent};
    use crate::room::Member;
    use crate::subscription::Filters;
    use serde_json::json;

    /// A hub where every room is public: these tests are about fan-out (access has its own).
    fn open_hub(max_connections: usize, max_subscriptions: usize) -> Hub {
        let everyone = Arc::new(Access::new(vec!["*".into()]));
        Hub::new(max_connections, max_subscriptions, OutboxLimits::default()).with_access(everyone)
    }

    fn event(
        seq: u64,
        kind: &str,
        user: Option<&str>,
        room: Option<&str>,
        data: serde_json::Value,
    ) -> Arc<EncodedEvent> {
        EncodedEvent::new(
            NewEvent {
                kind: kind.into(),
                data,
                user_id: user.map(Into::into),
                room_id: room.map(Into::into),
                metadata: None,
            }
            .commit(seq, Utc::now()),
        )
    }

    fn spec(types: &[&str], filters: Filters) -> SubscriptionSpec {
        SubscriptionSpec::parse(
            &types.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            filters,
        )
        .unwrap()
    }

    fn deliver_one(hub: &Hub, e: Arc<EncodedEvent>) -> usize {
        hub.deliver(&[e])
    }

    fn queued(c: &Connection) -> usize {
        c.outbox.queued().0
    }

    #[test]
    fn patterns_and_filters_select_subscribers() {
        let hub = open_hub(100, 10);
        let all = hub.connect(Transport::WebSocket).unwrap();
        let chat = hub.connect(Transport::WebSocket).unwrap();
        let room = hub.connect(Transport::Sse).unwrap();
        let custom = hub.connect(Transport::Sse).unwrap();
        hub.subscribe(&all, spec(&["*"], Filters::default()))
            .unwrap();
        hub.subscribe(&chat, spec(&["chat.*"], Filters::default()))
            .unwrap();
        hub.subscribe(
            &room,
            spec(
                &["chat.message"],
                Filters {
                    room_id: Some("r1".into()),
                    ..Default::default()
                },
            ),
        )
        .unwrap();
        let mut c = serde_json::Map::new();
        c.insert("level".into(), json!("high"));
        hub.subscribe(
            &custom,
            spec(
                &["*"],
                Filters {
                    custom: c,
                    ..Default::default()
                },
            ),
        )
        .unwrap();

        assert_eq!(
            deliver_one(&hub, event(1, "chat.message", None, Some("r1"), json!({}))),
            3
        );
        assert_eq!(
            deliver_one(
                &hub,
                event(2, "chat.message", None, Some("r2"), json!({"level":"high"}))
            ),
            3
        );
        assert_eq!(
            deliver_one(
                &hub,
                event(3, "order.created", None, None, json!({"level":"low"}))
            ),
            1
        );
        assert_eq!(
            (queued(&all), queued(&chat), queued(&room), queued(&custom)),
            (3, 2, 1, 1)
        );
    }

    #[test]
    fn a_subscription_found_by_its_room_still_applies_its_other_filters() {
        let hub = open_hub(100, 10);
        let bobs = hub.connect(Transport::WebSocket).unwrap();
        let mut high = serde_json::Map::new();
        high.insert("level".into(), json!("high"));
        hub.subscribe(
            &bobs,
            spec(
                &["chat.*"],
                Filters {
                    room_id: Some("r1".into()),
                    user_id: Some("bob".into()),
                    custom: high,
                },
            ),
        )
        .unwrap();
        let high = json!({"level": "high"});
        // Right room; wrong user, wrong data, wrong room, then everything right.
        for (seq, user, room, data, reaches) in [
            (1, Some("eve"), "r1", high.clone(), 0),
            (2, Some("bob"), "r1", json!({"level": "low"}), 0),
            (3, Some("bob"), "r2", high.clone(), 0),
            (4, Some("bob"), "r1", high.clone(), 1),
        ] {
            let e = event(seq, "chat.message", user, Some(room), data);
            assert_eq!(deliver_one(&hub, e), reaches, "event {seq}");
        }
        assert_eq!(queued(&bobs), 1);
    }

    #[test]
    fn overlapping_subscriptions_deliver_once() {
        let hub = open_hub(100, 10);
        let c = hub.connect(Transport::WebSocket).unwrap();
        hub.subscribe(&c, spec(&["*", "a.*", "a.b"], Filters::default()))
            .unwrap();
        hub.subscribe(&c, spec(&["a.b"], Filters::default()))
            .unwrap();
        assert_eq!(deliver_one(&hub, event(1, "a.b", None, None, json!({}))), 1);
        assert_eq!(queued(&c), 1);
    }

    #[tokio::test]
    async fn a_batch_reaches_each_connection_once_per_event_in_seq_order() {
        let hub = open_hub(100, 10);
        let kind_is = |k: &str| Filters {
            custom: json!({ "kind": k }).as_object().unwrap().clone(),
            ..Filters::default()
        };
        // Two subscriptions that each match part of every run of the batch.
        let split = hub.connect(Transport::WebSocket).unwrap();
        hub.subscribe(&split, spec(&["chat.*"], kind_is("a")))
            .unwrap();
        hub.subscribe(&split, spec(&["chat.message"], kind_is("b")))
            .unwrap();
        let everything = hub.connect(Transport::WebSocket).unwrap();
        hub.subscribe(&everything, spec(&["*"], Filters::default()))
            .unwrap();
        // A member of room r that also subscribed to part of it, and sent one of its events.
        let member = hub.connect(Transport::WebSocket).unwrap();
        hub.join_room(&member, "r", Member::user("m"), false)
            .unwrap();
        hub.subscribe(&member, spec(&["chat.message"], kind_is("a")))
            .unwrap();

        // 150 events of one route in room r (runs longer than a fan-out run's 64), but the
        // 100th in room s; kinds a, b, c in turn; the 40th sent by the member.
        let kind = |seq: u64| ["a", "b", "c"][seq as usize % 3];
        let batch: Vec<_> = (1..=150)
            .map(|seq| {
                let room = if seq == 100 { "s" } else { "r" };
                let e = event(
                    seq,
                    "chat.message",
                    Some("u"),
                    Some(room),
                    json!({"kind": kind(seq)}),
                );
                match seq {
                    40 => EncodedEvent::skipping(e.event.clone(), Some(member.id)),
                    _ => e,
                }
            })
            .collect();
        let delivered = hub.deliver(&batch);

        let split_gets: Vec<u64> = (1..=150).filter(|&s| kind(s) != "c").collect();
        let member_gets: Vec<u64> = (1..=150).filter(|&s| s != 40 && s != 100).collect();
        assert_eq!(split.outbox.drain_event_seqs().await, split_gets);
        assert_eq!(
            everything.outbox.drain_event_seqs().await,
            (1..=150).collect::<Vec<_>>()
        );
        assert_eq!(member.outbox.drain_event_seqs().await, member_gets);
        assert_eq!(delivered, split_gets.len() + 150 + member_gets.len());
    }

    #[test]
    fn private_events_reach_only_their_user_and_admins() {
        let hub = open_hub(100, 10);
        let alice = hub.connect(Transport::WebSocket).unwrap();
        let bob = hub.connect(Transport::WebSocket).unwrap();
        let anon = hub.connect(Transport::WebSocket).unwrap();
        let admin = hub.connect(Transport::WebSocket).unwrap();
        hub.authenticate(&alice, Identity::user("alice")).unwrap();
        hub.authenticate(&bob, Identity::user("bob")).unwrap();
        hub.authenticate(&admin, Identity::with_role("ops", crate::Role::Admin))
            .unwrap();
        for c in [&alice, &bob, &anon, &admin] {
            hub.subscribe(c, spec(&["*"], Filters::default())).unwrap();
        }
        assert_eq!(
            deliver_one(
                &hub,
                event(1, "user.notification", Some("alice"), None, json!({}))
            ),
            2
        );
        assert_eq!(
            (queued(&alice), queued(&bob), queued(&anon), queued(&admin)),
            (1, 0, 0, 1)
        );
    }

    /// A connection's subscriptions are bounded in bytes as well as in number: the largest
    /// allowed subscriptions run out of budget long before the count does.
    #[test]
    fn subscriptions_are_bounded_in_bytes_per_connection() {
        let hub = open_hub(10, 1000);
        let conn = hub.connect(Transport::WebSocket).unwrap();
        let types: Vec<String> = (0..crate::subscription::MAX_PATTERNS)
            .map(|i| format!("{i:0>3}.{}", "t".repeat(120)))
            .collect();
        let mut custom = serde_json::Map::new();
        custom.insert("k".into(), json!("v".repeat(900)));
        let big = || {
            let filters = Filters {
                custom: custom.clone(),
                ..Filters::default()
            };
            SubscriptionSpec::parse(&types, filters).unwrap()
        };
        let mut accepted = 0;
        let refused = loop {
            match hub.subscribe(&conn, big()) {
                Ok(_) => accepted += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(
            refused,
            HubError::SubscriptionsTooLarge(MAX_SUBSCRIPTION_BYTES)
        );
        assert!((3..20).contains(&accepted), "{accepted}");
        // Small ones still fit in what is left, up to the budget.
        assert!(
            hub.subscribe(&conn, spec(&["a.b"], Filters::default()))
                .is_ok()
        );
    }

    #[test]
    fn disconnect_cleans_everything_and_limits_hold() {
        let hub = open_hub(2, 1);
        let a = hub.connect(Transport::WebSocket).unwrap();
        let _b = hub.connect(Transport::Sse).unwrap();
        assert_eq!(hub.connect(Transport::Sse).unwrap_err(), HubError::Full(2));
        hub.authenticate(&a, Identity::user("alice")).unwrap();
        let sub = hub.subscribe(&a, spec(&["*"], Filters::default())).unwrap();
        assert_eq!(
            hub.subscribe(&a, spec(&["x"], Filters::default()))
                .unwrap_err(),
            HubError::TooManySubscriptions(1)
        );
        assert_eq!(hub.stats().subscriptions, 1);
        hub.disconnect(a.id);
        hub.disconnect(a.id);
        let st = hub.stats();
        assert_eq!((st.total, st.unique_users, st.subscriptions), (1, 0, 0));
        assert_eq!(
            hub.unsubscribe(&a, sub).unwrap_err(),
            HubError::NoSubscription
        );
        assert!(hub.connect(Transport::Sse).is_ok());
    }

    #[test]
    fn send_to_user_and_broadcast() {
        let hub = open_hub(100, 10);
        let a1 = hub.connect(Transport::WebSocket).unwrap();
        let a2 = hub.connect(Transport::Sse).unwrap();
        let _b = hub.connect(Transport::Sse).unwrap();
        hub.authenticate(&a1, Identity::user("alice")).unwrap();
        hub.authenticate(&a2, Identity::user("alice")).unwrap();
        let m = Outgoing::Message(crate::wire::ServerMessage::new("notification", None));
        assert_eq!(hub.send_to_user("alice", &m), 2);
        assert_eq!(hub.send_to_user("nobody", &m), 0);
        assert_eq!(hub.broadcast(&m), 3);
    }
}
