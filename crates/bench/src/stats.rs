//! Measurement state: the run phase, per-thread counters and HDR histograms (merged at the end,
//! so the receive path takes no shared lock and touches no shared cache line), and error counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

pub(crate) const WARMUP: u8 = 0;
pub(crate) const MEASURE: u8 = 1;
pub(crate) const DONE: u8 = 2;

static PHASE: AtomicU8 = AtomicU8::new(WARMUP);

pub(crate) fn set_phase(p: u8) {
    PHASE.store(p, Ordering::SeqCst);
}

pub(crate) fn phase() -> u8 {
    PHASE.load(Ordering::Relaxed)
}

pub(crate) fn measuring() -> bool {
    phase() == MEASURE
}

/// Highest latency tracked (µs); larger values are recorded as this.
const MAX_TRACKED_US: u64 = 60_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, 3).expect("valid histogram bounds")
}

/// What one thread counted during the measuring window.
pub(crate) struct Counts {
    /// Publish-to-receipt latency of delivered messages (µs).
    pub delivery: Histogram<u64>,
    /// Publish-to-acknowledgement latency (µs): HTTP 201 or WebSocket `event.published`.
    pub ack: Histogram<u64>,
    pub delivered: u64,
    pub published: u64,
    pub acked: u64,
}

impl Counts {
    fn new() -> Self {
        Self {
            delivery: histogram(),
            ack: histogram(),
            delivered: 0,
            published: 0,
            acked: 0,
        }
    }

    fn add(&mut self, other: &Counts) {
        let _ = self.delivery.add(&other.delivery);
        let _ = self.ack.add(&other.ack);
        self.delivered += other.delivered;
        self.published += other.published;
        self.acked += other.acked;
    }

    fn reset(&mut self) {
        self.delivery.reset();
        self.ack.reset();
        self.delivered = 0;
        self.published = 0;
        self.acked = 0;
    }
}

static REGISTRY: Mutex<Vec<Arc<Mutex<Counts>>>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL: Arc<Mutex<Counts>> = {
        let c = Arc::new(Mutex::new(Counts::new()));
        REGISTRY.lock().push(c.clone());
        c
    };
}

/// Runs `f` on this thread's counters (an uncontended lock: only `collect` takes it elsewhere).
pub(crate) fn with_local<R>(f: impl FnOnce(&mut Counts) -> R) -> R {
    LOCAL.with(|c| f(&mut c.lock()))
}

pub(crate) fn record_delivery(latency_us: u64) {
    with_local(|c| {
        c.delivered += 1;
        c.delivery.saturating_record(latency_us);
    });
}

pub(crate) fn record_ack(latency_us: Option<u64>) {
    with_local(|c| {
        c.acked += 1;
        if let Some(l) = latency_us {
            c.ack.saturating_record(l);
        }
    });
}

pub(crate) fn count_published(n: u64) {
    with_local(|c| c.published += n);
}

/// The sum over every thread.
pub(crate) fn collect() -> Counts {
    let mut total = Counts::new();
    for c in REGISTRY.lock().iter() {
        total.add(&c.lock());
    }
    total
}

/// Clears every thread's counters.
pub(crate) fn reset() {
    for c in REGISTRY.lock().iter() {
        c.lock().reset();
    }
}

/// Errors, counted over the whole run (they are rare, so shared atomics are fine).
#[derive(Default)]
pub(crate) struct Errors {
    /// Connections that could not be opened (after retries).
    pub connect: AtomicU64,
    /// Connection attempts that were retried.
    pub connect_retries: AtomicU64,
    /// Connections the server closed or that failed before the end of the run.
    pub disconnect: AtomicU64,
    /// `error` messages from the server.
    pub server: AtomicU64,
    /// HTTP publishes answered with a status other than 201, or that failed.
    pub http: AtomicU64,
    /// WebSocket writes that failed.
    pub send: AtomicU64,
    /// Closed-loop windows refilled after 2 s without progress (messages presumed lost).
    pub window_reset: AtomicU64,
}

pub(crate) static ERRORS: Errors = Errors {
    connect: AtomicU64::new(0),
    connect_retries: AtomicU64::new(0),
    disconnect: AtomicU64::new(0),
    server: AtomicU64::new(0),
    http: AtomicU64::new(0),
    send: AtomicU64::new(0),
    window_reset: AtomicU64::new(0),
};

pub(crate) fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[derive(Serialize, Debug, Clone, Copy, Default, PartialEq)]
pub struct ErrorCounts {
    pub connect: u64,
    pub connect_retries: u64,
    pub disconnect: u64,
    pub server: u64,
    pub http: u64,
    pub send: u64,
    pub window_reset: u64,
}

impl ErrorCounts {
    pub fn snapshot() -> Self {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Self {
            connect: g(&ERRORS.connect),
            connect_retries: g(&ERRORS.connect_retries),
            disconnect: g(&ERRORS.disconnect),
            server: g(&ERRORS.server),
            http: g(&ERRORS.http),
            send: g(&ERRORS.send),
            window_reset: g(&ERRORS.window_reset),
        }
    }

    /// Errors proper (retries that then succeeded are not errors).
    pub fn total(&self) -> u64 {
        self.connect + self.disconnect + self.server + self.http + self.send + self.window_reset
    }
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Serialize, Debug, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl LatencySummary {
    /// `None` for an empty histogram.
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        // Report the highest value equivalent to the bucket, as HdrHistogram does.
        let q = |q: f64| h.highest_equivalent(h.value_at_quantile(q));
        Some(Self {
            count: h.len(),
            min: h.min(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            max: h.highest_equivalent(h.max()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = histogram();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let s = LatencySummary::of(&h).unwrap();
        assert_eq!(s.count, 10_000);
        assert_eq!(s.min, 1);
        // Three significant digits: within 0.1 % of the exact value.
        let near =
            |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 0.001 + 1.0;
        assert!(near(s.p50, 5_000), "{s:?}");
        assert!(near(s.p90, 9_000), "{s:?}");
        assert!(near(s.p99, 9_900), "{s:?}");
        assert!(near(s.p999, 9_990), "{s:?}");
        assert!(near(s.max, 10_000), "{s:?}");
        assert!((s.mean - 5_000.5).abs() < 5.0, "{s:?}");
        assert!(LatencySummary::of(&histogram()).is_none());
    }

    #[test]
    fn outliers_saturate_and_thread_counts_merge() {
        reset();
        with_local(|c| c.delivery.saturating_record(u64::MAX));
        let merged = std::thread::spawn(|| {
            record_delivery(100);
            record_ack(Some(50));
            count_published(3);
        });
        merged.join().unwrap();
        let all = collect();
        assert!(all.delivered >= 1 && all.published >= 3 && all.acked >= 1);
        let s = LatencySummary::of(&all.delivery).unwrap();
        assert!(s.max >= MAX_TRACKED_US && s.max < MAX_TRACKED_US + MAX_TRACKED_US / 500);
    }
}
