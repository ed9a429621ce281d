//! The connection manager: every live connection (WebSocket or SSE), who it belongs to, what
//! it subscribed to, and the fan-out of committed events into their outboxes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use uuid::Uuid;

use crate::event::EncodedEvent;
use crate::identity::Identity;
use crate::outbox::{CloseReason, Outbox, OutboxLimits, Outgoing};
use crate::subscription::{Subscription, SubscriptionIndex, SubscriptionSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    WebSocket,
    Sse,
}

#[derive(Debug)]
pub struct Connection {
    pub id: Uuid,
    pub transport: Transport,
    pub connected_at: DateTime<Utc>,
    pub outbox: Outbox,
    identity: RwLock<Option<Identity>>,
    subscriptions: Mutex<Vec<Uuid>>,
    /// The last `seq` queued here, so overlapping subscriptions deliver an event once.
    last_delivered: AtomicU64,
    last_activity_ms: AtomicI64,
}

impl Connection {
    pub fn identity(&self) -> Option<Identity> {
        self.identity.read().clone()
    }

    pub fn user_id(&self) -> Option<String> {
        self.identity.read().as_ref().map(|i| i.user_id.clone())
    }

    /// Records traffic from the client (or a successful write, for one-way transports).
    pub fn touch(&self) {
        self.last_activity_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    pub fn idle_ms(&self, now: DateTime<Utc>) -> i64 {
        now.timestamp_millis() - self.last_activity_ms.load(Ordering::Relaxed)
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.lock().len()
    }

    fn may_see(&self, encoded: &EncodedEvent) -> bool {
        let e = &encoded.event;
        !e.is_private()
            || self
                .identity
                .read()
                .as_ref()
                .is_some_and(|i| i.may_read_private_of(e.user_id.as_deref()))
    }

    pub fn send(&self, item: Outgoing) -> bool {
        self.outbox.push(item)
    }
}

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
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ByTransport {
    pub websocket: usize,
    pub sse: usize,
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
}

/// A connection as the operator sees it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionInfo {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub transport: Transport,
    pub user_id: Option<String>,
    pub subscriptions: usize,
    #[serde(serialize_with = "crate::event::iso_millis")]
    pub connected_at: DateTime<Utc>,
}

#[derive(Default)]
struct State {
    connections: HashMap<Uuid, Arc<Connection>>,
    users: HashMap<String, HashSet<Uuid>>,
    subscriptions: HashMap<Uuid, Arc<Subscription>>,
    index: SubscriptionIndex,
}

pub struct Hub {
    state: RwLock<State>,
    count: AtomicUsize,
    max_connections: usize,
    max_subscriptions: usize,
    outbox_limits: OutboxLimits,
}

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
        }
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
        let conn = Arc::new(Connection {
            id: Uuid::new_v4(),
            transport,
            connected_at: Utc::now(),
            outbox: Outbox::new(self.outbox_limits),
            identity: RwLock::new(None),
            subscriptions: Mutex::new(Vec::new()),
            last_delivered: AtomicU64::new(0),
            last_activity_ms: AtomicI64::new(Utc::now().timestamp_millis()),
        });
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
        conn.outbox.close(CloseReason::NORMAL);
    }

    pub fn get(&self, id: Uuid) -> Option<Arc<Connection>> {
        self.state.read().connections.get(&id).cloned()
    }

    /// Binds a connection to an identity (re-authenticating replaces the previous one).
    pub fn authenticate(&self, conn: &Connection, identity: Identity) {
        let mut s = self.state.write();
        if !s.connections.contains_key(&conn.id) {
            return;
        }
        if let Some(old) = conn.user_id() {
            remove_user_conn(&mut s.users, &old, conn.id);
        }
        s.users
            .entry(identity.user_id.clone())
            .or_default()
            .insert(conn.id);
        *conn.identity.write() = Some(identity);
    }

    pub fn subscribe(
        &self,
        conn: &Arc<Connection>,
        spec: SubscriptionSpec,
    ) -> Result<Uuid, HubError> {
        let mut s = self.state.write();
        if !s.connections.contains_key(&conn.id) {
            return Err(HubError::NoConnection);
        }
        let mut owned = conn.subscriptions.lock();
        if owned.len() >= self.max_subscriptions {
            return Err(HubError::TooManySubscriptions(self.max_subscriptions));
        }
        let sub = Arc::new(Subscription {
            id: Uuid::new_v4(),
            spec,
            connection: conn.clone(),
        });
        owned.push(sub.id);
        s.index.insert(sub.clone());
        s.subscriptions.insert(sub.id, sub.clone());
        Ok(sub.id)
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

    /// Queues a committed event on every connection with a matching subscription that may see
    /// it. Returns how many connections it was queued on.
    pub fn deliver(&self, event: &Arc<EncodedEvent>) -> usize {
        let seq = event.event.seq;
        let mut delivered = 0;
        let s = self.state.read();
        s.index.for_each_match(&event.event, |sub| {
            let conn = &sub.connection;
            if conn.last_delivered.load(Ordering::Relaxed) == seq || !conn.may_see(event) {
                return;
            }
            conn.last_delivered.store(seq, Ordering::Relaxed);
            if conn.send(Outgoing::Event(event.clone())) {
                delivered += 1;
            }
        });
        delivered
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
        }
    }

    /// Connections per user, most connected first.
    pub fn users(&self) -> Vec<(String, usize)> {
        let s = self.state.read();
        let mut v: Vec<_> = s.users.iter().map(|(u, c)| (u.clone(), c.len())).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.state
            .read()
            .connections
            .values()
            .map(|c| ConnectionInfo {
                id: c.id,
                transport: c.transport,
                user_id: c.user_id(),
                subscriptions: c.subscription_count(),
                connected_at: c.connected_at,
            })
            .collect()
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
    use crate::event::NewEvent;
    use crate::subscription::Filters;
    use serde_json::json;

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

    fn queued(c: &Connection) -> usize {
        c.outbox.queued().0
    }

    #[test]
    fn patterns_and_filters_select_subscribers() {
        let hub = Hub::new(100, 10, OutboxLimits::default());
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
            hub.deliver(&event(1, "chat.message", None, Some("r1"), json!({}))),
            3
        );
        assert_eq!(
            hub.deliver(&event(
                2,
                "chat.message",
                None,
                Some("r2"),
                json!({"level":"high"})
            )),
            3
        );
        assert_eq!(
            hub.deliver(&event(
                3,
                "order.created",
                None,
                None,
                json!({"level":"low"})
            )),
            1
        );
        assert_eq!(
            (queued(&all), queued(&chat), queued(&room), queued(&custom)),
            (3, 2, 1, 1)
        );
    }

    #[test]
    fn overlapping_subscriptions_deliver_once() {
        let hub = Hub::new(100, 10, OutboxLimits::default());
        let c = hub.connect(Transport::WebSocket).unwrap();
        hub.subscribe(&c, spec(&["*", "a.*", "a.b"], Filters::default()))
            .unwrap();
        hub.subscribe(&c, spec(&["a.b"], Filters::default()))
            .unwrap();
        assert_eq!(hub.deliver(&event(1, "a.b", None, None, json!({}))), 1);
        assert_eq!(queued(&c), 1);
    }

    #[test]
    fn private_events_reach_only_their_user_and_admins() {
        let hub = Hub::new(100, 10, OutboxLimits::default());
        let alice = hub.connect(Transport::WebSocket).unwrap();
        let bob = hub.connect(Transport::WebSocket).unwrap();
        let anon = hub.connect(Transport::WebSocket).unwrap();
        let admin = hub.connect(Transport::WebSocket).unwrap();
        hub.authenticate(&alice, Identity::user("alice"));
        hub.authenticate(&bob, Identity::user("bob"));
        hub.authenticate(
            &admin,
            Identity {
                user_id: "ops".into(),
                role: crate::Role::Admin,
            },
        );
        for c in [&alice, &bob, &anon, &admin] {
            hub.subscribe(c, spec(&["*"], Filters::default())).unwrap();
        }
        assert_eq!(
            hub.deliver(&event(
                1,
                "user.notification",
                Some("alice"),
                None,
                json!({})
            )),
            2
        );
        assert_eq!(
            (queued(&alice), queued(&bob), queued(&anon), queued(&admin)),
            (1, 0, 0, 1)
        );
    }

    #[test]
    fn disconnect_cleans_everything_and_limits_hold() {
        let hub = Hub::new(2, 1, OutboxLimits::default());
        let a = hub.connect(Transport::WebSocket).unwrap();
        let _b = hub.connect(Transport::Sse).unwrap();
        assert_eq!(hub.connect(Transport::Sse).unwrap_err(), HubError::Full(2));
        hub.authenticate(&a, Identity::user("alice"));
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
        let hub = Hub::new(100, 10, OutboxLimits::default());
        let a1 = hub.connect(Transport::WebSocket).unwrap();
        let a2 = hub.connect(Transport::Sse).unwrap();
        let _b = hub.connect(Transport::Sse).unwrap();
        hub.authenticate(&a1, Identity::user("alice"));
        hub.authenticate(&a2, Identity::user("alice"));
        let m = Outgoing::Message(crate::protocol::ServerMessage::new("notification", None));
        assert_eq!(hub.send_to_user("alice", &m), 2);
        assert_eq!(hub.send_to_user("nobody", &m), 0);
        assert_eq!(hub.broadcast(&m), 3);
    }
}
