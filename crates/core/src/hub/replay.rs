//! Replay holding: a resume (or a room join's history) registers its subscriptions and reads
//! the fan-out head under the write lock (`begin_replay`); live events for the connection are
//! then held aside (`Connection::hold`) until the replayed history is queued (`end_replay`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use uuid::Uuid;

use super::{Hub, HubError};
use crate::connection::Connection;
use crate::outbox::Outgoing;
use crate::subscription::{Subscription, SubscriptionSpec};

/// What `Hub::begin_replay` registered.
#[derive(Debug)]
pub struct ReplayStart {
    /// The new subscriptions, in the order of the specs.
    pub ids: Vec<Uuid>,
    /// The fan-out head when they were registered: every event up to it was fanned out before
    /// they existed (so it is in the store), every later one is held for the connection.
    pub head: u64,
    /// The connection's other subscriptions at that moment.
    pub others: Vec<Arc<Subscription>>,
}

impl Hub {
    /// A place among the replays running at once, held until the replay ends.
    pub fn replay_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, HubError> {
        self.replays
            .clone()
            .try_acquire_owned()
            .map_err(|_| HubError::TooManyReplays)
    }

    /// Adds subscriptions that resume after `since`: from now until `end_replay`, the
    /// connection's live matches (of every subscription) are held aside, and the caller replays
    /// the store's events in `(since, head]`. Registering and reading the head happen under
    /// the write lock, i.e. between two fan-outs, which is what makes the seam exact.
    pub fn begin_replay(
        &self,
        conn: &Arc<Connection>,
        specs: Vec<SubscriptionSpec>,
        since: u64,
    ) -> Result<ReplayStart, HubError> {
        // Weighed before the write lock, which holds up every fan-out.
        let weights: Vec<usize> = specs.iter().map(SubscriptionSpec::weight).collect();
        let mut s = self.state.write();
        if !s.connections.contains_key(&conn.id) {
            return Err(HubError::NoConnection);
        }
        if conn.is_holding() {
            return Err(HubError::Replaying);
        }
        let mut owned = conn.subscriptions.lock();
        self.admit_subscriptions(&s, &owned, specs.len(), weights.iter().sum())?;
        let others = owned
            .iter()
            .filter_map(|id| s.subscriptions.get(id).cloned())
            .collect();
        let mut ids = Vec::with_capacity(specs.len());
        for (spec, weight) in specs.into_iter().zip(weights) {
            let sub = Arc::new(Subscription {
                id: Uuid::new_v4(),
                spec,
                connection: conn.clone(),
                from_seq: AtomicU64::new(since),
                weight,
            });
            owned.push(sub.id);
            ids.push(sub.id);
            s.index.insert(sub.clone());
            s.subscriptions.insert(sub.id, sub);
        }
        conn.start_holding();
        Ok(ReplayStart {
            ids,
            head: self.head(),
            others,
        })
    }

    /// Records where a resumed subscription's delivery really started (a resume that had to
    /// start earlier than asked), so later replays on its connection do not repeat its events.
    pub fn set_start(&self, sub_id: Uuid, from_seq: u64) {
        if let Some(sub) = self.state.read().subscriptions.get(&sub_id) {
            sub.from_seq.store(from_seq, Ordering::Relaxed);
        }
    }

    /// Ends a replay whose events up to `replayed_to` are queued: queues the held live events
    /// after it and switches the connection back to live delivery, atomically with fan-out.
    /// `u64::MAX` drops what was held (an abandoned replay; the connection is being closed).
    pub fn end_replay(&self, conn: &Connection, replayed_to: u64) {
        let _s = self.state.write();
        for e in conn.stop_holding() {
            if e.event.seq > replayed_to && !conn.send(Outgoing::Event(e)) {
                break;
            }
        }
    }
}
