//! Seed 003's polling mailboxes: each client's mailbox is only a cursor into the log (its
//! messages are `mailbox.message` events), so nothing is copied per client and a mailbox costs
//! a few dozen bytes.
//!
//! A mailbox exists only once it is used. A poll without an id gets an id and keeps nothing:
//! the id carries where the mailbox starts (the head of the log when it was handed out) and
//! when it was handed out, so the mailbox opens there when the id is first polled or posted
//! from — within `idle_timeout_secs`; later, or for an id the client chose, it opens at the
//! head. At most `max_mailboxes_per_ip` are kept per client address and `max_mailboxes` in all:
//! beyond, the least recently polled (of that address, or of all) is forgotten, and so are
//! mailboxes not polled for `idle_timeout_secs`. A forgotten mailbox polled again opens anew.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use uuid::Uuid;

struct Mailbox {
    cursor: u64,
    polled: Instant,
    /// Its place in the least-recently-polled order (`Inner::order`).
    tick: u64,
    /// The client address that used it last, which it counts against.
    ip: IpAddr,
}

pub struct Mailboxes {
    max: usize,
    max_per_ip: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    boxes: HashMap<Arc<str>, Mailbox>,
    /// Every mailbox by its tick: least recently polled first.
    order: BTreeMap<u64, Arc<str>>,
    /// Each client address's mailboxes by their ticks.
    by_ip: HashMap<IpAddr, BTreeMap<u64, Arc<str>>>,
    next_tick: u64,
}

impl Inner {
    fn remove(&mut self, id: &str) -> Option<(Arc<str>, Mailbox)> {
        let (id, m) = self.boxes.remove_entry(id)?;
        self.order.remove(&m.tick);
        if let Some(own) = self.by_ip.get_mut(&m.ip) {
            own.remove(&m.tick);
            if own.is_empty() {
                self.by_ip.remove(&m.ip);
            }
        }
        Some((id, m))
    }

    fn insert(&mut self, id: Arc<str>, cursor: u64, ip: IpAddr) {
        let tick = self.next_tick;
        self.next_tick += 1;
        self.order.insert(tick, id.clone());
        self.by_ip.entry(ip).or_default().insert(tick, id.clone());
        let polled = Instant::now();
        self.boxes.insert(
            id,
            Mailbox {
                cursor,
                polled,
                tick,
                ip,
            },
        );
    }
}

impl Mailboxes {
    pub fn new(max: usize, max_per_ip: usize) -> Self {
        Self {
            max: max.max(1),
            max_per_ip: max_per_ip.max(1),
            inner: Mutex::default(),
        }
    }

    /// The cursor of `id`, used now from `ip`; a new mailbox opens at `start`, making room
    /// first by forgetting the least recently polled mailbox of `ip`, or of all.
    pub fn open(&self, id: &str, ip: IpAddr, start: u64) -> u64 {
        let mut inner = self.inner.lock();
        // A known mailbox is taken out and put back as the most recently polled.
        let (id, cursor) = match inner.remove(id) {
            Some((id, m)) => (id, m.cursor),
            None => {
                let full = |inner: &Inner| {
                    inner.by_ip.get(&ip).map_or(0, BTreeMap::len) >= self.max_per_ip
                };
                if full(&inner) {
                    let oldest = inner.by_ip[&ip].values().next().cloned();
                    if let Some(oldest) = oldest {
                        inner.remove(&oldest);
                        metrics::counter!("herald_mailboxes_evicted_total", "limit" => "per_ip")
                            .increment(1);
                    }
                }
                if inner.boxes.len() >= self.max {
                    let oldest = inner.order.values().next().cloned();
                    if let Some(oldest) = oldest {
                        inner.remove(&oldest);
                        metrics::counter!("herald_mailboxes_evicted_total", "limit" => "total")
                            .increment(1);
                    }
                }
                (Arc::from(id), start)
            }
        };
        inner.insert(id, cursor, ip);
        cursor
    }

    pub fn advance(&self, id: &str, cursor: u64) {
        if let Some(m) = self.inner.lock().boxes.get_mut(id) {
            m.cursor = m.cursor.max(cursor);
        }
    }

    /// Forgets mailboxes not polled for `idle`; returns how many.
    pub fn forget_idle(&self, idle: Duration) -> usize {
        let mut inner = self.inner.lock();
        let mut forgotten = 0;
        // Least recently polled first: stop at the first one still in use.
        while let Some((_, id)) = inner.order.first_key_value() {
            let id = id.clone();
            if inner.boxes[&id].polled.elapsed() <= idle {
                break;
            }
            inner.remove(&id);
            forgotten += 1;
        }
        forgotten
    }

    /// How many mailboxes are kept.
    pub fn len(&self) -> usize {
        self.inner.lock().boxes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An id handed out by a poll without one: `{uuid}.{head}.{unix ms}` — where its mailbox
/// starts, and since when.
pub fn issue(head: u64) -> String {
    format!("{}.{head}.{}", Uuid::new_v4().simple(), unix_ms())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where the mailbox `id` opens: where an id handed out by `issue` within `valid` says
/// (never past `head`), else at `head`.
pub fn start_of(id: &str, head: u64, valid: Duration) -> u64 {
    let mut parts = id.split('.');
    let (Some(uuid), Some(start), Some(ms), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return head;
    };
    let issued = (uuid.len() == 32 && uuid.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| Some((start.parse::<u64>().ok()?, ms.parse::<u64>().ok()?)))
        .flatten();
    match issued {
        Some((start, ms)) if unix_ms().saturating_sub(ms) <= valid.as_millis() as u64 => {
            start.min(head)
        }
        _ => head,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn ids(m: &Mailboxes) -> Vec<String> {
        let inner = m.inner.lock();
        inner.order.values().map(|id| id.to_string()).collect()
    }

    #[test]
    fn an_address_at_its_cap_loses_its_least_recently_polled_mailbox() {
        let m = Mailboxes::new(100, 3);
        for id in ["a", "b", "c"] {
            m.open(id, ip(1), 0);
        }
        m.open("other", ip(2), 0);
        // Polling `a` again makes `b` the least recently polled of ip(1).
        m.open("a", ip(1), 0);
        m.open("d", ip(1), 0);
        assert_eq!(ids(&m), ["c", "other", "a", "d"]);
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn at_the_total_cap_the_least_recently_polled_of_all_goes() {
        let m = Mailboxes::new(3, 100);
        m.open("a", ip(1), 0);
        m.open("b", ip(2), 0);
        m.open("c", ip(3), 0);
        m.open("a", ip(1), 0);
        m.open("d", ip(4), 0);
        assert_eq!(ids(&m), ["c", "a", "d"]);
        let inner = m.inner.lock();
        assert!(
            !inner.by_ip.contains_key(&ip(2)),
            "an emptied address is forgotten"
        );
        assert_eq!(inner.by_ip.len(), 3);
    }

    #[test]
    fn a_mailbox_keeps_its_cursor_and_counts_where_it_was_used_last() {
        let m = Mailboxes::new(10, 10);
        assert_eq!(m.open("a", ip(1), 5), 5);
        m.advance("a", 9);
        assert_eq!(m.open("a", ip(2), 100), 9, "known: its own cursor");
        let inner = m.inner.lock();
        assert!(!inner.by_ip.contains_key(&ip(1)));
        assert_eq!(inner.by_ip[&ip(2)].len(), 1);
    }

    #[test]
    fn idle_mailboxes_are_forgotten_oldest_first() {
        let m = Mailboxes::new(10, 10);
        m.open("old", ip(1), 0);
        std::thread::sleep(Duration::from_millis(30));
        m.open("new", ip(1), 0);
        assert_eq!(m.forget_idle(Duration::from_millis(20)), 1);
        assert_eq!(ids(&m), ["new"]);
        assert_eq!(m.forget_idle(Duration::ZERO), 1);
        assert!(m.is_empty() && m.inner.lock().by_ip.is_empty());
    }

    #[test]
    fn an_issued_id_opens_where_it_was_issued_while_it_is_fresh() {
        let hour = Duration::from_secs(3600);
        let id = issue(7);
        assert_eq!(start_of(&id, 10, hour), 7);
        assert_eq!(start_of(&id, 5, hour), 5, "never past the head");
        let stale = format!("{}.7.{}", Uuid::new_v4().simple(), unix_ms() - 7_200_000);
        assert_eq!(start_of(&stale, 10, hour), 10);
        for named in [
            "quiet",
            "a.b.c",
            "x.7.1",
            &format!("{}.7", Uuid::new_v4().simple()),
        ] {
            assert_eq!(start_of(named, 10, hour), 10, "{named}");
        }
    }
}
