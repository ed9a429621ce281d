//! One bounded outbound queue per connection. Producers (the hub's fan-out, command replies)
//! never wait: they push or, when the queue is full, close it. The connection's writer drains
//! everything queued in one batch and flushes once.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::event::EncodedEvent;
use crate::wire::ServerMessage;

#[derive(Debug, Clone)]
pub enum Outgoing {
    Event(Arc<EncodedEvent>),
    Message(Arc<ServerMessage>),
    /// An opaque frame written as-is (the conformance echo).
    Raw {
        payload: bytes::Bytes,
        text: bool,
    },
    /// The hub's heartbeat: a WebSocket ping frame. One timer for all connections instead of
    /// one per connection; transports with their own heartbeat ignore it.
    Ping,
}

impl Outgoing {
    fn weight(&self) -> usize {
        match self {
            Self::Event(e) => e.json().len() + 32,
            Self::Message(m) => m.approx_len(),
            Self::Raw { payload, .. } => payload.len(),
            Self::Ping => 2,
        }
    }
}

/// Why a connection is being closed; WebSocket close code and reason, and the SSE/log wording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

impl CloseReason {
    pub const NORMAL: Self = Self {
        code: 1000,
        reason: "closed",
    };
    pub const SHUTDOWN: Self = Self {
        code: 1001,
        reason: "server shutting down",
    };
    pub const POLICY: Self = Self {
        code: 1008,
        reason: "policy violation",
    };
    /// A frame that breaks RFC 6455 (unmasked, bad opcode, bad control frame, ...).
    pub const PROTOCOL_ERROR: Self = Self {
        code: 1002,
        reason: "protocol error",
    };
    pub const INVALID_UTF8: Self = Self {
        code: 1007,
        reason: "text is not valid UTF-8",
    };
    pub const TOO_BIG: Self = Self {
        code: 1009,
        reason: "message too big",
    };
    /// The store failed during a resume: closed rather than left with a gap.
    pub const RESUME_STORE_FAILED: Self = Self {
        code: 1011,
        reason: "event store unavailable: resume from your last seq",
    };
    /// A resume that was dropped before it finished.
    pub const RESUME_INTERRUPTED: Self = Self {
        code: 1011,
        reason: "resume interrupted: resume from your last seq",
    };
    /// The store failed while a document was opened.
    pub const STORE_UNAVAILABLE: Self = Self {
        code: 1011,
        reason: "event store unavailable: reconnect",
    };
    pub const IDLE: Self = Self {
        code: 4000,
        reason: "idle timeout",
    };
    /// The token the connection authenticated with expired: authenticate again.
    pub const TOKEN_EXPIRED: Self = Self {
        code: 4001,
        reason: "token expired: reconnect with a fresh token",
    };
    pub const SLOW_CONSUMER: Self = Self {
        code: 4008,
        reason: "outbound buffer overflow: resume from your last seq",
    };
    pub const RATE_LIMITED: Self = Self {
        code: 4029,
        reason: "too many messages",
    };
}

#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        Self {
            max_messages: 4096,
            max_bytes: 4 << 20,
        }
    }
}

#[derive(Default)]
struct State {
    items: VecDeque<Outgoing>,
    bytes: usize,
    closed: Option<CloseReason>,
    /// The writer's waker while it waits (for a batch, or for an overflow during a write).
    /// Kept under the queue's lock, so a push cannot slip in between its check and its wait;
    /// one slot rather than `Notify`s, whose wait futures would sit in every idle connection's
    /// task.
    waker: Option<Waker>,
    /// Run once, on overflow (see `on_overflow`).
    on_overflow: Option<OverflowHook>,
    /// The writer is waiting for a batch (not writing one). Set when it last waited: a writer
    /// that left its wait for something else (a WebSocket reading a frame) still counts when
    /// woken — `WokenWriters`' slack and bound cover it.
    parked: bool,
    /// Counted in `WokenWriters`: woken from `parked` with a batch it has not taken yet.
    counted: bool,
}

/// Called when the queue overflows, from whichever task pushed: it must not block or take
/// the hub's locks (the hub may be delivering).
pub type OverflowHook = Box<dyn FnOnce() + Send>;

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("items", &self.items.len())
            .field("bytes", &self.bytes)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// A connection's outbound queue. It has one consumer, the connection's writer: only the
/// last task to wait on it is woken.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    limits: OutboxLimits,
    woken: Arc<WokenWriters>,
}

/// How many writers were woken from waiting by frames they have not taken yet, across all of a
/// hub's connections: the writers a fan-out round has queued up to run. Under load the embedded
/// log lets them run before it commits the next batch (`settle`), so that batch gathers every
/// publish they released, and the next round writes more frames per send (fan-out at 64 in
/// flight: ~31 → ~54 messages per send; docs/performance.md).
#[derive(Debug)]
pub struct WokenWriters {
    count: AtomicUsize,
    /// Running totals: writers woken, and frames queued for them before they ran.
    wakes: AtomicU64,
    frames: AtomicU64,
    settled: Notify,
    /// This many still waiting to run count as settled: a few may belong to connections
    /// busy with something else.
    slack: usize,
    /// The longest `settle` waits; bounds the latency it adds.
    within: Duration,
}

/// `WokenWriters::totals`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WokenTotals {
    pub writers: u64,
    pub frames: u64,
}

impl WokenTotals {
    /// True when the writers woken since `earlier` got at least `per_writer` frames each, on
    /// average.
    pub fn frames_per_writer_since(&self, earlier: WokenTotals, per_writer: u64) -> bool {
        let writers = self.writers - earlier.writers;
        writers > 0 && self.frames - earlier.frames >= per_writer * writers
    }
}

impl Default for WokenWriters {
    fn default() -> Self {
        Self::new(16, Duration::from_millis(20))
    }
}

impl WokenWriters {
    pub fn new(slack: usize, within: Duration) -> Self {
        Self {
            count: AtomicUsize::new(0),
            wakes: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            settled: Notify::new(),
            slack,
            within,
        }
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// How many writers have been woken, and how many frames were queued for them before
    /// they ran, since the start: the difference around a fan-out round tells whether its
    /// writers got several frames each.
    pub fn totals(&self) -> WokenTotals {
        WokenTotals {
            writers: self.wakes.load(Ordering::Acquire),
            frames: self.frames.load(Ordering::Acquire),
        }
    }

    /// Waits until at most `slack` woken writers have not taken their frames, or `within`.
    pub async fn settle(&self) {
        let settled = async {
            loop {
                let notified = self.settled.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                if self.count() <= self.slack {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(self.within, settled).await;
    }

    fn woke(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.wakes.fetch_add(1, Ordering::AcqRel);
    }

    fn queued(&self, frames: usize) {
        self.frames.fetch_add(frames as u64, Ordering::AcqRel);
    }

    fn took(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == self.slack + 1 {
            self.settled.notify_waiters();
        }
    }
}

/// The outcome of `push_deferred`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; `wake` is true for the first frame of a batch (the writer may be asleep).
    Queued { wake: bool },
    /// The connection is closed or just overflowed.
    Refused,
}

/// What the writer gets from one wake-up.
#[derive(Debug, PartialEq)]
pub enum Drained {
    /// Frames to write (in order), then flush.
    Batch,
    /// Write the frames in the batch, then close with this reason.
    Close(CloseReason),
}

impl Outbox {
    pub fn new(limits: OutboxLimits, woken: Arc<WokenWriters>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            limits,
            woken,
        }
    }

    /// Queues a frame and wakes the writer. Returns false when the connection is closed or the
    /// push overflowed the bounds (the queue is then dropped and the connection closed as a
    /// slow consumer).
    pub fn push(&self, item: Outgoing) -> bool {
        match self.push_deferred(item) {
            Pushed::Queued { wake } => {
                if wake {
                    self.wake();
                }
                true
            }
            Pushed::Refused => false,
        }
    }

    /// Wakes the writer after `push_deferred` said so.
    pub fn wake(&self) {
        let waker = self.state.lock().waker.take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Queues a frame without waking the writer, so a producer queuing several frames (a
    /// committed batch) wakes it once and the writer sends them in one flush. The caller must
    /// call `wake` when told to.
    pub fn push_deferred(&self, item: Outgoing) -> Pushed {
        self.push_all_deferred(std::iter::once(item))
    }

    /// `push_deferred` of several frames under one lock (a fan-out round's events for this
    /// connection): taking the lock once per frame was a measurable share of fan-out.
    /// `Queued` when every frame was queued; an overflow part-way drops them all, as any
    /// overflow drops the queue.
    pub fn push_all_deferred(&self, items: impl IntoIterator<Item = Outgoing>) -> Pushed {
        let mut s = self.state.lock();
        if s.closed.is_some() {
            return Pushed::Refused;
        }
        let before = s.items.len();
        let was_empty = before == 0;
        for item in items {
            let w = item.weight();
            if s.items.len() >= self.limits.max_messages || s.bytes + w > self.limits.max_bytes {
                s.items.clear();
                s.bytes = 0;
                s.closed = Some(CloseReason::SLOW_CONSUMER);
                let (waker, hook) = (s.waker.take(), s.on_overflow.take());
                drop(s);
                fire(waker, hook);
                return Pushed::Refused;
            }
            s.bytes += w;
            s.items.push_back(item);
        }
        if s.parked && !s.counted && !s.items.is_empty() {
            s.counted = true;
            self.woken.woke();
        }
        if s.counted {
            self.woken.queued(s.items.len() - before);
        }
        Pushed::Queued {
            wake: was_empty && !s.items.is_empty(),
        }
    }

    /// Asks the writer to close after what is already queued. The first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let mut s = self.state.lock();
        let overflowed = s.closed.is_none() && reason == CloseReason::SLOW_CONSUMER;
        s.closed.get_or_insert(reason);
        // A replay's side buffer overflowing closes this way: it counts as an overflow.
        let hook = if overflowed {
            s.on_overflow.take()
        } else {
            None
        };
        let waker = s.waker.take();
        drop(s);
        fire(waker, hook);
    }

    /// Runs `hook` once if the queue overflows (at once if it already has). For writers that
    /// cannot watch for it themselves while their client's socket is full.
    pub fn on_overflow(&self, hook: OverflowHook) {
        let mut s = self.state.lock();
        if s.closed == Some(CloseReason::SLOW_CONSUMER) {
            drop(s);
            hook();
        } else {
            s.on_overflow = Some(hook);
        }
    }

    /// Resolves once the queue has overflowed, so a writer blocked on a client that stopped
    /// reading can give up at once instead of waiting for its write timeout. For the writer's
    /// own task only (see `Outbox`).
    pub fn overflowed(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(|cx| {
            let mut s = self.state.lock();
            if s.closed == Some(CloseReason::SLOW_CONSUMER) {
                return Poll::Ready(());
            }
            register(&mut s.waker, cx);
            Poll::Pending
        })
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().closed.is_some()
    }

    pub fn queued(&self) -> (usize, usize) {
        let s = self.state.lock();
        (s.items.len(), s.bytes)
    }

    /// For tests: takes what is queued and returns the events' `seq`s, in queue order.
    #[cfg(test)]
    pub(crate) async fn drain_event_seqs(&self) -> Vec<u64> {
        let mut batch = Vec::new();
        if self.queued().0 > 0 {
            self.drain(&mut batch).await;
        }
        let seqs = batch.iter().filter_map(|item| match item {
            Outgoing::Event(e) => Some(e.event.seq),
            _ => None,
        });
        seqs.collect()
    }

    /// Waits until there is something to write or the outbox closes, then moves every queued
    /// frame into `batch`. Cancel-safe: nothing is taken until the wait completes.
    pub async fn drain(&self, batch: &mut Vec<Outgoing>) -> Drained {
        poll_fn(|cx| self.poll_drain(cx, batch)).await
    }

    /// `drain` for a writer that keeps no buffer between batches: while it waits, its state
    /// holds no batch (a waiting writer is what an idle connection is), only this reference
    /// (a plain `fn`: an `async fn` would add its own state around it).
    pub fn next_batch(&self) -> impl Future<Output = (Vec<Outgoing>, Drained)> + '_ {
        poll_fn(|cx| {
            let mut batch = Vec::new();
            self.poll_drain(cx, &mut batch)
                .map(|drained| (batch, drained))
        })
    }

    fn poll_drain(&self, cx: &mut Context<'_>, batch: &mut Vec<Outgoing>) -> Poll<Drained> {
        let mut s = self.state.lock();
        if s.items.is_empty() && s.closed.is_none() {
            register(&mut s.waker, cx);
            s.parked = true;
            return Poll::Pending;
        }
        s.parked = false;
        if std::mem::take(&mut s.counted) {
            self.woken.took();
        }
        if batch.is_empty() {
            // Hands the queue's buffer over: a writer that frees its batch once written leaves
            // an idle connection holding no buffer.
            *batch = Vec::from(std::mem::take(&mut s.items));
        } else {
            batch.extend(s.items.drain(..));
            if s.items.capacity() > 64 {
                s.items.shrink_to(16);
            }
        }
        s.bytes = 0;
        Poll::Ready(match &s.closed {
            Some(r) => Drained::Close(r.clone()),
            None => Drained::Batch,
        })
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.state.get_mut().counted {
            self.woken.took();
        }
    }
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// Wakes the writer and runs the overflow hook, outside the queue's lock.
fn fire(waker: Option<Waker>, hook: Option<OverflowHook>) {
    if let Some(w) = waker {
        w.wake();
    }
    if let Some(hook) = hook {
        hook();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ServerMessage;

    fn msg() -> Outgoing {
        Outgoing::Message(ServerMessage::new("pong", None))
    }

    fn outbox(limits: OutboxLimits) -> Outbox {
        Outbox::new(limits, Arc::default())
    }

    /// Polls the writer's wait once, as its task would: true when it got a batch.
    fn poll_writer(o: &Outbox) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        o.poll_drain(&mut cx, &mut Vec::new()).is_ready()
    }

    #[test]
    fn a_waiting_writer_counts_as_woken_until_it_takes_its_frames() {
        let woken = Arc::new(WokenWriters::default());
        let o = Outbox::new(OutboxLimits::default(), woken.clone());
        // A writer that is not waiting (it is writing, or has not started) is not counted.
        assert!(o.push(msg()));
        assert_eq!(woken.count(), 0);
        assert!(poll_writer(&o));
        assert!(!poll_writer(&o));
        // Waiting, then woken: counted once however many frames follow.
        assert!(o.push(msg()));
        assert!(o.push(msg()));
        assert_eq!(woken.count(), 1);
        assert!(poll_writer(&o));
        assert_eq!(woken.count(), 0);
        // Frames pushed while it writes are not counted; a writer dropped before taking its
        // frames is no longer counted.
        assert!(o.push(msg()));
        assert_eq!(woken.count(), 0);
        assert!(poll_writer(&o));
        assert!(!poll_writer(&o));
        assert!(o.push(msg()));
        assert_eq!(woken.count(), 1);
        drop(o);
        assert_eq!(woken.count(), 0);
    }

    #[test]
    fn an_overflow_releases_the_woken_writer_once_it_is_told() {
        let woken = Arc::new(WokenWriters::default());
        let limits = OutboxLimits {
            max_messages: 1,
            max_bytes: 1 << 20,
        };
        let o = Outbox::new(limits, woken.clone());
        assert!(!poll_writer(&o));
        assert!(o.push(msg()));
        assert!(!o.push(msg()));
        assert_eq!(woken.count(), 1);
        assert!(poll_writer(&o), "the writer is told to close");
        assert_eq!(woken.count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn settle_waits_for_the_woken_writers_but_not_longer_than_its_bound() {
        let woken = Arc::new(WokenWriters::new(1, Duration::from_secs(5)));
        let outboxes: Vec<_> = (0..3)
            .map(|_| Outbox::new(OutboxLimits::default(), woken.clone()))
            .collect();
        for o in &outboxes {
            assert!(!poll_writer(o));
            assert!(o.push(msg()));
        }
        let start = tokio::time::Instant::now();
        let settle = tokio::spawn({
            let woken = woken.clone();
            async move { woken.settle().await }
        });
        tokio::task::yield_now().await;
        assert!(!settle.is_finished(), "three woken writers, one allowed");
        assert!(poll_writer(&outboxes[0]));
        tokio::task::yield_now().await;
        assert!(!settle.is_finished(), "two woken writers, one allowed");
        assert!(poll_writer(&outboxes[1]));
        settle.await.unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "settled as the writers ran"
        );

        // Writers that never run hold it up only for its bound.
        for o in &outboxes[..2] {
            assert!(!poll_writer(o));
            assert!(o.push(msg()));
        }
        woken.settle().await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn drains_in_order_as_one_batch() {
        let o = outbox(OutboxLimits::default());
        assert!(o.push(msg()));
        assert!(o.push(msg()));
        let mut b = Vec::new();
        assert_eq!(o.drain(&mut b).await, Drained::Batch);
        assert_eq!(b.len(), 2);
        assert_eq!(o.queued(), (0, 0));
    }

    #[tokio::test]
    async fn next_batch_takes_the_queue_with_its_buffer() {
        let o = outbox(OutboxLimits::default());
        assert!(o.push(msg()));
        assert!(o.push(msg()));
        let (b, drained) = o.next_batch().await;
        assert_eq!((b.len(), drained), (2, Drained::Batch));
        assert_eq!(o.state.lock().items.capacity(), 0);
    }

    #[tokio::test]
    async fn overflow_closes_as_slow_consumer_and_frees_the_queue() {
        let o = outbox(OutboxLimits {
            max_messages: 2,
            max_bytes: 1 << 20,
        });
        assert!(o.push(msg()));
        assert!(o.push(msg()));
        assert!(!o.push(msg()));
        assert_eq!(o.queued(), (0, 0));
        assert!(!o.push(msg()));
        let mut b = Vec::new();
        assert_eq!(
            o.drain(&mut b).await,
            Drained::Close(CloseReason::SLOW_CONSUMER)
        );
        assert!(b.is_empty());
    }

    #[tokio::test]
    async fn overflowed_resolves_only_on_overflow() {
        let o = Arc::new(outbox(OutboxLimits {
            max_messages: 1,
            max_bytes: 1 << 20,
        }));
        let waiter = tokio::spawn({
            let o = o.clone();
            async move { o.overflowed().await }
        });
        assert!(o.push(msg()));
        assert!(!o.push(msg()));
        let within = std::time::Duration::from_secs(5);
        tokio::time::timeout(within, waiter).await.unwrap().unwrap();

        let closed = Arc::new(outbox(OutboxLimits::default()));
        let waiter = tokio::spawn({
            let closed = closed.clone();
            async move { closed.overflowed().await }
        });
        tokio::task::yield_now().await;
        closed.close(CloseReason::SLOW_CONSUMER);
        tokio::time::timeout(within, waiter).await.unwrap().unwrap();

        let other = outbox(OutboxLimits::default());
        other.close(CloseReason::RATE_LIMITED);
        let brief = std::time::Duration::from_millis(50);
        assert!(
            tokio::time::timeout(brief, other.overflowed())
                .await
                .is_err()
        );
    }

    #[test]
    fn the_overflow_hook_runs_once_on_overflow_only() {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let hook = |runs: &Arc<std::sync::atomic::AtomicUsize>| -> OverflowHook {
            let runs = runs.clone();
            Box::new(move || {
                runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        };
        let o = outbox(OutboxLimits {
            max_messages: 1,
            max_bytes: 1 << 20,
        });
        o.on_overflow(hook(&runs));
        assert!(o.push(msg()));
        assert!(!o.push(msg()));
        assert!(!o.push(msg()));
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Registered after the overflow: runs at once.
        o.on_overflow(hook(&runs));
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);

        let closed = outbox(OutboxLimits::default());
        closed.on_overflow(hook(&runs));
        closed.close(CloseReason::NORMAL);
        closed.close(CloseReason::SLOW_CONSUMER);
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn deferred_pushes_ask_for_one_wake_per_batch() {
        let o = outbox(OutboxLimits::default());
        assert_eq!(o.push_deferred(msg()), Pushed::Queued { wake: true });
        assert_eq!(o.push_deferred(msg()), Pushed::Queued { wake: false });
        o.wake();
        let mut b = Vec::new();
        assert_eq!(o.drain(&mut b).await, Drained::Batch);
        assert_eq!(b.len(), 2);
        assert_eq!(o.push_deferred(msg()), Pushed::Queued { wake: true });
        o.close(CloseReason::NORMAL);
        assert_eq!(o.push_deferred(msg()), Pushed::Refused);
    }

    #[tokio::test]
    async fn several_frames_are_queued_together_or_overflow_together() {
        let o = outbox(OutboxLimits {
            max_messages: 4,
            max_bytes: usize::MAX,
        });
        let frames = |n| std::iter::repeat_with(msg).take(n);
        assert_eq!(
            o.push_all_deferred(frames(2)),
            Pushed::Queued { wake: true }
        );
        assert_eq!(
            o.push_all_deferred(frames(1)),
            Pushed::Queued { wake: false }
        );
        assert_eq!(o.queued().0, 3);
        // Two more would make five: the queue is dropped and the connection closed.
        assert_eq!(o.push_all_deferred(frames(2)), Pushed::Refused);
        assert_eq!(o.queued(), (0, 0));
        let mut b = Vec::new();
        assert_eq!(
            o.drain(&mut b).await,
            Drained::Close(CloseReason::SLOW_CONSUMER)
        );
        assert!(b.is_empty());
    }

    #[tokio::test]
    async fn byte_bound_applies() {
        let o = outbox(OutboxLimits {
            max_messages: 100,
            max_bytes: 10,
        });
        assert!(!o.push(msg()));
        assert!(o.is_closed());
    }
}
