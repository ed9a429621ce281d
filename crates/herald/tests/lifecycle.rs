//! The process lifecycle, end to end against the real binary: persistence across graceful
//! restarts and `kill -9`, graceful shutdown, retention, configuration layering and the
//! command line (`herald token`, `--help`, defaults with no configuration at all).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// History through the HTTP API with an admin token (sees every event).
async fn history(server: &Server, query: &str) -> Vec<Value> {
    let (status, body) = get(
        server,
        &format!("/api/realtime/events?{query}"),
        Some(&admin_token()),
    )
    .await;
    assert_eq!(status, 200, "history query {query:?} failed: {body}");
    body["events"].as_array().expect("events array").clone()
}

async fn stats(server: &Server) -> Value {
    let (status, body) = get(server, "/api/realtime/stats", Some(&admin_token())).await;
    assert_eq!(status, 200, "stats failed: {body}");
    body
}

fn seq_of(event: &Value) -> u64 {
    event["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no seq in {event}"))
}

/// Publishes one more event and asserts its seq is above every earlier one (never reused).
async fn publish_above(server: &Server, token: &str, max_seq: u64) -> Value {
    let next = publish(
        server,
        token,
        json!({"type": "chat.message", "data": {"n": "after"}}),
    )
    .await;
    assert!(
        seq_of(&next) > max_seq,
        "seq reused: {} <= {max_seq}",
        seq_of(&next)
    );
    next
}

fn id_of(event: &Value) -> String {
    event["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {event}"))
        .to_owned()
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `within`.
async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `herald` command with a clean environment (no `JWT_SECRET`, no `HERALD_*` from the test
/// runner), run in `cwd`.
fn herald(cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(args)
        .env_clear()
        .env("HERALD_LOG", "warn")
        .current_dir(cwd);
    cmd
}

struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion; kills it and fails if it is still running after `within`.
fn run_to_exit(mut cmd: Command, within: Duration) -> Finished {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("herald binary runs");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(out) => {
            let out = out.unwrap();
            Finished {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        }
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("herald {:?} still running after {within:?}", cmd.get_args());
        }
    }
}

/// `herald serve` on a free port in `dir` (its database there) with `extra` flags, run until
/// it exits: for configurations that must stop start-up.
fn serve_to_exit(dir: &Path, extra: &[&str]) -> Finished {
    let db = dir.join("herald.db");
    let mut args = vec!["serve", "--port", "0", "--host", "127.0.0.1"];
    args.extend(["--database", db.to_str().unwrap()]);
    args.extend(extra);
    let mut cmd = herald(dir, &args);
    cmd.env("JWT_SECRET", SECRET);
    run_to_exit(cmd, Duration::from_secs(10))
}

// ---------------------------------------------------------------------------------------------
// 1. Persistence across a graceful restart

#[tokio::test]
async fn history_and_seq_survive_a_graceful_restart() {
    let mut server = Server::start();
    let alice = token("alice");
    let mut acked = Vec::new();
    for n in 0..20 {
        acked.push(
            publish(
                &server,
                &alice,
                json!({"type": "chat.message", "data": {"n": n}, "roomId": "lobby"}),
            )
            .await,
        );
    }
    let seqs: Vec<u64> = acked.iter().map(seq_of).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "sequential publishes get increasing seqs: {seqs:?}"
    );
    let max_seq = *seqs.last().unwrap();

    let status = server.terminate(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "SIGTERM exit status: {status:?}");

    let restarted = server.restart();
    let events = history(&restarted, "limit=1000").await;
    assert_eq!(
        events.len(),
        acked.len(),
        "history after restart: {events:?}"
    );
    let by_id: HashMap<String, &Value> = events.iter().map(|e| (id_of(e), e)).collect();
    for (n, ack) in acked.iter().enumerate() {
        let stored = by_id
            .get(&id_of(ack))
            .unwrap_or_else(|| panic!("event {ack} missing after restart"));
        assert_eq!(stored["seq"], ack["seq"]);
        assert_eq!(stored["type"], "chat.message");
        assert_eq!(stored["data"]["n"], n);
        assert_eq!(stored["userId"], "alice");
        assert_eq!(stored["roomId"], "lobby");
    }

    let next = publish_above(&restarted, &alice, max_seq).await;
    let ids: HashSet<String> = acked.iter().map(id_of).collect();
    assert!(!ids.contains(&id_of(&next)), "event id reused");
}

// ---------------------------------------------------------------------------------------------
// 2. Durability under kill -9

struct Acked {
    id: String,
    seq: u64,
    room: String,
}

/// Events per (round, publisher, room): history is newest-first with at most 1000 per query,
/// so each publisher spreads its events over rooms small enough to read back in one query each.
const ROOM_BUCKET: u64 = 500;
const PUBLISHERS: u64 = 8;

/// Acknowledgements each round waits for (besides its minimum duration) before the kill, so a
/// slow, loaded machine still exercises enough publishes.
const MIN_ACKS: usize = 100;

/// Runs `PUBLISHERS` concurrent HTTP publishers against `server` for at least `run_for` (and
/// `MIN_ACKS` acknowledgements), then kills the server with SIGKILL while their requests are in
/// flight. Returns every acknowledged event.
async fn publish_until_killed(server: &mut Server, round: u32, run_for: Duration) -> Vec<Acked> {
    let url = server.url("/api/realtime/publish");
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicUsize::new(0));
    let client = http();
    let mut tasks = Vec::new();
    for t in 0..PUBLISHERS {
        let (url, stop, acks, client) = (url.clone(), stop.clone(), acks.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let bearer = token(&format!("publisher-{t}"));
            let mut acked = Vec::new();
            let mut unexpected = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let room = format!("r{round}-p{t}-b{}", n / ROOM_BUCKET);
                let res = client
                    .post(&url)
                    .bearer_auth(&bearer)
                    .json(&json!({"type": "load.tick", "data": {"t": t, "n": n}, "roomId": room}))
                    .send()
                    .await;
                n += 1;
                match res {
                    Ok(r) if r.status().as_u16() == 201 => {
                        // Only a fully received acknowledgement counts.
                        if let Ok(body) = r.json::<Value>().await {
                            acked.push(Acked {
                                id: id_of(&body["event"]),
                                seq: seq_of(&body["event"]),
                                room,
                            });
                            acks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // A live server answered something other than 201: never expected here.
                    Ok(r) => unexpected.push(r.status().as_u16()),
                    // The server is gone (killed mid-request, or refusing connections).
                    Err(_) => {}
                }
            }
            (acked, unexpected)
        }));
    }

    let started = Instant::now();
    while started.elapsed() < run_for
        || (acks.load(Ordering::Relaxed) < MIN_ACKS && started.elapsed() < Duration::from_secs(5))
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for task in tasks {
        let (a, unexpected) = tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("publisher stopped")
            .unwrap();
        assert!(unexpected.is_empty(), "non-201 answers: {unexpected:?}");
        acked.extend(a);
    }
    assert!(
        acked.len() >= MIN_ACKS,
        "only {} publishes acknowledged in {:?}",
        acked.len(),
        started.elapsed()
    );
    acked
}

/// Asserts every acknowledged event is in `server`'s history with its seq.
async fn assert_all_stored(server: &Server, acked: &[Acked]) {
    let mut by_room: BTreeMap<&str, Vec<&Acked>> = BTreeMap::new();
    for a in acked {
        by_room.entry(a.room.as_str()).or_default().push(a);
    }
    let mut lost = Vec::new();
    for (room, expected) in &by_room {
        let events = history(server, &format!("roomId={room}&limit=1000")).await;
        assert!(
            events.len() <= ROOM_BUCKET as usize,
            "room {room} holds more events than were ever published to it"
        );
        let stored: HashMap<String, u64> = events.iter().map(|e| (id_of(e), seq_of(e))).collect();
        for a in expected {
            match stored.get(&a.id) {
                Some(&seq) => assert_eq!(seq, a.seq, "event {} changed seq", a.id),
                None => lost.push((a.id.clone(), a.seq)),
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events lost by kill -9, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}

/// Three rounds of: 8 publishers hammering the server, `kill -9` under them, restart. After
/// each restart every acknowledged event (of every round so far) is in history with its seq,
/// history has no seq gaps, and new seqs continue above everything acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_publishes_survive_kill_9() {
    // The first server owns the data directory, so it lives until the end of the test. This
    // is a test of durability under load, not of the HTTP publish budgets (tests/
    // resource_bounds.rs): its publishers are let go as fast as the machine allows.
    let unbounded = [
        ("HERALD_PUBLISH_RATE_PER_IDENTITY", "100000000"),
        ("HERALD_PUBLISH_RATE_PER_IP", "100000000"),
    ];
    let mut first = Server::start_env(&[], &unbounded);
    let mut current: Option<Server> = None;
    let mut acked: Vec<Acked> = Vec::new();
    for round in 0..3 {
        let running = current.as_mut().unwrap_or(&mut first);
        acked.extend(publish_until_killed(running, round, Duration::from_millis(500)).await);
        let seqs: HashSet<u64> = acked.iter().map(|a| a.seq).collect();
        assert_eq!(seqs.len(), acked.len(), "two acknowledgements share a seq");
        let max_acked = *seqs.iter().max().unwrap();

        let restarted = running.restart();
        let server = &*current.insert(restarted);
        assert_all_stored(server, &acked).await;

        // Commits are atomic and seq is assigned densely, so history is 1..=lastSeq with no
        // gaps (events in flight at the kill were either committed whole or not at all).
        let s = stats(server).await;
        let last_seq = s["events"]["lastSeq"].as_u64().expect("lastSeq");
        assert!(last_seq >= max_acked, "{s}");
        assert_eq!(s["events"]["oldestSeq"], 1, "{s}");
        assert_eq!(s["events"]["eventsInHistory"], last_seq, "gaps in seq: {s}");

        let next = publish(
            server,
            &token("after"),
            json!({"type": "load.after", "data": {"round": round}}),
        )
        .await;
        assert!(
            seq_of(&next) > last_seq,
            "seq reused after kill -9: {} <= {last_seq}",
            seq_of(&next)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Graceful shutdown

#[tokio::test]
async fn sigterm_closes_websockets_with_1001_ends_sse_streams_and_exits_0() {
    let server = Server::start();
    let mut ws = Ws::user(&server, "alice").await;
    ws.subscribe(&["chat.*"], json!({})).await;
    let mut sse = Sse::open(&server, "/api/realtime/stream?types=chat.*", None).await;
    assert_eq!(sse.status, 200);
    sse.next_event("connection").await;

    // Both clients are live.
    let ack = publish(
        &server,
        &token("bob"),
        json!({"type": "chat.message", "data": {"text": "last words"}}),
    )
    .await;
    assert_eq!(ws.recv_type("event").await["data"]["id"], ack["id"]);
    assert_eq!(sse.next_event("event").await.json()["id"], ack["id"]);

    let started = Instant::now();
    let mut server = server;
    let exit = tokio::task::spawn_blocking(move || {
        let status = server.terminate(Duration::from_secs(10));
        (server, status)
    });

    let frame = ws
        .closed()
        .await
        .expect("a close frame, not a dropped TCP stream");
    assert_eq!(u16::from(frame.code), 1001, "{frame:?}");

    let close = sse.next_event("close").await.json();
    assert_eq!(close["code"], 1001, "{close}");
    assert!(sse.next().await.is_none(), "SSE stream goes on after close");

    let (_server, status) = exit.await.unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Retention

#[tokio::test]
async fn retention_deletes_old_events_but_never_reuses_their_seq() {
    let mut server = Server::start_env(
        &["--retention-hours", "0"],
        &[("HERALD_RETENTION_INTERVAL_SECS", "1")],
    );
    let alice = token("alice");
    let mut max_seq = 0;
    for n in 0..5 {
        let ack = publish(
            &server,
            &alice,
            json!({"type": "chat.message", "data": {"n": n}}),
        )
        .await;
        max_seq = max_seq.max(seq_of(&ack));
    }

    eventually(
        Duration::from_secs(8),
        "retention to empty the history",
        || async {
            history(&server, "limit=1000")
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let s = stats(&server).await;
    assert_eq!(s["events"]["eventsInHistory"], 0, "{s}");

    server.kill9();
    let restarted = server.restart();
    publish_above(&restarted, &alice, max_seq).await;
}

// ---------------------------------------------------------------------------------------------
// 5. Configuration layering

/// Opens WebSocket connections until the server refuses one; returns how many it accepted
/// and the refusal's HTTP status.
async fn accepted_websockets(server: &Server, at_most: usize) -> (usize, u16) {
    let mut open = Vec::new();
    for _ in 0..at_most {
        match tokio_tungstenite::connect_async(server.ws_url("/ws")).await {
            Ok((stream, _)) => open.push(stream),
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                return (open.len(), res.status().as_u16());
            }
            Err(e) => panic!("websocket connect failed: {e}"),
        }
    }
    panic!("server accepted {at_most} connections without refusing one");
}

/// `herald.toml` < `HERALD_*` < flags, observed through `max_connections`; keys a higher
/// layer does not set still come from the file (`max_message_bytes`).
#[tokio::test]
async fn configuration_layers_file_then_env_then_flags() {
    let toml = "max_connections = 1\nmax_message_bytes = 2000\n";
    struct Case {
        flags: &'static [&'static str],
        env: &'static [(&'static str, &'static str)],
        expected: usize,
    }
    let cases = [
        Case {
            flags: &[],
            env: &[],
            expected: 1,
        },
        Case {
            flags: &[],
            env: &[("HERALD_MAX_CONNECTIONS", "2")],
            expected: 2,
        },
        Case {
            flags: &["--max-connections", "3"],
            env: &[("HERALD_MAX_CONNECTIONS", "2")],
            expected: 3,
        },
    ];
    for Case {
        flags: args,
        env: envs,
        expected,
    } in cases
    {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("herald.toml"), toml).unwrap();
        let server = Server::spawn_env(dir.path(), args, envs);
        let (accepted, refusal) = accepted_websockets(&server, 10).await;
        assert_eq!(
            accepted, expected,
            "max_connections with flags {args:?} and env {envs:?}"
        );
        assert_eq!(refusal, 503);

        let (status, body) = post(
            &server,
            "/api/realtime/publish",
            Some(&token("alice")),
            &json!({"type": "chat.message", "data": {"text": "x".repeat(3000)}}),
        )
        .await;
        assert_eq!(
            status, 413,
            "max_message_bytes from herald.toml not applied: {body}"
        );
        drop(server);
    }
}

/// `worker_threads` sizes the runtime; unset, it is the cores less one (at least one); zero
/// is refused at start-up with the reason.
#[tokio::test]
async fn worker_threads_size_the_runtime() {
    let cores = std::thread::available_parallelism().unwrap().get();
    for (flags, expected) in [
        (&[][..], (cores - 1).max(1)),
        (&["--worker-threads", "3"][..], 3),
    ] {
        let server = Server::start_with(flags);
        let workers = metric(&server, "herald_runtime_workers").await;
        assert_eq!(workers, Some(expected as f64), "{flags:?}");
        // The server works with them.
        let (status, _) = post(
            &server,
            "/api/realtime/publish",
            Some(&token("alice")),
            &json!({"type": "chat.message", "data": {"text": "hi"}}),
        )
        .await;
        assert_eq!(status, 201, "{flags:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = serve_to_exit(dir.path(), &["--worker-threads", "0"]);
    assert_ne!(out.code, Some(0), "started with no worker thread");
    assert!(
        out.stderr.contains("worker_threads must be at least 1"),
        "{}",
        out.stderr
    );
}

#[test]
fn unknown_key_in_herald_toml_is_rejected_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("herald.toml"),
        "max_conections = 5\n", // sic
    )
    .unwrap();
    let out = serve_to_exit(dir.path(), &[]);
    assert_ne!(out.code, Some(0), "started despite an unknown key");
    assert!(
        out.stderr.contains("max_conections"),
        "stderr does not name the unknown key: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("herald.toml"),
        "stderr does not name the file: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("unknown"),
        "stderr does not say the key is unknown: {}",
        out.stderr
    );
    assert!(!out.stdout.contains("listening"), "{}", out.stdout);
}

// ---------------------------------------------------------------------------------------------
// 6. The command line: `herald token`, `--help`

#[tokio::test]
async fn herald_token_mints_a_jwt_the_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = herald(dir.path(), &["token", "--user", "alice"]);
    cmd.env("JWT_SECRET", SECRET);
    let out = run_to_exit(cmd, Duration::from_secs(10));
    assert_eq!(out.code, Some(0), "herald token failed: {}", out.stderr);
    let minted = out.stdout.trim().to_owned();
    assert_eq!(minted.split('.').count(), 3, "not a JWT: {minted:?}");

    let server = Server::start();
    let mut ws = Ws::connect(&server, "/ws").await;
    ws.send(json!({"type": "authenticate", "data": {"token": minted}}))
        .await;
    let r = ws.recv().await;
    assert_eq!(r["type"], "authenticated", "{r}");
    assert_eq!(r["data"]["userId"], "alice", "{r}");

    // The same token works over HTTP, and publishes as alice.
    let ack = publish(
        &server,
        &minted,
        json!({"type": "chat.message", "data": {}}),
    )
    .await;
    let events = history(&server, "limit=10").await;
    let stored = events
        .iter()
        .find(|e| e["id"] == ack["id"])
        .unwrap_or_else(|| panic!("{ack} not in history"));
    assert_eq!(stored["userId"], "alice", "{stored}");
}

#[test]
fn herald_token_without_a_secret_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_to_exit(
        herald(dir.path(), &["token", "--user", "alice"]),
        Duration::from_secs(10),
    );
    assert_ne!(out.code, Some(0), "minted a token without a secret");
    assert!(out.stdout.trim().is_empty(), "printed {:?}", out.stdout);
    assert!(
        out.stderr.contains("JWT_SECRET"),
        "stderr does not say what to set: {}",
        out.stderr
    );
}

#[test]
fn help_lists_commands_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_to_exit(herald(dir.path(), &["--help"]), Duration::from_secs(10));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for word in ["serve", "token", "--config"] {
        assert!(
            out.stdout.contains(word),
            "--help lacks {word}: {}",
            out.stdout
        );
    }

    let out = run_to_exit(
        herald(dir.path(), &["serve", "--help"]),
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for flag in [
        "--host",
        "--port",
        "--database",
        "--cors-origin",
        "--retention-hours",
        "--max-connections",
        "--max-message-bytes",
        "--ws-echo",
        "--config",
    ] {
        assert!(
            out.stdout.contains(flag),
            "serve --help lacks {flag}: {}",
            out.stdout
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 7. No configuration at all

#[tokio::test]
async fn serve_without_configuration_uses_local_database_and_generates_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(Some(
        herald(dir.path(), &["serve", "--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("herald binary runs"),
    ));
    let pid = nix::unistd::Pid::from_raw(child.0.as_ref().unwrap().id() as i32);
    let stdout = child.0.as_mut().unwrap().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    while !lines
        .iter()
        .any(|l: &String| l.contains("JWT_SECRET is not set"))
    {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("no generated-secret notice on stdout; got {lines:?}"),
        }
    }
    let text = lines.join("\n");

    let port: u16 = lines[0]
        .strip_prefix("Herald listening on http://")
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line: {text}"));
    assert!(
        text.contains("database:  ./herald.db"),
        "database line: {text}"
    );
    assert!(
        dir.path().join("herald.db").is_file(),
        "./herald.db not created in the working directory"
    );
    let admin = lines
        .iter()
        .find_map(|l| l.split_once("admin token (Authorization: Bearer ...): "))
        .map(|(_, t)| t.trim().to_owned())
        .unwrap_or_else(|| panic!("no admin token on stdout: {text}"));

    // The printed admin token is valid for this run; tokens signed with any other secret are not.
    let base = format!("http://127.0.0.1:{port}");
    let res = http()
        .get(format!("{base}/api/realtime/stats"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let res = http()
        .get(format!("{base}/api/realtime/stats"))
        .bearer_auth(admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401, "a foreign secret was accepted");

    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut c = child.0.take().unwrap();
    let waited = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || c.wait().unwrap()),
    )
    .await;
    let Ok(status) = waited else {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        panic!("herald did not exit within 10 s of SIGTERM");
    };
    assert_eq!(status.unwrap().code(), Some(0));
}

/// Kills a directly spawned `herald` if the test fails before stopping it.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
