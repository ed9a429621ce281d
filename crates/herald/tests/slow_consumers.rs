//! Slow and dead SSE consumers (guarantee 3) against the real binary. A client that stops
//! reading is unregistered as soon as its bounded buffer overflows, its TCP connection is
//! dropped when a write to it makes no progress for `--write-timeout-secs`, the others keep
//! receiving everything, and it can resume with `Last-Event-ID`.
//!
//! The stalled clients speak raw HTTP/1.0 over a socket with a tiny receive buffer: HTTP/1.0
//! gets a close-delimited body (no chunked framing to undo), and the small buffer makes the
//! server's writes block soon.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Payload padding: big events fill the socket buffers quickly.
const PAD: usize = 8 * 1024;

/// Enough events to fill the kernel's buffers between the server and a client that does not
/// read, however far they have grown: the send buffer may reach `tcp_wmem`'s maximum (4 MiB
/// by default) even when the peer's window is tiny, so publish about twice that.
fn flood_size() -> usize {
    let wmem_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse::<usize>().ok())
        .unwrap_or(4 << 20);
    (2 * wmem_max / PAD + 200).max(500)
}

/// `herald_slow_consumers_total` from `/metrics` (0 before the first one).
async fn slow_consumers(server: &Server) -> f64 {
    metric(server, "herald_slow_consumers_total")
        .await
        .unwrap_or(0.0)
}

/// Polls `/metrics` until `herald_slow_consumers_total` is at least `n`; returns it.
async fn slow_consumers_reach(server: &Server, n: f64) -> f64 {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let v = slow_consumers(server).await;
        if v >= n || std::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// An SSE client on a raw socket, which reads only when told to.
struct RawSse {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// Where the unparsed body starts in `buf` (after the response head).
    body_at: Option<usize>,
}

impl RawSse {
    async fn open(server: &Server, path: &str) -> RawSse {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut tcp = socket.connect(server.addr).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.0\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            server.addr
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        RawSse {
            tcp,
            buf: Vec::new(),
            body_at: None,
        }
    }

    /// Takes the complete records received so far as `(event name, id)`.
    fn records(&mut self) -> Vec<(String, Option<u64>)> {
        if self.body_at.is_none() {
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return Vec::new();
            };
            let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            assert!(head.starts_with("HTTP/1.0 200"), "{head}");
            self.body_at = Some(end + 4);
        }
        let start = self.body_at.unwrap();
        let mut records = Vec::new();
        let mut at = start;
        while let Some(len) = self.buf[at..].windows(2).position(|w| w == b"\n\n") {
            let record = String::from_utf8_lossy(&self.buf[at..at + len]).into_owned();
            at += len + 2;
            let field = |name: &str| {
                record
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::to_owned)
            };
            records.push((
                field("event: ").unwrap_or_default(),
                field("id: ").map(|id| id.parse().unwrap()),
            ));
        }
        self.buf.drain(start..at);
        records
    }

    /// Reads until an `event` record arrives; returns its id (the event's seq).
    async fn next_event_id(&mut self) -> u64 {
        loop {
            if let Some((_, id)) = self.records().into_iter().find(|(e, _)| e == "event") {
                return id.unwrap();
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
                .await
                .expect("timed out waiting for an event")
                .unwrap();
            assert!(n > 0, "the stream ended");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads what the kernel still holds for this client until the server's end of the
    /// connection; returns the ids of the complete `event` records in it.
    async fn drain_to_end(&mut self) -> Vec<u64> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let read = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
                .await
                .expect("the server never ended the stalled connection");
            match read {
                Ok(0) | Err(_) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        self.records()
            .into_iter()
            .filter(|(e, _)| e == "event")
            .map(|(_, id)| id.unwrap())
            .collect()
    }
}

#[tokio::test]
async fn a_stalled_sse_client_is_dropped_while_a_reader_gets_everything_and_it_resumes() {
    let server = Server::start_with(&["--outbox-max-messages", "50", "--write-timeout-secs", "2"]);
    let path = "/api/realtime/stream?types=load.*";
    let events = flood_size();

    let mut slow = RawSse::open(&server, path).await;
    let mut reader = Sse::open(&server, path, None).await;
    stats_until(&server, |s| s["connections"]["byType"]["sse"] == 2).await;
    // The slow client reads the first event, then stops reading.
    let first = flood(&server, 1, PAD).await[0];
    assert_eq!(slow.next_event_id().await, first);

    let reading = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < events + 1 {
            seqs.push(
                reader.next_event("event").await.json()["seq"]
                    .as_u64()
                    .unwrap(),
            );
        }
        (reader, seqs)
    });
    let acked = flood(&server, events, PAD).await;
    let (_reader, got) = reading.await.unwrap();
    let all: Vec<u64> = [first].into_iter().chain(acked.iter().copied()).collect();
    assert_eq!(got, all, "the reader got every event, in order");

    // The slow one is gone from the server's books and counted once...
    stats_until(&server, |s| s["connections"]["total"] == 1).await;
    assert_eq!(slow_consumers_reach(&server, 1.0).await, 1.0);
    // ...and its connection ends after a gap-free run of what was already on its way.
    let tail = slow.drain_to_end().await;
    let mut last = first;
    for seq in tail {
        assert_eq!(seq, last + 1, "what the stalled client got is gap-free");
        last = seq;
    }
    assert!(
        last < *all.last().unwrap(),
        "the stalled client was cut off"
    );

    // It resumes from the last event it got, and gets exactly the ones it missed.
    let res = reqwest::Client::new()
        .get(server.url(path))
        .header("last-event-id", last.to_string())
        .send()
        .await
        .unwrap();
    let mut resumed = Sse::from_response(res);
    assert_eq!(resumed.status, 200);
    let missed: Vec<u64> = all.iter().copied().filter(|s| *s > last).collect();
    for want in &missed {
        let e = resumed.next_event("event").await;
        assert_eq!(e.id, Some(want.to_string()), "{e:?}");
    }
}

#[tokio::test]
async fn an_overflowing_sse_stream_is_unregistered_before_its_write_times_out() {
    // A write timeout far beyond the test's length: only the overflow can free the slot.
    let server = Server::start_with(&[
        "--outbox-max-messages",
        "50",
        "--write-timeout-secs",
        "3600",
    ]);
    let _slow = RawSse::open(&server, "/api/realtime/stream?types=load.*").await;
    stats_until(&server, |s| s["connections"]["total"] == 1).await;
    flood(&server, flood_size(), PAD).await;
    stats_until(&server, |s| {
        s["connections"]["total"] == 0 && s["connections"]["subscriptions"] == 0
    })
    .await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_by_the_write_timeout() {
    // Queues far larger than what is published: only the write timeout can end the stream.
    let server = Server::start_with(&[
        "--outbox-max-messages",
        "1000000",
        "--outbox-max-bytes",
        "1000000000",
        "--write-timeout-secs",
        "1",
    ]);
    let mut slow = RawSse::open(&server, "/api/realtime/stream?types=load.*").await;
    stats_until(&server, |s| s["connections"]["total"] == 1).await;
    let acked = flood(&server, flood_size(), PAD).await;
    stats_until(&server, |s| s["connections"]["total"] == 0).await;
    assert_eq!(slow_consumers_reach(&server, 1.0).await, 1.0);
    let got = slow.drain_to_end().await;
    assert!(got.len() < acked.len(), "the stalled client was cut off");
    assert_eq!(
        got,
        acked[..got.len()],
        "in order, without gaps, until then"
    );
}
