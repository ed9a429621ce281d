//! The browser side of Herald, end to end: `herald.js` under Node against a server that is
//! stopped and restarted, and the dashboard and the demo apps in headless Chromium
//! (Debian's `chromium` driven by `playwright-core`). The scenarios are in `tests/browser/`;
//! `./scripts/test.sh` installs Chromium and the packages. Screenshots go to
//! `test-artifacts/browser/`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::json;

/// A scenario script under Node, with a line dialogue: it says where it is on stdout, the
/// test answers on stdin.
struct Scenario {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser")
}

fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../test-artifacts/browser")
}

impl Scenario {
    fn start(script: &str, args: &[&str]) -> Self {
        let dir = browser_dir();
        assert!(
            dir.join("node_modules/playwright-core").exists(),
            "run `npm ci --prefix tests/browser` (./scripts/test.sh does)"
        );
        let mut child = Command::new("node")
            .arg(script)
            .args(args)
            .env("ARTIFACTS", artifacts())
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Scenario {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for the scenario to say `line`; panics with what it said if it fails instead.
    async fn expect(&mut self, line: &str, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let got = tokio::task::block_in_place(|| self.lines.recv_timeout(left));
            match got {
                Ok(l) if l == line => return,
                Ok(l) if l.starts_with("failed") => panic!("scenario {l}"),
                Ok(l) => self.seen.push(l),
                Err(_) => panic!("scenario never said {line:?}; it said {:?}", self.seen),
            }
        }
    }

    fn tell(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn publish_n(server: &Server, range: std::ops::RangeInclusive<u32>) {
    for n in range {
        publish(
            server,
            API_KEY,
            json!({"type": "test.number", "data": {"n": n}}),
        )
        .await;
    }
}

/// herald.js reconnects with backoff, queues a publish while the server is down, and resumes
/// its subscription across the restart: every event exactly once, in seq order.
#[tokio::test(flavor = "multi_thread")]
async fn herald_js_reconnects_queues_and_resumes_across_a_restart() {
    let port = free_port().to_string();
    let mut server = Server::start_with(&["--port", &port]);
    let res = http().get(server.url("/herald.js")).send().await.unwrap();
    assert_eq!(
        res.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(res.headers()["cache-control"], "no-cache");
    let etag = res.headers()["etag"].clone();
    let again = http()
        .get(server.url("/herald.js"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    let base = server.url("");
    let mut node = Scenario::start(
        "herald-client.mjs",
        &[base.trim_end_matches('/'), &token("alice")],
    );
    node.expect("subscribed", WAIT).await;
    publish_n(&server, 1..=5).await;
    node.expect("received", WAIT).await;
    assert!(server.terminate(WAIT).success());
    node.expect("queued", WAIT).await;
    let server = server.restart();
    publish_n(&server, 6..=10).await;
    node.tell("published");
    node.expect("ok", Duration::from_secs(20)).await;
}

/// The dashboard at `/` with the admin token: live connection count, an HTTP publish in the
/// log within a second, the publish form, filters, pause, alerts, notifications, a capped log
/// under a burst; and seed 000's own dashboard page working against Herald's routes.
#[tokio::test(flavor = "multi_thread")]
async fn dashboard_in_chromium() {
    let server = Server::start();
    let base = server.url("");
    let mut chromium = Scenario::start(
        "dashboard.mjs",
        &[base.trim_end_matches('/'), &admin_token()],
    );
    chromium.expect("ok", Duration::from_secs(60)).await;
}

/// The demo apps under `/examples/` against `herald serve --demo`: two pages chat (messages,
/// typing, presence) with markup shown as text, and each demo page shows live data (prices
/// move, headlines arrive, the stats chart draws the process's real figures, notifications
/// and activity published over HTTP appear). One Chromium for all of them.
#[tokio::test(flavor = "multi_thread")]
async fn demo_apps_in_chromium() {
    let server = Server::start_with(&["--demo"]);
    let base = server.url("");
    let mut chromium = Scenario::start(
        "examples.mjs",
        &[base.trim_end_matches('/'), &admin_token()],
    );
    chromium.expect("ok", Duration::from_secs(60)).await;
}

/// The Socket.IO chat demo on socket.io-client's browser bundle: two signed-in pages chat and
/// type in one room, markup stays text, an HTTP publish reaches them, a bad token is refused.
#[tokio::test(flavor = "multi_thread")]
async fn socketio_chat_demo_in_chromium() {
    let server = Server::start_with(&["--demo"]);
    let base = server.url("");
    let mut chromium = Scenario::start(
        "socketio.mjs",
        &[
            base.trim_end_matches('/'),
            &token("ada"),
            &token("bob"),
            &admin_token(),
        ],
    );
    chromium.expect("ok", Duration::from_secs(60)).await;
}

/// Stream routes read by a real `EventSource` in Chromium: snapshot then live messages as
/// unnamed `message` events with ids (seed 002's `onmessage`), and batches as JSON arrays.
#[tokio::test(flavor = "multi_thread")]
async fn stream_routes_with_a_real_event_source() {
    let server = Server::start();
    let base = server.url("");
    let mut chromium =
        Scenario::start("streams.mjs", &[base.trim_end_matches('/'), &admin_token()]);
    chromium.expect("ok", Duration::from_secs(60)).await;
}
