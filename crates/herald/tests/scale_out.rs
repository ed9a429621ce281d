//! Scaling out (issue 7) against real PostgreSQL and Redis (`POSTGRES_TEST_URL`,
//! `REDIS_TEST_URL`, from `scripts/services.sh start`; the tests fail when they are unset).
//!
//! `herald serve --postgres URL`: acknowledged events survive `kill -9` in PostgreSQL, a
//! restarted server continues the `seq` without reusing one, and a client resumes across the
//! restart with exactly the events it missed.
//!
//! Several `herald serve --postgres URL --redis URL` nodes as one: events published on every
//! node at once reach the subscribers of every node in one global `seq` order; a client of a
//! node killed with `kill -9` resumes on another with no gap and no duplicate, and no
//! acknowledged event is lost; while Redis is down publishes fail with 503, and after it comes
//! back (empty) the sequence continues and delivery resumes by itself.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use herald_redis::testing::redis_url;
use herald_store::testing::scratch_postgres;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn seq_of(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"))
}

fn say(n: u64) -> Value {
    json!({"type": "chat.message", "data": {"n": n}, "roomId": "r1"})
}

/// One WebSocket per node, subscribed to `chat.*`.
async fn chat_subscribers(nodes: &[Server]) -> Vec<Ws> {
    let mut clients = Vec::new();
    for node in nodes {
        let mut ws = Ws::connect(node, "/ws").await;
        ws.subscribe(&["chat.*"], json!({})).await;
        clients.push(ws);
    }
    clients
}

// ---------------------------------------------------------------------------------------------
// One node on PostgreSQL

#[tokio::test]
async fn events_survive_kill_9_in_postgres_and_clients_resume_after_the_restart() {
    let url = scratch_postgres().await;
    let mut server = Server::start_with(&["--postgres", &url, "--public-room", "*"]);
    let alice = token("alice");

    // A subscriber sees the first events live, then goes away.
    let mut ws = Ws::connect(&server, "/ws").await;
    ws.subscribe(&["chat.*"], json!({})).await;
    let mut acked = Vec::new();
    for n in 0..3 {
        acked.push(publish(&server, &alice, say(n)).await);
    }
    let mut seen = 0;
    for ack in &acked {
        let e = ws.recv_type("event").await;
        assert_eq!(e["data"]["id"], ack["id"]);
        seen = seq_of(&e["data"]);
    }
    drop(ws);

    // What it misses, acknowledged, must survive a crash of the server.
    for n in 3..6 {
        acked.push(publish(&server, &alice, say(n)).await);
    }
    let seqs: Vec<u64> = acked.iter().map(seq_of).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    server.kill9();

    let server = server.restart();
    assert!(
        !server.dir.join("herald.db").exists(),
        "with --postgres, no SQLite file is created"
    );
    let stored: Vec<u64> = stored_events(&server).await.iter().map(seq_of).collect();
    assert_eq!(stored, seqs, "every acknowledged event, from PostgreSQL");

    // The client resumes after the last event it saw: exactly the three it missed, in order.
    let mut ws = Ws::connect(&server, "/ws").await;
    ws.send(json!({"type": "subscribe", "data": {"eventTypes": ["chat.*"], "since": seen}}))
        .await;
    let created = ws.recv_type("subscription.created").await;
    assert_eq!(created["data"]["recovered"], true, "{created}");
    for (n, ack) in acked.iter().enumerate().skip(3) {
        let e = ws.recv_type("event").await;
        assert_eq!(e["data"]["id"], ack["id"], "{e}");
        assert_eq!(e["data"]["data"]["n"], n, "{e}");
    }

    // The sequence continues where it stopped, and the resumed client is live again.
    let next = publish(&server, &alice, say(6)).await;
    assert_eq!(seq_of(&next), seqs.last().unwrap() + 1);
    let e = ws.recv_type("event").await;
    assert_eq!(e["data"]["id"], next["id"]);
}

/// Runs `herald serve` with `args`, expecting it to refuse to start; returns its stderr.
fn refused_start(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--port", "0", "--host", "127.0.0.1"])
        .args(args)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn the_server_refuses_to_start_without_its_postgres_or_redis() {
    // A store or log that cannot be reached is a start-up error, not a server that accepts
    // publishes it cannot keep.
    let closed = format!("127.0.0.1:{}", free_port());
    let unreachable_pg = format!("postgres://herald@{closed}/herald");
    let stderr = refused_start(&["--postgres", &unreachable_pg]);
    assert!(stderr.contains("event store unavailable"), "{stderr}");
    let stderr = refused_start(&[
        "--postgres",
        &scratch_postgres().await,
        "--redis",
        &format!("redis://{closed}"),
    ]);
    assert!(stderr.contains("event log unavailable"), "{stderr}");
    // Nodes sharing a log must share the store too.
    let stderr = refused_start(&["--redis", &redis_url()]);
    assert!(stderr.contains("redis needs postgres"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// Nodes sharing Redis and PostgreSQL

#[tokio::test]
async fn events_published_on_every_node_at_once_reach_every_node_in_one_order() {
    const PER_NODE: u64 = 40;
    let nodes = cluster(3, &redis_url()).await;
    let mut clients = chat_subscribers(&nodes).await;
    // One publisher per node, all at once: the nodes' appends interleave in Redis.
    let publishers: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let url = node.url("/api/realtime/publish");
            tokio::spawn(async move {
                let alice = token("alice");
                let mut acked = Vec::new();
                for n in 0..PER_NODE {
                    let res = http()
                        .post(&url)
                        .bearer_auth(&alice)
                        .json(&say(i as u64 * PER_NODE + n))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(res.status().as_u16(), 201);
                    let body: Value = res.json().await.unwrap();
                    acked.push(body["event"].clone());
                }
                acked
            })
        })
        .collect();
    let mut acked = Vec::new();
    for p in publishers {
        let mine = p.await.unwrap();
        let seqs: Vec<u64> = mine.iter().map(seq_of).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        acked.extend(mine);
    }
    acked.sort_by_key(seq_of);
    let seqs: Vec<u64> = acked.iter().map(seq_of).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "one sequence across nodes, no seq twice: {seqs:?}"
    );
    // Every node's subscriber gets every event once, in `seq` order.
    for ws in &mut clients {
        for ack in &acked {
            let e = ws.recv_type("event").await;
            assert_eq!(e["data"]["id"], ack["id"], "{e}");
            assert_eq!(e["data"]["seq"], ack["seq"], "{e}");
        }
    }
    for node in &nodes {
        let stored: Vec<u64> = stored_events(node).await.iter().map(seq_of).collect();
        assert_eq!(stored, seqs, "every node reads the one history");
    }
}

#[tokio::test]
async fn a_batch_published_on_one_node_reaches_every_node_in_its_order() {
    let nodes = cluster(2, &redis_url()).await;
    let mut clients = chat_subscribers(&nodes).await;
    // A batch on one node while the other publishes one event at a time.
    let batch_url = nodes[0].url("/api/realtime/publish/batch");
    let batch = tokio::spawn(async move {
        let events: Vec<Value> = (0..200).map(say).collect();
        let res = http()
            .post(&batch_url)
            .bearer_auth(token("alice"))
            .json(&json!({ "events": events }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 201);
        res.json::<Value>().await.unwrap()["events"]
            .as_array()
            .unwrap()
            .clone()
    });
    let mut singles = Vec::new();
    for n in 1000..1050 {
        singles.push(publish(&nodes[1], &token("bob"), say(n)).await);
    }
    let batch = batch.await.unwrap();
    let first = seq_of(&batch[0]);
    for (i, ack) in batch.iter().enumerate() {
        assert_eq!(seq_of(ack), first + i as u64, "consecutive: {ack}");
    }
    let mut acked: Vec<Value> = batch.into_iter().chain(singles).collect();
    acked.sort_by_key(seq_of);
    for ws in &mut clients {
        for ack in &acked {
            let e = ws.recv_type("event").await;
            assert_eq!(e["data"]["id"], ack["id"], "{e}");
        }
    }
    let stored: Vec<u64> = stored_events(&nodes[1]).await.iter().map(seq_of).collect();
    assert_eq!(stored, acked.iter().map(seq_of).collect::<Vec<_>>());
}

/// Publishes to `url` until `stop` is set or the node stops answering, counting acknowledgements
/// in `acks`; returns what was acknowledged.
fn publisher(
    url: String,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<Value>> {
    tokio::spawn(async move {
        let alice = token("alice");
        let mut acked = Vec::new();
        for n in 0.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let Ok(res) = http()
                .post(&url)
                .bearer_auth(&alice)
                .json(&say(n))
                .send()
                .await
            else {
                break; // the node is gone
            };
            assert_eq!(res.status().as_u16(), 201);
            match res.json::<Value>().await {
                Ok(body) => {
                    acked.push(body["event"].clone());
                    acks.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => break, // killed while answering: not acknowledged
            }
        }
        acked
    })
}

#[tokio::test]
async fn a_client_of_a_killed_node_resumes_on_another_and_nothing_acknowledged_is_lost() {
    let mut nodes = cluster(3, &redis_url()).await;
    let mut ws = Ws::connect(&nodes[0], "/ws").await;
    ws.subscribe(&["chat.*"], json!({})).await;
    // Node 0's subscriber reads until its node dies.
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(WAIT, ws.stream.next()).await
        {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == "event" {
                seen.push(seq_of(&v["data"]));
            }
        }
        seen
    });
    // Publishers on every node at once; node 0 is killed among them (it may be the writer:
    // then the others take over once its lock expires).
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = nodes
        .iter()
        .map(|n| publisher(n.url("/api/realtime/publish"), stop.clone(), acks.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    nodes[0].kill9();
    // Go on until the surviving nodes have committed plenty more.
    let at_kill = acks.load(Ordering::Relaxed);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while acks.load(Ordering::Relaxed) < at_kill + 100 {
        assert!(std::time::Instant::now() < deadline, "publishing stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for p in publishers {
        acked.extend(p.await.unwrap());
    }
    acked.sort_by_key(seq_of);
    let seen = reader.await.unwrap();
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    let last_seen = seen.last().copied().unwrap_or(0);
    let last_acked = seq_of(acked.last().expect("some publishes were acknowledged"));

    // Its client resumes on node 2 after the last event it saw: every later event once, in
    // order, including every acknowledged one.
    let mut ws = Ws::connect(&nodes[2], "/ws").await;
    ws.send(json!({"type": "subscribe", "data": {"eventTypes": ["chat.*"], "since": last_seen}}))
        .await;
    let created = ws.recv_type("subscription.created").await;
    assert_eq!(created["data"]["recovered"], true, "{created}");
    let mut resumed = Vec::new();
    while resumed.last().is_none_or(|s| *s < last_acked) {
        resumed.push(seq_of(&ws.recv_type("event").await["data"]));
    }
    assert!(resumed.windows(2).all(|w| w[0] < w[1]), "{resumed:?}");
    assert!(resumed[0] > last_seen, "no duplicate across the resume");
    let delivered: std::collections::HashSet<u64> = seen.into_iter().chain(resumed).collect();
    for ack in &acked {
        assert!(
            delivered.contains(&seq_of(ack)),
            "{ack} never reached the client"
        );
    }

    let stored = stored_events(&nodes[2]).await;
    let stored_ids: Vec<&Value> = stored.iter().map(|e| &e["id"]).collect();
    for ack in &acked {
        assert_eq!(
            stored_ids.iter().filter(|id| ***id == ack["id"]).count(),
            1,
            "{ack} stored once"
        );
    }
}

/// A Redis server of the test's own, which it may stop and start again on the same port.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start(port: u16) -> Self {
        let mut redis = OwnRedis { port, child: None };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts an empty server (no persistence: a restart loses every key).
    fn restart(&mut self) {
        assert!(self.child.is_none());
        let spawn = |bin: &str| {
            Command::new(bin)
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
        };
        let child = spawn("redis-server")
            .or_else(|_| spawn("valkey-server"))
            .expect("redis-server or valkey-server is installed (scripts/services.sh installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}

#[tokio::test]
async fn publishes_fail_with_503_while_redis_is_down_and_everything_recovers_after() {
    let mut redis = OwnRedis::start(free_port());
    let nodes = cluster(2, &redis.url()).await;
    let alice = token("alice");
    let mut ws = Ws::connect(&nodes[1], "/ws").await;
    ws.subscribe(&["chat.*"], json!({})).await;
    let before = publish(&nodes[0], &alice, say(0)).await;
    assert_eq!(ws.recv_type("event").await["data"]["id"], before["id"]);

    redis.stop();
    let (status, body) = post(&nodes[0], "/api/realtime/publish", Some(&alice), &say(1)).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("unavailable"),
        "{body}"
    );

    // An empty Redis: the nodes reconnect, re-seed the sequence from the store and resume.
    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let after = loop {
        let (status, body) = post(&nodes[0], "/api/realtime/publish", Some(&alice), &say(2)).await;
        if status == 201 {
            break body["event"].clone();
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "publishes never recovered: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(seq_of(&after) > seq_of(&before), "seq never goes back");
    // The subscriber on the other node gets it, in order (and nothing published while Redis
    // was down appears in between).
    assert_eq!(ws.recv_type("event").await["data"]["id"], after["id"]);
    let stored: Vec<u64> = stored_events(&nodes[1]).await.iter().map(seq_of).collect();
    assert_eq!(stored, vec![seq_of(&before), seq_of(&after)]);
}
