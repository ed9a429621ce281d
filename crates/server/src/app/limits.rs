//! Per-client bounds that are not connections: the budgets of HTTP publishes (events and bytes
//! per second, per identity and per client address) and counts of what a client address holds
//! at once (long-polls).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The address a per-IP bound counts under: an IPv6 client by its /64, which one host usually
/// holds whole (counting single addresses would let it pick a new one per request); an
/// IPv4-mapped address as the IPv4 address.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// Token buckets by key: `rate` per second, holding at most `burst`. A request is admitted
/// while its key's bucket is above zero and is then charged in full, so one request (a batch)
/// may overdraw it — a batch of any size the route takes goes through once — and the next
/// waits until the debt is paid back. Over any period the key gets at most
/// `burst + rate × seconds` plus one request.
struct Buckets<K> {
    rate: f64,
    burst: f64,
    /// Level and when it was last refilled; a key without an entry is full.
    levels: HashMap<K, (f64, Instant)>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        Self {
            rate,
            burst: 2.0 * rate,
            levels: HashMap::new(),
        }
    }

    fn level(&self, key: &K, now: Instant) -> f64 {
        self.levels.get(key).map_or(self.burst, |(level, at)| {
            (level + self.rate * now.saturating_duration_since(*at).as_secs_f64()).min(self.burst)
        })
    }

    /// How long until `key` may go again; zero when it may now.
    fn wait(&self, key: &K, now: Instant) -> Duration {
        let level = self.level(key, now);
        if level > 0.0 {
            Duration::ZERO
        } else {
            // Strictly above zero: a little more than the debt takes to pay back.
            Duration::from_secs_f64((-level + 1e-3) / self.rate)
        }
    }

    fn charge(&mut self, key: &K, amount: f64, now: Instant) {
        let level = self.level(key, now) - amount;
        self.levels.insert(key.clone(), (level, now));
    }

    /// Forgets the keys whose bucket is full again (the same as having none).
    fn forget_full(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.levels.retain(|_, (level, at)| {
            *level + rate * now.saturating_duration_since(*at).as_secs_f64() < burst
        });
    }
}

/// Which budget refused a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishLimit {
    IdentityRate,
    IpRate,
    IdentityBytes,
    IpBytes,
}

impl PublishLimit {
    /// The `limit` label of `herald_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::IdentityRate => "identity_rate",
            Self::IpRate => "ip_rate",
            Self::IdentityBytes => "identity_bytes",
            Self::IpBytes => "ip_bytes",
        }
    }

    /// The configuration key that sets it.
    pub fn key(self) -> &'static str {
        match self {
            Self::IdentityRate => "publish_rate_per_identity",
            Self::IpRate => "publish_rate_per_ip",
            Self::IdentityBytes => "publish_bytes_per_identity",
            Self::IpBytes => "publish_bytes_per_ip",
        }
    }
}

/// The budgets of HTTP publishes: events and request bytes, per identity and per client
/// address. Checked and charged together under one lock: a request refused by one budget is
/// charged to none.
pub struct PublishBudgets {
    inner: Mutex<Budgets>,
}

struct Budgets {
    identity_events: Buckets<String>,
    ip_events: Buckets<IpAddr>,
    identity_bytes: Buckets<String>,
    ip_bytes: Buckets<IpAddr>,
}

impl PublishBudgets {
    pub fn new(
        events_per_identity: u32,
        events_per_ip: u32,
        bytes_per_identity: u32,
        bytes_per_ip: u32,
    ) -> Self {
        Self {
            inner: Mutex::new(Budgets {
                identity_events: Buckets::new(events_per_identity),
                ip_events: Buckets::new(events_per_ip),
                identity_bytes: Buckets::new(bytes_per_identity),
                ip_bytes: Buckets::new(bytes_per_ip),
            }),
        }
    }

    /// Admits and charges a request publishing `events` events in a `bytes`-byte body for
    /// `identity` from `ip` (already `client_key`ed), or names the first budget that refuses
    /// it and how long until every refusing one would admit it.
    pub fn admit(
        &self,
        identity: &str,
        ip: IpAddr,
        events: usize,
        bytes: usize,
    ) -> Result<(), (PublishLimit, Duration)> {
        self.admit_at(identity, ip, events, bytes, Instant::now())
    }

    fn admit_at(
        &self,
        identity: &str,
        ip: IpAddr,
        events: usize,
        bytes: usize,
        now: Instant,
    ) -> Result<(), (PublishLimit, Duration)> {
        let mut b = self.inner.lock();
        let identity = identity.to_owned();
        let waits = [
            (
                PublishLimit::IdentityRate,
                b.identity_events.wait(&identity, now),
            ),
            (PublishLimit::IpRate, b.ip_events.wait(&ip, now)),
            (
                PublishLimit::IdentityBytes,
                b.identity_bytes.wait(&identity, now),
            ),
            (PublishLimit::IpBytes, b.ip_bytes.wait(&ip, now)),
        ];
        let refused = waits.iter().filter(|(_, w)| !w.is_zero());
        if let Some(&(first, _)) = refused.clone().next() {
            let longest = refused.map(|(_, w)| *w).max().unwrap_or_default();
            return Err((first, longest));
        }
        b.identity_events.charge(&identity, events as f64, now);
        b.ip_events.charge(&ip, events as f64, now);
        b.identity_bytes.charge(&identity, bytes as f64, now);
        b.ip_bytes.charge(&ip, bytes as f64, now);
        Ok(())
    }

    /// Forgets the identities and addresses whose budgets are full again.
    pub fn forget_idle(&self) {
        let now = Instant::now();
        let mut b = self.inner.lock();
        b.identity_events.forget_full(now);
        b.ip_events.forget_full(now);
        b.identity_bytes.forget_full(now);
        b.ip_bytes.forget_full(now);
    }
}

/// How many of something each client address holds at once (held long-polls).
#[derive(Default)]
pub struct PerAddress {
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One held slot; released when dropped.
pub struct Held {
    of: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    /// Takes a slot for `ip` (already `client_key`ed) unless it holds `max` already.
    pub fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Held> {
        let mut held = self.held.lock();
        let n = held.entry(ip).or_default();
        if *n >= max {
            if *n == 0 {
                held.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(Held {
            of: self.clone(),
            ip,
        })
    }

    pub fn held(&self, ip: IpAddr) -> usize {
        self.held.lock().get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self.of.held.lock();
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "alice";

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), ip(1));
        assert_eq!(client_key(ip(1)), ip(1));
    }

    #[test]
    fn a_burst_then_the_rate_and_a_refusal_says_how_long_to_wait() {
        let budgets = PublishBudgets::new(10, 1000, 1 << 20, 1 << 20);
        let t0 = Instant::now();
        for i in 0..20 {
            assert!(budgets.admit_at(ALICE, ip(1), 1, 10, t0).is_ok(), "{i}");
        }
        let (limit, wait) = budgets.admit_at(ALICE, ip(1), 1, 10, t0).unwrap_err();
        assert_eq!(limit, PublishLimit::IdentityRate);
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(101),
            "{wait:?}"
        );
        // Another identity on the same address is not affected; after the wait, alice is.
        assert!(budgets.admit_at("bob", ip(1), 1, 10, t0).is_ok());
        assert!(budgets.admit_at(ALICE, ip(1), 1, 10, t0 + wait).is_ok());
    }

    #[test]
    fn a_batch_may_overdraw_once_and_the_next_request_waits_for_the_debt() {
        let budgets = PublishBudgets::new(100, 10_000, 1 << 20, 1 << 20);
        let t0 = Instant::now();
        assert!(budgets.admit_at(ALICE, ip(1), 1000, 100, t0).is_ok());
        // 200 - 1000 = -800: eight seconds at 100 per second.
        let (limit, wait) = budgets.admit_at(ALICE, ip(1), 1, 10, t0).unwrap_err();
        assert_eq!(limit, PublishLimit::IdentityRate);
        assert!((Duration::from_secs(8)..Duration::from_millis(8001)).contains(&wait));
        assert!(budgets.admit_at(ALICE, ip(1), 1, 10, t0 + wait).is_ok());
    }

    #[test]
    fn a_refused_request_is_charged_to_no_budget() {
        let budgets = PublishBudgets::new(1000, 1, 1 << 20, 1 << 20);
        let t0 = Instant::now();
        assert!(budgets.admit_at(ALICE, ip(1), 2, 10, t0).is_ok());
        for _ in 0..10 {
            let refused = budgets.admit_at(ALICE, ip(1), 2, 10, t0).unwrap_err();
            assert_eq!(refused.0, PublishLimit::IpRate);
        }
        // Alice's own budget was charged once: 2000 - 2 left, from another address.
        let b = budgets.inner.lock();
        assert_eq!(b.identity_events.level(&ALICE.to_owned(), t0), 1998.0);
    }

    #[test]
    fn bytes_are_budgeted_apart_from_events() {
        let budgets = PublishBudgets::new(1000, 1000, 1000, 1_000_000);
        let t0 = Instant::now();
        assert!(budgets.admit_at(ALICE, ip(1), 1, 2500, t0).is_ok());
        let (limit, wait) = budgets.admit_at(ALICE, ip(1), 1, 10, t0).unwrap_err();
        assert_eq!(limit, PublishLimit::IdentityBytes);
        assert!(wait >= Duration::from_millis(500));
    }

    #[test]
    fn full_budgets_are_forgotten() {
        let budgets = PublishBudgets::new(10, 10, 10, 10);
        let t0 = Instant::now();
        budgets.admit_at(ALICE, ip(1), 1, 1, t0).unwrap();
        budgets.inner.lock().identity_events.forget_full(t0);
        assert_eq!(budgets.inner.lock().identity_events.levels.len(), 1);
        budgets
            .inner
            .lock()
            .identity_events
            .forget_full(t0 + Duration::from_secs(1));
        assert!(budgets.inner.lock().identity_events.levels.is_empty());
    }

    #[test]
    fn an_address_holds_at_most_its_slots_until_one_is_released() {
        let per = Arc::new(PerAddress::default());
        let held: Vec<_> = (0..3).map(|_| per.take(ip(1), 3).unwrap()).collect();
        assert!(per.take(ip(1), 3).is_none());
        assert!(per.take(ip(2), 3).is_some());
        drop(held);
        assert_eq!(per.held(ip(1)), 0);
        assert!(
            per.held.lock().is_empty(),
            "released addresses are forgotten"
        );
        assert!(per.take(ip(1), 3).is_some());
    }
}
