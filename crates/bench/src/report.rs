//! The result of a run: one JSON object (`--json`) or a readable summary.

use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::{ErrorCounts, LatencySummary};

#[derive(Serialize, Debug, Clone)]
pub struct Report {
    pub scenario: &'static str,
    pub protocol: &'static str,
    pub target: String,
    /// Where publishers connected, when not `target` (`--publish-target`).
    pub publish_target: Option<String>,
    /// How publishers published (`ws` or `http`); absent for idle.
    pub publish: Option<&'static str>,
    /// How Herald subscribers connected (`ws` or `sse`).
    pub transport: &'static str,
    pub rooms: usize,
    pub members_per_room: usize,
    pub subscribers: usize,
    pub publishers: usize,
    /// `closed` (window), `open` (fixed rate) or `idle`.
    pub mode: &'static str,
    pub rate: Option<f64>,
    /// Closed-loop window per publisher.
    pub in_flight: Option<usize>,
    pub payload_bytes: usize,
    /// Events per HTTP publish request (`--batch`).
    pub events_per_request: usize,
    pub warmup_secs: f64,
    /// The measured window, as it really lasted.
    pub window_secs: f64,
    pub connections: Connections,
    /// Messages sent during the window.
    pub published: u64,
    pub published_per_sec: f64,
    /// Publishes acknowledged during the window (Herald).
    pub acked: u64,
    pub acked_per_sec: f64,
    /// Messages received by subscribers during the window.
    pub delivered: u64,
    pub delivered_per_sec: f64,
    /// Publish-to-receipt latency (from the scheduled send time in open loop).
    pub latency_us: Option<LatencySummary>,
    /// Publish-to-acknowledgement latency.
    pub ack_latency_us: Option<LatencySummary>,
    pub errors: ErrorCounts,
    pub last_error: Option<String>,
    pub server: Option<ServerCost>,
    pub bench: BenchCost,
}

#[derive(Serialize, Debug, Clone)]
pub struct Connections {
    pub planned: usize,
    pub opened: usize,
    pub failed: u64,
    pub open_secs: f64,
    /// Loopback source addresses the client sockets were bound to (0: the kernel chose).
    pub source_addrs: usize,
}

#[derive(Serialize, Debug, Clone)]
pub struct ServerCost {
    /// The first `--server-pid`.
    pub pid: u32,
    /// Every `--server-pid`; CPU and RSS below are their sums.
    pub pids: Vec<u32>,
    /// Server CPU over the window; 100 = one core.
    pub cpu_percent: f64,
    pub cpu_us_per_delivered: Option<f64>,
    pub cpu_us_per_acked: Option<f64>,
    /// Before the bench opened any connection.
    pub rss_before_kb: u64,
    pub rss_start_kb: u64,
    pub rss_end_kb: u64,
    /// Peak RSS of the server's life so far.
    pub hwm_kb: u64,
    /// (RSS at the end − RSS before connecting) ÷ connections opened.
    pub rss_per_connection_bytes: Option<f64>,
}

#[derive(Serialize, Debug, Clone)]
pub struct BenchCost {
    /// The load generator's own CPU over the window (100 = one core): near the machine's
    /// capacity, the load generator may be the limit.
    pub cpu_percent: f64,
    pub rss_kb: u64,
}

/// `1234567` → `1 234 567`.
pub(crate) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn latency_line(l: &LatencySummary) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {:.1}, n {})",
        thousands(l.p50),
        thousands(l.p90),
        thousands(l.p99),
        thousands(l.p999),
        thousands(l.max),
        l.mean,
        thousands(l.count)
    )
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

impl Report {
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "herald bench · {} · protocol {} · target {}{}",
            self.scenario,
            self.protocol,
            self.target,
            self.publish_target
                .as_deref()
                .map(|t| format!(" · publishers to {t}"))
                .unwrap_or_default()
        );
        let load = match (self.mode, self.rate, self.in_flight) {
            ("open", Some(r), _) => format!("open loop at {} msgs/s", thousands(r.round() as u64)),
            ("closed", _, Some(k)) => format!("closed loop, {k} in flight per publisher"),
            (m, _, _) => m.to_owned(),
        };
        if self.scenario == "idle" {
            let _ = writeln!(
                s,
                "  setup      {} idle {} connections{}",
                thousands(self.connections.planned as u64),
                self.transport,
                if self.subscribers > 0 {
                    format!(", subscribed over {} rooms", self.rooms)
                } else {
                    String::new()
                }
            );
        } else {
            let subs = if self.scenario == "ingest" {
                "no subscribers".to_owned()
            } else {
                format!(
                    "{} rooms × {} {} subscribers",
                    thousands(self.rooms as u64),
                    thousands(self.members_per_room as u64),
                    self.transport
                )
            };
            let batch = if self.events_per_request > 1 {
                format!(" ({} events per request)", self.events_per_request)
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "  setup      {subs}; {} {} publisher(s){batch}; {load}; {}-byte payloads",
                self.publishers,
                self.publish.unwrap_or("-"),
                self.payload_bytes
            );
        }
        let c = &self.connections;
        let _ = writeln!(
            s,
            "  connected  {} of {} in {:.2} s ({} failed, {} retries){}",
            thousands(c.opened as u64),
            thousands(c.planned as u64),
            c.open_secs,
            c.failed,
            self.errors.connect_retries,
            if c.source_addrs > 0 {
                format!(", from 127.0.0.1–{}", c.source_addrs)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            s,
            "  window     {:.2} s after {:.1} s of warm-up",
            self.window_secs, self.warmup_secs
        );
        if self.scenario != "idle" {
            let _ = writeln!(
                s,
                "  published  {} msgs/s ({} in the window)",
                thousands(self.published_per_sec.round() as u64),
                thousands(self.published)
            );
            if self.protocol == "herald" {
                let _ = writeln!(
                    s,
                    "  acked      {} msgs/s ({})",
                    thousands(self.acked_per_sec.round() as u64),
                    thousands(self.acked)
                );
            }
            if self.scenario != "ingest" {
                let _ = writeln!(
                    s,
                    "  delivered  {} msgs/s ({})",
                    thousands(self.delivered_per_sec.round() as u64),
                    thousands(self.delivered)
                );
            }
            if let Some(l) = &self.latency_us {
                let _ = writeln!(s, "  latency µs {}", latency_line(l));
            }
            if let Some(l) = &self.ack_latency_us {
                let _ = writeln!(s, "  ack µs     {}", latency_line(l));
            }
        }
        let e = &self.errors;
        if e.total() == 0 {
            let _ = writeln!(s, "  errors     none");
        } else {
            let _ = writeln!(
                s,
                "  errors     {} (connect {}, disconnect {}, server {}, http {}, send {}, window resets {})",
                e.total(),
                e.connect,
                e.disconnect,
                e.server,
                e.http,
                e.send,
                e.window_reset
            );
            if let Some(last) = &self.last_error {
                let _ = writeln!(s, "  last error {last}");
            }
        }
        match &self.server {
            Some(sv) => {
                let pids: Vec<String> = sv.pids.iter().map(u32::to_string).collect();
                let mut line = format!(
                    "  server     pid {}: {:.1} % CPU",
                    pids.join(" + "),
                    sv.cpu_percent
                );
                if let Some(u) = sv.cpu_us_per_delivered {
                    let _ = write!(line, ", {u:.2} µs CPU per delivered msg");
                } else if let Some(u) = sv.cpu_us_per_acked {
                    let _ = write!(line, ", {u:.2} µs CPU per acked publish");
                }
                let _ = writeln!(s, "{line}");
                let _ = writeln!(
                    s,
                    "  server RSS {} before connecting, {} at the start of the window, {} at the end (peak {})",
                    mb(sv.rss_before_kb),
                    mb(sv.rss_start_kb),
                    mb(sv.rss_end_kb),
                    mb(sv.hwm_kb)
                );
                // Under load the growth is mostly buffers in flight: only idle reads cleanly.
                if let Some(b) = sv
                    .rss_per_connection_bytes
                    .filter(|_| self.scenario == "idle")
                {
                    let _ = writeln!(
                        s,
                        "  per conn   {:.2} KB of server RSS per connection",
                        b / 1000.0
                    );
                }
            }
            None => {
                let _ = writeln!(
                    s,
                    "  server     (pass --server-pid to measure its CPU and memory)"
                );
            }
        }
        let _ = writeln!(
            s,
            "  bench      {:.1} % CPU, {} RSS",
            self.bench.cpu_percent,
            mb(self.bench.rss_kb)
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn groups_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1 000");
        assert_eq!(thousands(1_234_567), "1 234 567");
    }
}
