//! The log seam (`Log`): assigns `seq`, makes each event durable, fans it out to this node's
//! subscribers and acknowledges its publisher — in that order, so nothing is delivered or
//! acknowledged that a crash could lose. `LocalLog` is the embedded implementation; the Redis
//! one (crate `herald-redis`) shares the sequence between nodes.
//!
//! `LocalLog`: one task assigns `seq`, commits each batch to the store (group commit: whatever
//! queued while the previous batch was committing goes in the next transaction), then fans the
//! batch out and acknowledges the publishers. That next transaction is handed to the store
//! before the fan-out, so the store commits while the runtime sends — except after a round that
//! fed busy rooms: then the next batch is committed once the writers that round woke have run
//! (`Fanout::settle`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::event::{EncodedEvent, NewEvent};
use crate::fanout::Fanout;
use crate::store::{EventStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the server is shutting down")]
    Closed,
    /// The shared log (Redis) could not be reached, or did not confirm the commit in time.
    #[error("event log unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Log: Send + Sync + 'static {
    /// Resolves once the event is durable and has been handed to every local subscriber.
    async fn publish(&self, event: NewEvent) -> Result<Arc<EncodedEvent>, PublishError> {
        self.publish_skipping(event, None).await
    }

    /// Publishes an event that the connection `skip` does not receive (it sent it).
    async fn publish_skipping(
        &self,
        event: NewEvent,
        skip: Option<Uuid>,
    ) -> Result<Arc<EncodedEvent>, PublishError> {
        let mut committed = self.publish_all(vec![event], skip).await?;
        Ok(committed
            .pop()
            .expect("one committed event per event published"))
    }

    /// Publishes `events` as one unit: they get consecutive `seq`s in their order, and are
    /// committed — and acknowledged — all together or not at all. `skip` does not receive
    /// them. At most `MAX_PUBLISH_ALL` events.
    async fn publish_all(
        &self,
        events: Vec<NewEvent>,
        skip: Option<Uuid>,
    ) -> Result<Vec<Arc<EncodedEvent>>, PublishError>;

    /// Stops accepting publishes and waits until every accepted one is committed.
    async fn shutdown(&self);
}

type Ack = oneshot::Sender<Result<Vec<Arc<EncodedEvent>>, PublishError>>;
/// Events to commit together, the connection that must not receive them back, and their
/// publisher's ack.
type Publish = (Vec<NewEvent>, Option<Uuid>, Ack);

/// How many events one transaction holds before the sequencer stops taking more (it may
/// exceed this by less than one `publish_all`). Larger batches amortise the commit; this bound
/// keeps a single batch's latency small.
pub const MAX_BATCH: usize = 2048;
/// How many events one `publish_all` may carry.
pub const MAX_PUBLISH_ALL: usize = 1000;
const QUEUE: usize = 16 * 1024;

pub struct LocalLog {
    tx: Mutex<Option<mpsc::Sender<Publish>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl LocalLog {
    /// Starts the sequencer after the highest `seq` the store has ever committed; committed
    /// batches go to `fanout`, whose pacing sets when the next one is committed.
    pub async fn start(
        store: Arc<dyn EventStore>,
        fanout: Arc<dyn Fanout>,
    ) -> Result<Self, StoreError> {
        let next_seq = store.last_seq().await? + 1;
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(store, fanout, rx, next_seq));
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            task: Mutex::new(Some(task)),
        })
    }
}

#[async_trait]
impl Log for LocalLog {
    async fn publish_all(
        &self,
        events: Vec<NewEvent>,
        skip: Option<Uuid>,
    ) -> Result<Vec<Arc<EncodedEvent>>, PublishError> {
        debug_assert!(events.len() <= MAX_PUBLISH_ALL);
        let tx = self.tx.lock().clone().ok_or(PublishError::Closed)?;
        let (ack, done) = oneshot::channel();
        tx.send((events, skip, ack))
            .await
            .map_err(|_| PublishError::Closed)?;
        done.await.map_err(|_| PublishError::Closed)?
    }

    async fn shutdown(&self) {
        self.tx.lock().take();
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

async fn run(
    store: Arc<dyn EventStore>,
    fanout: Arc<dyn Fanout>,
    mut rx: mpsc::Receiver<Publish>,
    mut next_seq: u64,
) {
    let mut pending = Vec::new();
    let mut last_batch = 0;
    // The previous round gave the writers it woke at least two frames each.
    let mut concentrated = false;
    let mut stamped = DateTime::<Utc>::MIN_UTC;
    // A round already handed to the store while the one before was fanned out.
    let mut next: Option<Round> = None;
    loop {
        let round = match next.take() {
            Some(round) => round,
            None => {
                let Some(first) = rx.recv().await else { break };
                let mut taken = first.0.len();
                pending.push(first);
                take_ready(&mut rx, &mut pending, &mut taken);
                // Only under load: at a low rate, publishes come one at a time, and the yield
                // cost CPU and latency (measured: 1 000 msgs/s in 100 rooms, 3 of 4 pairs).
                if last_batch > 1 || pending.len() > 1 {
                    gather(&mut rx, &mut pending, &mut taken).await;
                }
                // Under load, when the previous round gave its writers several frames each (a
                // busy room), they run first: what their clients send back meanwhile (the next
                // publishes of a window) joins this batch, so the next round writes more
                // frames per send (fan-out, 64 in flight: about a fifth less server CPU per
                // delivered message). When each got about one (many small rooms), a bigger
                // batch only wakes more writers, and waiting would only stop the commit
                // overlapping their writes (measured: up to 12 % fewer messages per second).
                // docs/performance.md.
                if last_batch > 1 && concentrated {
                    fanout.settle().await;
                    take_ready(&mut rx, &mut pending, &mut taken);
                }
                Round::start(&*store, &mut pending, next_seq, &mut stamped)
            }
        };
        let Round {
            commit,
            batch,
            acks,
        } = round;
        last_batch = acks.len();
        match commit.await {
            Ok(()) => {
                next_seq += batch.len() as u64;
                // What queued during this commit goes to the store before this round is fanned
                // out, so that the store commits while the runtime sends — unless the round
                // before fed busy rooms, whose next batch waits for their writers (above).
                if !concentrated {
                    let mut taken = 0;
                    take_ready(&mut rx, &mut pending, &mut taken);
                    if !pending.is_empty() {
                        next = Some(Round::start(&*store, &mut pending, next_seq, &mut stamped));
                    }
                }
                let before = fanout.woken();
                fanout.deliver(&batch);
                concentrated = fanout.woken().frames_per_writer_since(before, 2);
                let mut from = 0;
                for (ack, to) in acks {
                    let _ = ack.send(Ok(batch[from..to].to_vec()));
                    from = to;
                }
            }
            // Nothing was committed, so the positions are reused by the next batch: `seq`
            // stays gap-free. (No later round was started: that waits for this one's result.)
            Err(e) => {
                for (ack, _) in acks {
                    let _ = ack.send(Err(PublishError::Store(e.clone())));
                }
            }
        }
    }
}

/// A batch being committed, with its publishers' acks (each with the end of its events).
struct Round<'a> {
    commit: Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>,
    batch: Vec<Arc<EncodedEvent>>,
    acks: Vec<(Ack, usize)>,
}

impl<'a> Round<'a> {
    /// Numbers the `pending` publishes from `first_seq`, stamps them, and hands them to the
    /// store at once (the commit's first step runs here), so that it commits while the caller
    /// goes on.
    fn start(
        store: &'a dyn EventStore,
        pending: &mut Vec<Publish>,
        first_seq: u64,
        stamped: &mut DateTime<Utc>,
    ) -> Self {
        // Never earlier than the batch before, should the clock step back: stores may find a
        // time's first event by bisecting `seq` (EventStore::append).
        let now = Utc::now().max(*stamped);
        *stamped = now;
        let mut batch = Vec::with_capacity(pending.iter().map(|p| p.0.len()).sum());
        let mut acks = Vec::with_capacity(pending.len());
        for (events, skip, ack) in pending.drain(..) {
            for e in events {
                let event = e.commit(first_seq + batch.len() as u64, now);
                batch.push(EncodedEvent::skipping(event, skip));
            }
            acks.push((ack, batch.len()));
        }
        let mut commit = store.append(batch.clone());
        // A poll that finds the commit unfinished registers nothing lasting: awaiting it later
        // polls it again with the sequencer's waker.
        if let Poll::Ready(result) = commit
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            commit = Box::pin(std::future::ready(result));
        }
        Self {
            commit,
            batch,
            acks,
        }
    }
}

/// Takes the publishes already queued while the batch holds fewer than `MAX_BATCH` events;
/// `taken` counts the events in `pending`.
fn take_ready(rx: &mut mpsc::Receiver<Publish>, pending: &mut Vec<Publish>, taken: &mut usize) {
    while *taken < MAX_BATCH {
        match rx.try_recv() {
            Ok(p) => {
                *taken += p.0.len();
                pending.push(p);
            }
            Err(_) => break,
        }
    }
}

/// Publishes come in bursts (a client's pipeline of publishes, requests read together): the
/// first of a burst wakes the sequencer while the rest are still being parsed. Letting the
/// tasks that are ready run first, for as long as that brings more publishes, gathers the
/// burst into one transaction, and so into one fan-out round, where the first publish would
/// otherwise be committed, and fanned out, alone.
async fn gather(rx: &mut mpsc::Receiver<Publish>, pending: &mut Vec<Publish>, taken: &mut usize) {
    while *taken < MAX_BATCH {
        tokio::task::yield_now().await;
        let before = pending.len();
        take_ready(rx, pending, taken);
        if pending.len() == before {
            return;
        }
    }
}
