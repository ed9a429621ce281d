//! The client commands against the real binary and a real server: `herald publish` prints the
//! acknowledgement of a durable event, `herald subscribe` prints matching events as JSON lines
//! and resumes after its connection drops, bad credentials end with a clear error, and every
//! command has help.

mod common;

use std::process::Stdio;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// `herald <args>` against `server`, with none of the caller's `HERALD_*` client settings.
fn herald(server: &Server, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_herald"));
    c.args(args)
        .arg("--url")
        .arg(server.url(""))
        .env_remove("HERALD_TOKEN")
        .env_remove("HERALD_API_KEY")
        .env_remove("HERALD_URL")
        .kill_on_drop(true);
    c
}

/// Runs a command to its end; returns whether it succeeded, its stdout and its stderr.
async fn run(mut command: Command) -> (bool, String, String) {
    let out = tokio::time::timeout(WAIT, command.output())
        .await
        .expect("the command did not finish")
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

/// A running `herald subscribe`.
struct Subscriber {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
    /// The stderr lines read so far.
    notices: Vec<String>,
}

impl Subscriber {
    /// Starts it and waits until it says it is subscribed.
    async fn start(mut command: Command) -> Subscriber {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut s = Subscriber {
            stdout: BufReader::new(child.stdout.take().unwrap()).lines(),
            stderr: BufReader::new(child.stderr.take().unwrap()).lines(),
            child,
            notices: Vec::new(),
        };
        s.notice_containing("subscribed to").await;
        s
    }

    /// Reads stderr until a line contains `text`.
    async fn notice_containing(&mut self, text: &str) -> String {
        loop {
            let line = tokio::time::timeout(WAIT, self.stderr.next_line())
                .await
                .unwrap_or_else(|_| panic!("no notice {text:?}; got {:?}", self.notices))
                .unwrap()
                .unwrap_or_else(|| panic!("stderr ended; got {:?}", self.notices));
            self.notices.push(line.clone());
            if line.contains(text) {
                return line;
            }
        }
    }

    /// The next event printed on stdout.
    async fn event(&mut self) -> Value {
        let line = tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .expect("no event printed")
            .unwrap()
            .expect("stdout ended");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
    }

    /// Ctrl-C; asserts a clean exit.
    async fn interrupt(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id().unwrap() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("herald subscribe did not exit on Ctrl-C")
            .unwrap();
        assert!(status.success(), "{status}");
    }
}

#[tokio::test]
async fn publish_prints_the_acknowledged_event_which_is_then_in_history() {
    let server = Server::start();
    let alice = token("alice");
    let (ok, out, err) = run(herald(
        &server,
        &[
            "publish",
            "chat.message",
            r#"{"text":"hi"}"#,
            "--room",
            "lobby",
            "--token",
            &alice,
        ],
    ))
    .await;
    assert!(ok, "{err}");
    let ack: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(ack["success"], true, "{ack}");
    assert_eq!(ack["type"], "chat.message", "{ack}");

    // HERALD_TOKEN stands for --token; an API key may publish on behalf of another user.
    let mut by_env = herald(&server, &["publish", "chat.message"]);
    by_env.env("HERALD_TOKEN", &alice);
    let (ok, _, err) = run(by_env).await;
    assert!(ok, "{err}");
    let (ok, out, err) = run(herald(
        &server,
        &[
            "publish",
            "order.created",
            r#"{"n":1}"#,
            "--api-key",
            API_KEY,
            "--user",
            "bob",
        ],
    ))
    .await;
    assert!(ok, "{err}");
    let on_behalf: Value = serde_json::from_str(out.trim()).unwrap();

    let (status, history) = get(
        &server,
        "/api/realtime/events?types=*&since=0",
        Some(API_KEY),
    )
    .await;
    assert_eq!(status, 200, "{history}");
    let stored = |seq: &Value| {
        history["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["seq"] == *seq)
            .unwrap_or_else(|| panic!("seq {seq} not in {history}"))
            .clone()
    };
    let e = stored(&ack["seq"]);
    assert_eq!(
        (&e["id"], &e["data"], &e["userId"], &e["roomId"]),
        (
            &ack["id"],
            &json!({"text": "hi", "user": "alice"}),
            &json!("alice"),
            &json!("lobby")
        )
    );
    let e = stored(&on_behalf["seq"]);
    assert_eq!(
        (&e["type"], &e["userId"]),
        (&json!("order.created"), &json!("bob"))
    );
}

/// The newest `seq` the server has committed (0 before any).
async fn last_seq(server: &Server) -> u64 {
    let (status, health) = get(server, "/health", None).await;
    assert_eq!(status, 200, "{health}");
    health["events"]["lastSeq"].as_u64().unwrap()
}

#[tokio::test]
async fn publish_from_a_file_publishes_every_line_in_order_in_batches() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    // More than one request's worth (1 000 per request), and a blank line.
    let mut lines: Vec<String> = (0..1205)
        .map(|n| json!({"type": "import.row", "data": {"n": n}, "roomId": "r"}).to_string())
        .collect();
    lines.insert(7, String::new());
    std::fs::write(&file, lines.join("\n")).unwrap();
    let path = file.to_str().unwrap();

    let (ok, out, err) = run(herald(
        &server,
        &["publish", "--from", path, "--api-key", API_KEY],
    ))
    .await;
    assert!(ok, "{err}");
    let acks: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(acks.len(), 1205, "one acknowledgement per event");
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack["seq"], i as u64 + 1, "in the file's order: {ack}");
    }
    let (_, newest) = get(&server, "/api/realtime/events?limit=1", Some(API_KEY)).await;
    assert_eq!(newest["events"][0]["data"]["n"], 1204, "{newest}");
    assert_eq!(newest["events"][0]["roomId"], "r", "{newest}");

    // Standard input.
    let mut command = herald(&server, &["publish", "--from", "-", "--api-key", API_KEY]);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, b"{\"type\":\"a.b\"}\n{\"type\":\"a.c\"}\n")
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 2);
    assert_eq!(last_seq(&server).await, 1207);

    // Writes `contents` to the file and publishes it; whether that succeeded, and stderr.
    let publish_file = |contents: &'static str| {
        std::fs::write(&file, contents).unwrap();
        let command = herald(&server, &["publish", "--from", path, "--api-key", API_KEY]);
        async move {
            let (ok, _, err) = run(command).await;
            (ok, err)
        }
    };
    // A line that is not a JSON object: nothing is sent.
    let (ok, err) = publish_file("{\"type\":\"a.b\"}\n{\"type\":\"a.c\"}\nnot json\n").await;
    assert!(!ok && err.contains(":3: not JSON"), "{err}");
    let (ok, err) = publish_file("[1]\n").await;
    assert!(!ok && err.contains(":1: not a JSON object"), "{err}");
    // An event the server refuses: its request is not published, and the error says so.
    let (ok, err) = publish_file("{\"type\":\"a.b\"}\n{\"type\":\"bad type!\"}\n").await;
    assert!(
        !ok && err.contains("from line 1 on were not published"),
        "{err}"
    );
    assert!(err.contains("events[1]"), "{err}");
    assert_eq!(last_seq(&server).await, 1207, "nothing more was published");
}

#[tokio::test]
async fn subscribe_prints_matching_events_published_afterwards_as_json_lines() {
    let server = Server::start_open();
    let mut sub = Subscriber::start(herald(
        &server,
        &[
            "subscribe",
            "--types",
            "chat.*,news.item",
            "--room",
            "lobby",
        ],
    ))
    .await;
    let alice = token("alice");
    let skipped = [
        json!({"type": "chat.message", "roomId": "elsewhere"}),
        json!({"type": "order.created", "roomId": "lobby"}),
    ];
    for body in skipped {
        publish(&server, &alice, body).await;
    }
    let hit = publish(
        &server,
        &alice,
        json!({"type": "chat.message", "roomId": "lobby", "data": {"text": "hi"}}),
    )
    .await;
    let news = publish(
        &server,
        &alice,
        json!({"type": "news.item", "roomId": "lobby"}),
    )
    .await;

    let e = sub.event().await;
    assert_eq!(
        (
            &e["id"],
            &e["seq"],
            &e["type"],
            &e["data"],
            &e["userId"],
            &e["roomId"]
        ),
        (
            &hit["id"],
            &hit["seq"],
            &json!("chat.message"),
            &json!({"text": "hi", "user": "alice"}),
            &json!("alice"),
            &json!("lobby")
        ),
    );
    assert_eq!(e["timestamp"], hit["timestamp"]);
    assert_eq!(sub.event().await["seq"], news["seq"]);
    sub.interrupt().await;
}

#[tokio::test]
async fn subscribe_resumes_after_the_server_drops_its_connection() {
    // A two-message outbound buffer: a committed batch of several events overflows it, and
    // the server disconnects the subscriber as a slow consumer (4008).
    let server = Server::start_with(&["--outbox-max-messages", "2"]);
    let start = get(&server, "/health", None).await.1["events"]["lastSeq"]
        .as_u64()
        .unwrap();
    let mut sub = Subscriber::start(herald(
        &server,
        &[
            "subscribe",
            "--types",
            "load.*",
            "--since",
            &start.to_string(),
            "--api-key",
            API_KEY,
        ],
    ))
    .await;

    let client = reqwest::Client::new();
    let url = server.url("/api/realtime/publish");
    let mut acked: Vec<u64> = futures_util::stream::iter(0..200)
        .map(|i| {
            let req = client
                .post(&url)
                .bearer_auth(API_KEY)
                .json(&json!({"type": "load.test", "data": {"i": i}}));
            async move {
                let body: Value = req.send().await.unwrap().json().await.unwrap();
                body["event"]["seq"].as_u64().unwrap()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    acked.sort_unstable();

    let mut got = Vec::new();
    while got.len() < acked.len() {
        got.push(sub.event().await["seq"].as_u64().unwrap());
    }
    assert_eq!(got, acked, "every event once, in order, across reconnects");
    sub.notice_containing("reconnecting").await;
    sub.interrupt().await;
}

#[tokio::test]
async fn bad_credentials_and_unreachable_servers_fail_with_a_clear_message() {
    let server = Server::start();
    let expired = token_with("alice", None, -3600, SECRET);
    for bad in ["garbage", expired.as_str()] {
        let (ok, out, err) = run(herald(
            &server,
            &["publish", "chat.message", "--token", bad],
        ))
        .await;
        assert!(!ok && out.is_empty(), "{out}");
        assert!(
            err.contains("refused") && err.contains("AUTH_FAILED"),
            "{err}"
        );

        let (ok, out, err) = run(herald(&server, &["subscribe", "--token", bad])).await;
        assert!(!ok && out.is_empty(), "{out}");
        assert!(
            err.contains("authentication refused") && err.contains("AUTH_FAILED"),
            "{err}"
        );
    }
    let (ok, _, err) = run(herald(&server, &["publish", "chat.message"])).await;
    assert!(!ok);
    assert!(err.contains("needs credentials"), "{err}");
    let (ok, _, err) = run(herald(
        &server,
        &["publish", "chat.message", "{not json", "--api-key", API_KEY],
    ))
    .await;
    assert!(!ok);
    assert!(err.contains("not JSON"), "{err}");
    let (ok, _, err) = run(herald(&server, &["subscribe", "--types", "bad type"])).await;
    assert!(!ok);
    assert!(err.contains("subscription refused"), "{err}");

    // Nothing listens on port 1.
    let mut unreachable = Command::new(env!("CARGO_BIN_EXE_herald"));
    unreachable.args([
        "publish",
        "chat.message",
        "--api-key",
        "k",
        "--url",
        "http://127.0.0.1:1",
    ]);
    let (ok, _, err) = run(unreachable).await;
    assert!(!ok);
    assert!(
        err.contains("cannot reach Herald at http://127.0.0.1:1/"),
        "{err}"
    );
}

#[tokio::test]
async fn every_client_command_has_help() {
    let help = |args: &'static [&'static str]| async move {
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let top = help(&["--help"]).await;
    for command in ["serve", "token", "publish", "subscribe", "bench"] {
        assert!(top.contains(command), "{top}");
    }
    let publish = help(&["publish", "--help"]).await;
    for flag in [
        "[TYPE]",
        "[DATA]",
        "--from <FILE>",
        "--room",
        "--user",
        "--token",
        "--api-key",
        "--url",
        "HERALD_TOKEN",
    ] {
        assert!(publish.contains(flag), "{flag}: {publish}");
    }
    let subscribe = help(&["subscribe", "--help"]).await;
    for flag in [
        "--types",
        "--room",
        "--user",
        "--since",
        "--token",
        "--api-key",
        "--url",
        "Ctrl-C",
    ] {
        assert!(subscribe.contains(flag), "{flag}: {subscribe}");
    }
    let token = help(&["token", "--help"]).await;
    for flag in ["--user", "--role", "--ttl", "herald publish --token"] {
        assert!(token.contains(flag), "{flag}: {token}");
    }
}
