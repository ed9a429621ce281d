//! The fan-out of committed batches (`Hub::deliver`, and the hub as the logs' `Fanout`), taken
//! in runs of events with the same route (`Delivery`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use uuid::Uuid;

use super::{Connection, Hub, State};
use crate::access::{self, Access};
use crate::event::EncodedEvent;
use crate::fanout::Fanout;
use crate::outbox::{OutboxLimits, Outgoing, Pushed, WokenTotals};

impl Hub {
    /// Queues a committed batch, in `seq` order, on every connection with a matching
    /// subscription that may see each event. Writers are woken only after the whole batch is
    /// queued, so each connection writes what it got with one flush. Returns how many
    /// (event, connection) deliveries were queued.
    pub fn deliver(&self, batch: &[Arc<EncodedEvent>]) -> usize {
        let (delivered, to_wake) = {
            let s = self.state.read();
            let mut fanout = Delivery {
                limits: self.outbox_limits,
                access: &self.access,
                open: false,
                open_to_users: false,
                delivered: 0,
                to_wake: Vec::new(),
                recipients: Vec::new(),
                slots: HashMap::new(),
            };
            for run in batch.chunk_by(|a, b| a.event.same_route(&b.event)) {
                for run in run.chunks(Delivery::MAX_RUN) {
                    fanout.route(&s, run);
                }
            }
            // Still under the read lock: a replay registered after this batch sees it as
            // fanned out (and finds it in the store, which committed it first).
            if let Some(last) = batch.last() {
                self.head.fetch_max(last.event.seq, Ordering::AcqRel);
            }
            (fanout.delivered, fanout.to_wake)
        };
        for conn in to_wake {
            conn.outbox.wake();
        }
        delivered
    }
}

/// The log's fan-out: deliveries, and the pacing of the writers they wake.
impl Fanout for Hub {
    fn deliver(&self, batch: &[Arc<EncodedEvent>]) -> usize {
        Hub::deliver(self, batch)
    }

    fn woken(&self) -> WokenTotals {
        self.woken.totals()
    }

    fn settle(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.woken.settle())
    }
}

/// The fan-out of one batch: what was queued, and which writers to wake at the end.
///
/// The batch is taken in runs of consecutive events with the same type, room and user (a
/// busy room's messages): such events have the same candidate recipients — subscriptions
/// found by type, room and user, the room's members, the personal room's owner, the same
/// privacy — so they are looked up once per run, and each recipient gets the run's events it
/// matches (a bit per event) in one push, under one lock of its outbox. Looking up and
/// queuing per event and recipient was ~14 % of a busy room's fan-out.
struct Delivery<'s> {
    limits: OutboxLimits,
    access: &'s Access,
    delivered: usize,
    to_wake: Vec<Arc<Connection>>,
    /// Whether the current run is for everyone: what an anonymous client may read, every
    /// identity may (`Access::may_read`), so its recipients need no check of their own.
    open: bool,
    /// Whether every user without a `rooms` claim may read the current run.
    open_to_users: bool,
    /// The current run's recipients, each with the run's events it matches (bit i: event i).
    /// Borrowed from the hub's state, which the fan-out holds read-locked.
    recipients: Vec<(&'s Arc<Connection>, u64)>,
    /// Where each recipient is in `recipients`, built only once a connection turns up twice
    /// in a run (several subscriptions, or a subscription and a room): rare, so most runs
    /// hash nothing.
    slots: HashMap<Uuid, usize>,
}

impl<'s> Delivery<'s> {
    /// The longest run, so that a run's events fit the bits of a `u64`.
    const MAX_RUN: usize = 64;

    /// Queues `run` (events of one route, in `seq` order) on every connection that may see
    /// them: each connection once per event, in order, never the event's own sender.
    fn route(&mut self, s: &'s State, run: &[Arc<EncodedEvent>]) {
        let first = &run[0].event;
        self.open = self.access.may_read(None, first);
        self.open_to_users = self.open || self.access.open_to_users(first);
        let every = u64::MAX >> (64 - run.len());
        s.index.for_each_route_match(first, |sub| {
            let filters = &sub.spec.filters;
            let matched = match filters.custom.is_empty() {
                true => every,
                false => bits(run, |e| filters.matches_data(&e.event)),
            };
            self.add(&sub.connection, matched, run);
        });
        if let Some(room) = &first.room_id {
            for conn in s.rooms.connections(room) {
                self.add(conn, every, run);
            }
            let owner = access::personal_owner(room).and_then(|u| s.users.get(u));
            for id in owner.into_iter().flatten() {
                if let Some(conn) = s.connections.get(id) {
                    self.add(conn, every, run);
                }
            }
        }
        let mut recipients = std::mem::take(&mut self.recipients);
        for (conn, matched) in recipients.drain(..) {
            self.offer(conn, run, matched);
        }
        self.recipients = recipients;
        self.slots.clear();
    }

    /// Notes that `conn` matches the events `matched` of `run`. A run of one event is offered
    /// at once (nothing to merge: the first match is the only one that counts); a longer run
    /// is offered once every recipient's matches are known.
    fn add(&mut self, conn: &'s Arc<Connection>, matched: u64, run: &[Arc<EncodedEvent>]) {
        if matched == 0 {
            return;
        }
        // The run's last `seq` marks the connections it found: no other run has it. Only the
        // fan-out writes `last_delivered`, one batch at a time (the log's `Fanout`): a
        // plain load and store, no atomic read-modify-write.
        let marker = run[run.len() - 1].event.seq;
        if conn.last_delivered.load(Ordering::Relaxed) != marker {
            conn.last_delivered.store(marker, Ordering::Relaxed);
            if run.len() == 1 {
                self.offer(conn, run, matched);
                return;
            }
            if !self.slots.is_empty() {
                self.slots.insert(conn.id, self.recipients.len());
            }
            self.recipients.push((conn, matched));
            return;
        }
        if run.len() == 1 {
            return;
        }
        if self.slots.is_empty() {
            let slots = self.recipients.iter().enumerate();
            self.slots = slots.map(|(i, (c, _))| (c.id, i)).collect();
        }
        self.recipients[self.slots[&conn.id]].1 |= matched;
    }

    /// Queues the events `matched` of `run` on `conn`, but not those it sent itself, and none
    /// if it may not see them (privacy depends on the type, room and user only: the same for
    /// the whole run).
    fn offer(&mut self, conn: &Arc<Connection>, run: &[Arc<EncodedEvent>], mut matched: u64) {
        matched &= !bits(run, |e| e.skip == Some(conn.id));
        let allowed = self.open
            || (self.open_to_users && conn.plain_user.load(Ordering::Relaxed))
            || conn.may_see(&run[0], self.access);
        if matched == 0 || !allowed {
            return;
        }
        let events = (0..run.len())
            .filter(|i| matched & (1 << i) != 0)
            .map(|i| &run[i]);
        if conn.is_holding() {
            // A resume is replaying history: hold live events until it is queued.
            for event in events {
                self.delivered += usize::from(conn.hold(event, self.limits));
            }
        } else if let Pushed::Queued { wake } = conn
            .outbox
            .push_all_deferred(events.map(|e| Outgoing::Event(e.clone())))
        {
            self.delivered += matched.count_ones() as usize;
            if wake {
                self.to_wake.push(conn.clone());
            }
        }
    }
}

/// The events of `run` (at most 64) for which `f` holds, as bits.
fn bits(run: &[Arc<EncodedEvent>], f: impl Fn(&EncodedEvent) -> bool) -> u64 {
    run.iter()
        .enumerate()
        .filter(|(_, e)| f(e))
        .fold(0, |mask, (i, _)| mask | 1 << i)
}
