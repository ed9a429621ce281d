//! The bounds on the sockets clients hold: `max_sockets` over all of them, and
//! `max_connections_per_ip` over each client address's.
//!
//! Every accepted socket takes a `Slot` before anything else happens to it, and the slot goes
//! with the socket (`TimedStream`) for its whole life — a plain HTTP connection, an event
//! stream, a WebSocket after its upgrade — and is given back when the socket is dropped. A
//! socket beyond either bound is answered at once, without reading its request (`refuse`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use metrics::Gauge;
use parking_lot::Mutex;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How long a refused socket is kept open after its answer, reading and discarding what the
/// client sends meanwhile: closing a socket with unread data resets the connection, and the
/// client would see the reset instead of the answer.
const LINGER: Duration = Duration::from_secs(1);
/// Refused sockets lingering at once, beyond `max_sockets`; more are closed at once.
pub(super) const MAX_LINGERING: usize = 64;

/// What every accepted socket shares: the bounds, the counts, and the write timeout.
pub(super) struct Sockets {
    /// A write to a socket that makes no progress for this long fails (`TimedStream`).
    pub write_timeout: Duration,
    max: usize,
    /// 0: no bound per address.
    per_ip: u32,
    open: AtomicUsize,
    /// Open sockets per client address, for the addresses that have any.
    by_ip: Mutex<HashMap<IpAddr, u32>>,
    lingering: AtomicUsize,
    open_gauge: Gauge,
}

/// Why a socket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `max_sockets` are open.
    Full,
    /// `max_connections_per_ip` are open from the client's address.
    PerIp,
}

/// One open socket's place in the counts, given back on drop.
pub struct Slot {
    sockets: Arc<Sockets>,
    ip: IpAddr,
}

impl Sockets {
    /// `max` sockets in all (at least 1) and `per_ip` per client address (0: no bound).
    pub(super) fn new(max: usize, per_ip: u32, write_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            write_timeout,
            max: max.max(1),
            per_ip,
            open: AtomicUsize::new(0),
            by_ip: Mutex::new(HashMap::new()),
            lingering: AtomicUsize::new(0),
            open_gauge: metrics::gauge!("herald_sockets_open"),
        })
    }

    /// A slot for a socket from `ip`, or why there is none.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        // An IPv4 client of a dual-stack listener (`::ffff:a.b.c.d`) counts as its IPv4 address.
        let ip = ip.to_canonical();
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Full);
        }
        if self.per_ip > 0 {
            let mut by_ip = self.by_ip.lock();
            let n = by_ip.entry(ip).or_insert(0);
            if *n >= self.per_ip {
                drop(by_ip);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::PerIp);
            }
            *n += 1;
        }
        self.open_gauge.increment(1.0);
        Ok(Slot {
            sockets: self.clone(),
            ip,
        })
    }

    /// Sockets open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Answers a refused socket (429 for its address's bound, 503 for the server's) without
    /// reading its request, and closes it.
    pub(super) fn refuse(self: &Arc<Self>, tcp: TcpStream, refusal: Refusal) {
        let (reason, status, error) = match refusal {
            Refusal::Full => (
                "max_sockets",
                "503 Service Unavailable",
                "the server has no room for more connections; retry shortly",
            ),
            Refusal::PerIp => (
                "max_connections_per_ip",
                "429 Too Many Requests",
                "too many connections from this address; close some first",
            ),
        };
        metrics::counter!("herald_sockets_refused_total", "reason" => reason).increment(1);
        tracing::debug!(peer = ?tcp.peer_addr().ok(), reason, "refusing a connection");
        let body = format!(r#"{{"error":"{error}","code":"TOO_MANY_CONNECTIONS"}}"#);
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             retry-after: 1\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        // A new socket's send buffer is empty: the answer goes in one write, or not at all.
        if tcp.try_write(answer.as_bytes()).is_err() {
            return;
        }
        if self.lingering.fetch_add(1, Ordering::AcqRel) >= MAX_LINGERING {
            self.lingering.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let sockets = self.clone();
        tokio::spawn(async move {
            let mut tcp = tcp;
            let _ = tokio::time::timeout(LINGER, async {
                let mut discard = [0u8; 512];
                while let Ok(1..) = tcp.read(&mut discard).await {}
            })
            .await;
            drop(tcp);
            sockets.lingering.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

impl Slot {
    pub fn write_timeout(&self) -> Duration {
        self.sockets.write_timeout
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let sockets = &self.sockets;
        if sockets.per_ip > 0 {
            let mut by_ip = sockets.by_ip.lock();
            if let Some(n) = by_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    by_ip.remove(&self.ip);
                }
            }
        }
        sockets.open.fetch_sub(1, Ordering::AcqRel);
        sockets.open_gauge.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn both_bounds_hold_and_free_when_slots_drop() {
        let sockets = Sockets::new(5, 2, Duration::from_secs(1));
        let a1 = sockets.admit(ip("10.0.0.1")).unwrap();
        let a2 = sockets.admit(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(
            sockets.admit(ip("10.0.0.1")).err(),
            Some(Refusal::PerIp),
            "the mapped address counts as the IPv4 one"
        );
        let others: Vec<_> = ["10.0.0.2", "10.0.0.3", "::1"]
            .iter()
            .map(|a| sockets.admit(ip(a)).unwrap())
            .collect();
        assert_eq!(sockets.open(), 5);
        assert_eq!(sockets.admit(ip("10.0.0.4")).err(), Some(Refusal::Full));
        assert_eq!(sockets.open(), 5, "a refusal takes nothing");
        drop(a1);
        let a3 = sockets.admit(ip("10.0.0.1")).unwrap();
        drop((a2, a3, others));
        assert_eq!(sockets.open(), 0);
        assert!(
            sockets.by_ip.lock().is_empty(),
            "addresses without sockets are forgotten"
        );
    }

    #[test]
    fn no_bound_per_address_with_zero() {
        let sockets = Sockets::new(3, 0, Duration::from_secs(1));
        let held: Vec<_> = (0..3)
            .map(|_| sockets.admit(ip("127.0.0.1")).unwrap())
            .collect();
        assert_eq!(sockets.admit(ip("127.0.0.1")).err(), Some(Refusal::Full));
        drop(held);
        assert_eq!(sockets.open(), 0);
    }
}
