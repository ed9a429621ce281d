//! The bounds on the HTTP connections a client can hold, tried as an attacker would, with raw
//! TCP clients against the real binary: the header-read timeout (a silent client, a
//! slowloris), the idle keep-alive timeout (and the long-lived connections it must spare),
//! the cap on sockets per client address and in all, and the memory that idle sockets cost.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to the server from the loopback address `from` (any 127.x address works).
async fn connect_from(server: &Server, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket.connect(server.addr).await.unwrap()
}

/// How long until the server closes `tcp` (a read returns end-of-file or a reset), reading and
/// discarding whatever it sends; panics after `within`.
async fn closed_after(tcp: &mut TcpStream, within: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, tcp.read(&mut buf)).await {
            Err(_) => panic!("the server kept the connection open for {within:?}"),
            Ok(Ok(0) | Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends a `GET` on a kept-alive connection and reads its response: status and body.
async fn get_on(tcp: &mut TcpStream, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: herald\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    read_response(tcp).await
}

/// One whole response with a `content-length` (what every non-streaming answer has).
async fn read_response(tcp: &mut TcpStream) -> (u16, String) {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().unwrap())
                })
                .unwrap_or_else(|| panic!("no content-length: {head}"));
            if body.len() >= length {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                return (status, body[..length].to_owned());
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no whole response: {text:?}"))
            .unwrap_or(0);
        assert!(n > 0, "closed before a whole response: {text:?}");
        got.extend_from_slice(&chunk[..n]);
    }
}

/// `/metrics`, asked from the loopback address `from` (the bounds may have no room for
/// 127.0.0.1), as soon as the server has room for the request.
async fn metrics_from(server: &Server, from: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut tcp = connect_from(server, from).await;
        match get_on(&mut tcp, "/metrics").await {
            (200, text) => return text,
            (status, _) => assert!(Instant::now() < deadline, "/metrics: {status}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of `series` (name and labels) in a `/metrics` text.
fn series(metrics: &str, series: &str) -> Option<f64> {
    let prefix = format!("{series} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
}

async fn metric_from(server: &Server, from: &str, name: &str) -> Option<f64> {
    series(&metrics_from(server, from).await, name)
}

/// The server process's resident memory, in bytes.
fn rss(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// A refused socket is answered at once, without being asked anything: `status`, with
/// `TOO_MANY_CONNECTIONS`, and closed.
async fn assert_refused(tcp: &mut TcpStream, status: u16) {
    let (got, body) = read_response(tcp).await;
    assert_eq!(got, status, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "TOO_MANY_CONNECTIONS", "{body}");
    closed_after(tcp, WAIT).await;
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_closed_after_the_header_read_timeout() {
    let server = Server::start_with(&["--header-read-timeout-secs", "1"]);
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let after = closed_after(&mut silent, Duration::from_secs(5)).await;
    assert!(
        after >= Duration::from_millis(800),
        "closed too early: {after:?}"
    );
    assert_eq!(
        metric(
            &server,
            r#"herald_http_timeouts_total{timeout="header_read"}"#
        )
        .await,
        Some(1.0)
    );
}

/// A slowloris: a request head sent a byte every 300 ms, never finished. The trickle does not
/// keep it alive: its head had one second from the connection's start, on the first request as
/// on a kept-alive connection's next one (one second from its first byte, however long the
/// connection may idle before it).
#[tokio::test]
async fn a_request_head_sent_byte_by_byte_is_cut_off_by_the_header_read_timeout() {
    let server = Server::start_with(&[
        "--header-read-timeout-secs",
        "1",
        "--http-idle-timeout-secs",
        "30",
    ]);
    let head = "GET /health HTTP/1.1\r\nHost: herald\r\nX-Padding: slowly\r\n".repeat(20);

    async fn trickle(tcp: TcpStream, head: &str) -> (Duration, usize) {
        let (mut read, mut write) = tcp.into_split();
        let start = Instant::now();
        let sent = async {
            let mut sent = 0;
            for byte in head.as_bytes() {
                if write.write_all(&[*byte]).await.is_err() {
                    break;
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            sent
        };
        let closed = async {
            let mut buf = [0u8; 256];
            while let Ok(1..) = read.read(&mut buf).await {}
            start.elapsed()
        };
        tokio::select! {
            after = closed => (after, 0),
            sent = sent => panic!("the whole head ({sent} bytes) went through"),
        }
    }

    // The first request of a connection.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (after, _) = trickle(tcp, &head).await;
    assert!(
        (Duration::from_millis(800)..Duration::from_millis(2500)).contains(&after),
        "closed after {after:?}"
    );

    // A kept-alive connection's second request, started after an idle pause longer than the
    // header-read timeout (which is not an idle timeout).
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(get_on(&mut tcp, "/health").await.0, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (after, _) = trickle(tcp, &head).await;
    assert!(
        (Duration::from_millis(800)..Duration::from_millis(2500)).contains(&after),
        "closed {after:?} after the next request's first byte"
    );
    assert_eq!(
        metric(
            &server,
            r#"herald_http_timeouts_total{timeout="header_read"}"#
        )
        .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let server = Server::start_with(&[
        "--header-read-timeout-secs",
        "1",
        "--http-idle-timeout-secs",
        "2",
    ]);
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(get_on(&mut tcp, "/health").await.0, 200);
    // Idle longer than the header-read timeout, shorter than the idle one: still served.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get_on(&mut tcp, "/health").await.0, 200);
    let after = closed_after(&mut tcp, Duration::from_secs(6)).await;
    assert!(
        (Duration::from_millis(1800)..Duration::from_millis(4000)).contains(&after),
        "closed {after:?} after its last response"
    );
    assert_eq!(
        metric(&server, r#"herald_http_timeouts_total{timeout="idle"}"#).await,
        Some(1.0)
    );
}

/// WebSockets and event streams (answered by the listener, or by hyper for a stream route
/// asked without `Accept: text/event-stream`), and a long poll in flight, are not idle HTTP:
/// held longer than both timeouts, they stay open and still receive events.
#[tokio::test]
async fn websockets_event_streams_and_long_polls_outlive_both_timeouts() {
    let server = Server::start_with(&[
        "--header-read-timeout-secs",
        "1",
        "--http-idle-timeout-secs",
        "1",
    ]);
    let mut ws = Ws::connect(&server, "/ws").await;
    ws.subscribe(&["bounds.*"], json!({})).await;
    let mut sse = Sse::open(&server, "/api/realtime/stream?types=bounds.*", None).await;
    assert_eq!(sse.status, 200);
    sse.next_event("connection").await;
    let (status, created) = post(
        &server,
        "/api/streams",
        Some(&admin_token()),
        &json!({"name": "ticker"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let mut by_hyper = TcpStream::connect(server.addr).await.unwrap();
    by_hyper
        .write_all(b"GET /ticker HTTP/1.1\r\nHost: herald\r\n\r\n")
        .await
        .unwrap();
    let poll = tokio::spawn({
        let url = server.url("/api/realtime/poll?types=nothing.here&timeout=3");
        async move { http().get(url).send().await.unwrap().status().as_u16() }
    });

    tokio::time::sleep(Duration::from_millis(2500)).await;
    publish(
        &server,
        API_KEY,
        json!({"type": "bounds.test", "data": {"n": 1}}),
    )
    .await;
    let (status, sent) = post(
        &server,
        "/api/streams/ticker",
        Some(API_KEY),
        &json!({"price": 1}),
    )
    .await;
    assert_eq!(status, 200, "{sent}");

    let event = ws.recv_type("event").await;
    assert_eq!(event["data"]["data"]["n"], 1, "{event}");
    let event = sse.next_event("event").await;
    assert_eq!(event.json()["data"]["n"], 1, "{event:?}");
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains(r#"{"price":1}"#) {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, by_hyper.read(&mut chunk))
            .await
            .expect("the stream served by hyper is still open")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(poll.await.unwrap(), 200, "the long poll was answered");
    assert_eq!(
        metric(&server, "herald_http_timeouts_total{timeout=\"idle\"}").await,
        None
    );
}

#[tokio::test]
async fn sockets_per_address_are_capped_and_other_addresses_still_connect() {
    let server = Server::start_with(&["--max-connections-per-ip", "20"]);
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(connect_from(&server, "127.0.0.1").await);
    }
    let mut refused = connect_from(&server, "127.0.0.1").await;
    assert_refused(&mut refused, 429).await;
    // WebSockets count the same.
    let err = tokio_tungstenite::connect_async(server.ws_url("/ws"))
        .await
        .expect_err("a 21st socket from the address");
    assert!(err.to_string().contains("429"), "{err}");

    let mut other = connect_from(&server, "127.0.0.2").await;
    assert_eq!(get_on(&mut other, "/health").await.0, 200);
    let metrics = metrics_from(&server, "127.0.0.3").await;
    let refusals = r#"herald_sockets_refused_total{reason="max_connections_per_ip"}"#;
    assert_eq!(series(&metrics, refusals), Some(2.0), "{metrics}");
    assert_eq!(
        series(&metrics, "herald_sockets_open"),
        Some(22.0),
        "20 held, the other address's and the one asking"
    );

    // A socket closed gives its place back.
    held.pop();
    let deadline = Instant::now() + WAIT;
    loop {
        let mut tcp = connect_from(&server, "127.0.0.1").await;
        match get_on(&mut tcp, "/health").await.0 {
            200 => break,
            429 => assert!(Instant::now() < deadline, "no room after a socket closed"),
            other => panic!("{other}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_cap_on_all_sockets_holds_over_plain_http_and_frees_as_they_close() {
    let server = Server::start_with(&["--max-sockets", "30"]);
    // Plain HTTP connections, kept alive after a request each, from three addresses.
    let mut held = Vec::new();
    for i in 0..30 {
        let mut tcp = connect_from(&server, &format!("127.0.0.{}", 1 + i % 3)).await;
        assert_eq!(get_on(&mut tcp, "/health").await.0, 200);
        held.push(tcp);
    }
    let mut refused = connect_from(&server, "127.0.0.4").await;
    assert_refused(&mut refused, 503).await;
    let err = tokio_tungstenite::connect_async(server.ws_url("/ws"))
        .await
        .expect_err("a WebSocket beyond the cap");
    assert!(err.to_string().contains("503"), "{err}");

    // Ten close: ten new ones fit (once the server has seen the closes), not eleven.
    held.truncate(20);
    let deadline = Instant::now() + WAIT;
    while held.len() < 30 {
        let mut tcp = connect_from(&server, "127.0.0.5").await;
        match get_on(&mut tcp, "/health").await {
            (200, _) => held.push(tcp),
            (503, _) => {
                assert!(Instant::now() < deadline, "no room after sockets closed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    let mut refused = connect_from(&server, "127.0.0.4").await;
    assert_refused(&mut refused, 503).await;

    held.pop();
    let refusals = r#"herald_sockets_refused_total{reason="max_sockets"}"#;
    let counted = metric_from(&server, "127.0.0.6", refusals).await.unwrap();
    assert!(counted >= 3.0, "{counted}");
}

/// 2 000 sockets that never send anything cost little while they are held (the listener
/// allocates nothing for a socket until its first byte), and are all closed by the server
/// after the header-read timeout; the memory does not ratchet up over a second round.
#[tokio::test]
async fn idle_sockets_are_cheap_and_released() {
    const SOCKETS: usize = 2000;
    let server = Server::start_with(&["--header-read-timeout-secs", "2"]);
    // Warm up: the first requests grow the allocator's pools.
    for _ in 0..20 {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        get_on(&mut tcp, "/health").await;
    }
    let before = rss(&server);
    let mut rounds = Vec::new();
    for _ in 0..2 {
        let mut held = Vec::with_capacity(SOCKETS);
        for i in 0..SOCKETS {
            // Four addresses: 500 each, under the default bound per address.
            held.push(connect_from(&server, &format!("127.0.0.{}", 1 + i % 4)).await);
        }
        let deadline = Instant::now() + WAIT;
        while metric_from(&server, "127.0.0.5", "herald_sockets_open").await
            != Some(SOCKETS as f64 + 1.0)
        {
            assert!(Instant::now() < deadline, "not all sockets were accepted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let held_rss = rss(&server);
        // The server closes them all: a read on each sees the end.
        for tcp in &mut held {
            closed_after(tcp, Duration::from_secs(10)).await;
        }
        let deadline = Instant::now() + WAIT;
        while metric_from(&server, "127.0.0.5", "herald_sockets_open").await != Some(1.0) {
            assert!(Instant::now() < deadline, "sockets still counted as open");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rounds.push((held_rss, rss(&server)));
    }
    let growth = |rss: u64| rss.saturating_sub(before);
    eprintln!(
        "RSS before {} KiB; with {SOCKETS} idle sockets and after, per round: {:?} KiB",
        before / 1024,
        rounds
            .iter()
            .map(|(h, a)| (h / 1024, a / 1024))
            .collect::<Vec<_>>()
    );
    for (held, _) in &rounds {
        // ~1.1 KB per socket measured (task, socket registration, slot); 8 KiB each when a
        // read buffer was allocated up front.
        assert!(
            growth(*held) < (SOCKETS * 3 * 1024) as u64,
            "{SOCKETS} idle sockets grew RSS by {} KiB",
            growth(*held) / 1024
        );
    }
    let (first_held, _) = rounds[0];
    let (second_held, second_after) = rounds[1];
    assert!(
        second_held < first_held + 2 * 1024 * 1024,
        "a second round grew RSS from {} to {} KiB",
        first_held / 1024,
        second_held / 1024
    );
    assert!(second_after <= second_held + 1024 * 1024);
}

/// Under an open-file limit of 400, `max_sockets` is kept 256 below it whatever it is set to:
/// a flood of sockets is refused with 503 instead of the process running out of descriptors,
/// and once the flood leaves the server serves (and stores) as before.
#[tokio::test]
async fn the_open_file_limit_bounds_the_sockets_and_the_process_never_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new("prlimit")
        .arg("--nofile=400:400")
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .args(["--max-sockets", "100000", "--max-connections-per-ip", "0"])
        .arg("--database")
        .arg(dir.path().join("herald.db"))
        .env("JWT_SECRET", SECRET)
        .env("HERALD_API_KEYS", format!("[\"{API_KEY}\"]"))
        .env("HERALD_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("prlimit runs herald");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    let addr: SocketAddr = first
        .trim()
        .strip_prefix("Herald listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .parse()
        .unwrap();
    let url = |path: &str| format!("http://{addr}{path}");

    let mut flood = Vec::new();
    for _ in 0..300 {
        flood.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A refused socket was answered at once; an admitted one has nothing to read.
    let mut held = Vec::new();
    let mut refused = 0;
    for tcp in flood {
        let mut buf = [0u8; 512];
        match tcp.try_read(&mut buf) {
            Ok(n) => {
                assert!(buf[..n].starts_with(b"HTTP/1.1 503 "), "{n} bytes");
                refused += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => held.push(tcp),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(held.len(), 400 - 256, "admitted");
    assert_eq!(refused, 300 - held.len());
    drop(held);

    let client = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    let ack = loop {
        let res = client
            .post(url("/api/realtime/publish"))
            .bearer_auth(API_KEY)
            .json(&json!({"type": "bounds.after", "data": {}}))
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            201 => break res.json::<Value>().await.unwrap(),
            503 => assert!(Instant::now() < deadline, "no room after the flood"),
            other => panic!("{other}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ack["event"]["success"], true, "{ack}");
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!stderr.contains("Too many open files"), "{stderr}");
    assert!(stderr.contains("max_sockets is above"), "{stderr}");
}
