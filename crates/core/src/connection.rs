//! A connection as the hub knows it, whatever carries it (WebSocket, SSE, a held long-poll):
//! its outbox, who it is, what it subscribed to, and the live events held aside while a
//! replay (a resume, a room join's history) is queued before them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use uuid::Uuid;

use crate::access::Access;
use crate::event::EncodedEvent;
use crate::identity::Identity;
use crate::outbox::{Outbox, OutboxLimits, Outgoing};
use crate::wire::CloseReason;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    WebSocket,
    Sse,
    /// A held `GET /api/realtime/poll`: registered for the request's lifetime, so it counts
    /// against `max_connections` and its matches arrive through fan-out like any other.
    LongPoll,
    /// An Engine.IO session carrying Socket.IO, over long-polling or WebSocket.
    #[serde(rename = "socketio")]
    SocketIo,
}

#[derive(Debug)]
pub struct Connection {
    pub id: Uuid,
    pub transport: Transport,
    pub outbox: Outbox,
    /// Boxed, like `held`: most connections never authenticate or resume, and every byte
    /// here is paid by each open connection.
    pub(crate) identity: RwLock<Option<Box<Identity>>>,
    /// The identity is a user without a `rooms` claim: most recipients, whose check the
    /// fan-out can answer once per run (`Access::open_to_users`) instead of under the lock.
    pub(crate) plain_user: AtomicBool,
    pub(crate) subscriptions: Mutex<Vec<Uuid>>,
    /// The last `seq` queued here, so overlapping subscriptions deliver an event once.
    pub(crate) last_delivered: AtomicU64,
    last_activity_ms: AtomicI64,
    /// Set (under the hub's write lock) while a resume replays history: live matches are held
    /// in `held` instead of the outbox until the replay has been queued.
    replaying: AtomicBool,
    held: Mutex<Option<Box<Held>>>,
}

impl Connection {
    pub(crate) fn new(transport: Transport, outbox: Outbox) -> Self {
        Self {
            id: Uuid::new_v4(),
            transport,
            outbox,
            identity: RwLock::new(None),
            plain_user: AtomicBool::new(false),
            subscriptions: Mutex::new(Vec::new()),
            last_delivered: AtomicU64::new(0),
            last_activity_ms: AtomicI64::new(Utc::now().timestamp_millis()),
            replaying: AtomicBool::new(false),
            held: Mutex::new(None),
        }
    }

    pub fn identity(&self) -> Option<Identity> {
        self.identity.read().as_deref().cloned()
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

    pub fn has_subscription(&self, id: Uuid) -> bool {
        self.subscriptions.lock().contains(&id)
    }

    /// Whether this connection may receive the event, as `access` decides.
    pub fn may_see(&self, encoded: &EncodedEvent, access: &Access) -> bool {
        access.may_read(self.identity.read().as_deref(), &encoded.event)
    }

    /// Whether the token this connection authenticated with has expired (`now` in Unix
    /// seconds, past its leeway).
    pub fn expired(&self, now: i64) -> bool {
        self.identity
            .read()
            .as_ref()
            .and_then(|i| i.expires_at)
            .is_some_and(|exp| exp < now)
    }

    pub fn send(&self, item: Outgoing) -> bool {
        self.outbox.push(item)
    }
}

/// Live events that arrived while the connection was replaying; bounded like the outbox.
#[derive(Debug, Default)]
struct Held {
    events: Vec<Arc<EncodedEvent>>,
    bytes: usize,
    overflowed: bool,
}

impl Connection {
    /// Whether live events are being held aside for a replay.
    pub(crate) fn is_holding(&self) -> bool {
        self.replaying.load(Ordering::Relaxed)
    }

    /// From now on, live events for this connection are held (called under the hub's write
    /// lock, between two fan-outs).
    pub(crate) fn start_holding(&self) {
        *self.held.lock() = None;
        self.replaying.store(true, Ordering::Relaxed);
    }

    /// Back to live delivery; returns what was held meanwhile (called under the write lock).
    pub(crate) fn stop_holding(&self) -> Vec<Arc<EncodedEvent>> {
        let held = self.held.lock().take();
        self.replaying.store(false, Ordering::Relaxed);
        held.map(|h| h.events).unwrap_or_default()
    }

    /// Holds a live event aside during a replay. Overflowing the bound closes the connection as
    /// a slow consumer (it can resume again).
    pub(crate) fn hold(&self, event: &Arc<EncodedEvent>, limits: OutboxLimits) -> bool {
        let mut held = self.held.lock();
        let h = held.get_or_insert_default();
        if h.overflowed {
            return false;
        }
        let weight = event.json().len() + 32;
        if h.events.len() >= limits.max_messages || h.bytes + weight > limits.max_bytes {
            **h = Held {
                overflowed: true,
                ..Held::default()
            };
            drop(held);
            self.outbox.close(CloseReason::SLOW_CONSUMER);
            return false;
        }
        h.bytes += weight;
        h.events.push(event.clone());
        true
    }
}
