//! Misconfigurations that would lose acknowledged events are refused at start-up, with real
//! `herald serve` processes: two stand-alone nodes on one database (PostgreSQL or SQLite), a
//! cluster and a stand-alone node on one database, two clusters (different `redis_prefix`) on
//! one database, and a node on another Redis than its cluster's. Each refusal exits non-zero
//! with one message naming the conflict and the fix; what may legitimately follow (a restart
//! after `kill -9`, a stand-alone node's database becoming a cluster's, `herald release-store`)
//! still works. Needs PostgreSQL and Redis (`eval "$(scripts/services.sh start)"`).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use herald_redis::testing::{redis_url, scratch_prefix};
use herald_store::testing::{end_lock_sessions, scratch_postgres};
use serde_json::{Value, json};

fn say(n: u64) -> Value {
    json!({"type": "chat.message", "data": {"n": n}, "roomId": "lobby"})
}

fn seq_of(e: &Value) -> u64 {
    e["seq"].as_u64().unwrap()
}

/// Every stored event's `seq`, oldest first.
async fn history(server: &Server) -> Vec<u64> {
    stored_events(server).await.iter().map(seq_of).collect()
}

/// Starts `herald serve` with `args`, expecting a refusal; returns its message (stderr).
fn refused(args: &[&str]) -> String {
    match Server::try_start_with(args) {
        Ok(_) => panic!("herald serve {args:?} started"),
        Err(stderr) => stderr,
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
}

/// `herald release-store --postgres url`: its exit success and output (stdout, then stderr).
fn release_store(url: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["release-store", "--postgres", url])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// ---------------------------------------------------------------------------------------------
// Stand-alone nodes

#[tokio::test]
async fn a_second_stand_alone_node_on_one_postgres_database_is_refused_while_the_first_runs() {
    let url = scratch_postgres().await;
    let pg = ["--postgres", url.as_str()];
    let mut first = Server::start_with(&pg);
    let alice = token("alice");
    let acked = publish(&first, &alice, say(0)).await;

    let message = refused(&pg);
    assert_mentions(
        &message,
        &[
            "a stand-alone Herald node is running on the PostgreSQL database",
            "Stop that node first",
        ],
    );
    assert!(!message.contains("listening"), "{message}");

    // Once it is gone — even by `kill -9` — a node may start on the database again.
    first.kill9();
    let mut second = first.restart();
    assert_eq!(history(&second).await, vec![seq_of(&acked)]);
    let next = publish(&second, &alice, say(1)).await;
    assert_eq!(seq_of(&next), seq_of(&acked) + 1);
    assert_eq!(second.terminate(Duration::from_secs(10)).code(), Some(0));
    let third = second.restart();
    assert_eq!(history(&third).await.len(), 2);
}

#[tokio::test]
async fn a_second_server_on_one_sqlite_file_is_refused_while_the_first_runs() {
    let mut first = Server::start();
    let acked = publish(&first, &token("alice"), say(0)).await;

    let stderr = match Server::try_spawn(&first.dir, &[]) {
        Ok(_) => panic!("a second server started on the same SQLite file"),
        Err(stderr) => stderr,
    };
    assert_mentions(
        &stderr,
        &[
            "another Herald server is using the SQLite database",
            "herald.db",
            "--database PATH",
        ],
    );

    first.kill9();
    let second = first.restart();
    assert_eq!(history(&second).await, vec![seq_of(&acked)]);
}

#[tokio::test]
async fn a_stand_alone_node_that_loses_the_database_to_another_stops() {
    let url = scratch_postgres().await;
    let pg = ["--postgres", url.as_str()];
    let dir = tempfile::tempdir().unwrap();
    let mut first = Server::try_spawn(dir.path(), &pg).unwrap();
    let alice = token("alice");
    publish(&first, &alice, say(0)).await;

    // The first node's lock session ends (as a dropped connection would) and a second node
    // takes the database before the first takes its lock again (it retries every second).
    let mut second = None;
    for _ in 0..10 {
        end_lock_sessions(&url).await;
        if let Ok(node) = Server::try_start_with(&pg) {
            second = Some(node);
            break;
        }
    }
    let second = second.expect("a second node got the database");

    // The first one acknowledges nothing more and stops, saying why.
    let (status, body) = post(&first, "/api/realtime/publish", Some(&alice), &say(1)).await;
    assert_eq!(status, 503, "{body}");
    let exit = first.wait_exit(Duration::from_secs(15));
    assert!(!exit.success(), "{exit:?}");
    assert_mentions(
        &first.stderr(),
        &["lost its event store", "no longer", "another node"],
    );
    let next = publish(&second, &alice, say(2)).await;
    assert_eq!(history(&second).await, vec![1, seq_of(&next)]);
}

// ---------------------------------------------------------------------------------------------
// A cluster and a stand-alone node

#[tokio::test]
async fn a_stand_alone_node_on_a_clusters_database_is_refused_until_it_is_released() {
    let url = scratch_postgres().await;
    let prefix = scratch_prefix();
    let redis = redis_url();
    let cluster_args = [
        "--postgres",
        url.as_str(),
        "--redis",
        &redis,
        "--redis-prefix",
        &prefix,
    ];
    let mut node = Server::start_with(&cluster_args);
    publish(&node, &token("alice"), say(0)).await;

    let message = refused(&["--postgres", &url]);
    assert_mentions(
        &message,
        &[
            &format!("belongs to the Herald cluster with redis_prefix \"{prefix}\""),
            "1 node running now",
            &format!("--redis-prefix {prefix}"),
            "herald release-store",
        ],
    );
    let (released, output) = release_store(&url);
    assert!(!released, "released while a node runs: {output}");
    assert_mentions(&output, &["Herald nodes are running", "stop them"]);

    // Stopped, the cluster still owns it (its nodes may be restarting) …
    node.terminate(Duration::from_secs(10));
    let message = refused(&["--postgres", &url]);
    assert_mentions(&message, &[&format!("redis_prefix \"{prefix}\"")]);
    // … until released deliberately.
    let (released, output) = release_store(&url);
    assert!(released, "{output}");
    assert_mentions(
        &output,
        &[
            "released",
            &format!("belonged to the Herald cluster with redis_prefix \"{prefix}\""),
        ],
    );
    let alone = Server::start_with(&["--postgres", &url]);
    assert_eq!(history(&alone).await, vec![1]);
}

#[tokio::test]
async fn a_stand_alone_nodes_database_becomes_a_clusters_once_the_node_stopped() {
    let url = scratch_postgres().await;
    let prefix = scratch_prefix();
    let redis = redis_url();
    let mut alone = Server::start_with(&["--postgres", &url]);
    let alice = token("alice");
    let mut seqs = Vec::new();
    for n in 0..3 {
        seqs.push(seq_of(&publish(&alone, &alice, say(n)).await));
    }
    let cluster_args = [
        "--postgres",
        url.as_str(),
        "--redis",
        &redis,
        "--redis-prefix",
        &prefix,
    ];
    let message = refused(&cluster_args);
    assert_mentions(
        &message,
        &[
            "a stand-alone Herald node is running",
            "cluster node",
            "Stop that node first",
        ],
    );

    // The migration: stop the stand-alone node, start the cluster's nodes on its database.
    alone.terminate(Duration::from_secs(10));
    let nodes = [
        Server::start_with(&cluster_args),
        Server::start_with(&cluster_args),
    ];
    let next = publish(&nodes[1], &alice, say(3)).await;
    seqs.push(seq_of(&next));
    assert_eq!(
        seq_of(&next),
        4,
        "seq continues where the stand-alone node stopped"
    );
    assert_eq!(history(&nodes[0]).await, seqs, "history carries over");
}

// ---------------------------------------------------------------------------------------------
// Two clusters

#[tokio::test]
async fn a_cluster_with_another_prefix_on_a_clusters_database_is_refused() {
    let url = scratch_postgres().await;
    let redis = redis_url();
    let (blue, green) = (scratch_prefix(), scratch_prefix());
    let args = |prefix: &str| {
        [
            "--postgres",
            &url,
            "--redis",
            &redis,
            "--redis-prefix",
            prefix,
        ]
        .map(str::to_owned)
    };
    let blue_args = args(&blue);
    let blue_args: Vec<&str> = blue_args.iter().map(String::as_str).collect();
    let green_args = args(&green);
    let green_args: Vec<&str> = green_args.iter().map(String::as_str).collect();
    let mut nodes = vec![
        Server::start_with(&blue_args),
        Server::start_with(&blue_args),
    ];
    publish(&nodes[0], &token("alice"), say(0)).await;

    let message = refused(&green_args);
    assert_mentions(
        &message,
        &[
            &format!("belongs to the Herald cluster with redis_prefix \"{blue}\""),
            &format!("not to redis_prefix \"{green}\""),
            &format!("--redis-prefix {blue}"),
            "a database of its own",
            "herald release-store",
        ],
    );
    // A node of the same cluster still joins.
    nodes.push(Server::start_with(&blue_args));
    assert_eq!(history(&nodes[2]).await, vec![1]);

    // Once the blue cluster is gone for good and the database released, green may have it.
    for node in &mut nodes {
        node.terminate(Duration::from_secs(10));
    }
    let (released, output) = release_store(&url);
    assert!(released, "{output}");
    let green_node = Server::start_with(&green_args);
    assert_eq!(history(&green_node).await, vec![1]);
}

/// A Redis server of the test's own (no persistence), on a free port.
struct OwnRedis {
    port: u16,
    child: Child,
}

impl OwnRedis {
    fn start() -> Self {
        let port = free_port();
        let spawn = |bin: &str| {
            Command::new(bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
        };
        let child = spawn("redis-server")
            .or_else(|_| spawn("valkey-server"))
            .expect("redis-server or valkey-server is installed (scripts/services.sh installs it)");
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_node_on_another_redis_with_its_clusters_prefix_is_refused() {
    let url = scratch_postgres().await;
    let prefix = scratch_prefix();
    let shared = redis_url();
    let other = OwnRedis::start();
    let on = |redis: &str| {
        [
            "--postgres",
            &url,
            "--redis",
            redis,
            "--redis-prefix",
            &prefix,
        ]
        .map(str::to_owned)
    };
    let (on_shared, on_other) = (on(&shared), on(&other.url()));
    let on_shared: Vec<&str> = on_shared.iter().map(String::as_str).collect();
    let on_other: Vec<&str> = on_other.iter().map(String::as_str).collect();

    let mut node = Server::start_with(&on_shared);
    // Its cluster's nodes run, and that Redis has never heard of the cluster.
    let message = refused(&on_other);
    assert_mentions(
        &message,
        &[
            "1 node(s) of the Herald cluster",
            &format!("the Redis at {} has no record of that cluster", other.url()),
            "check --redis",
        ],
    );

    // With the whole cluster stopped, it may move to the other Redis (a new cluster id)…
    node.terminate(Duration::from_secs(10));
    let mut moved = Server::start_with(&on_other);
    moved.terminate(Duration::from_secs(10));
    // … and a node on the old one is told apart from then on.
    let message = refused(&on_shared);
    assert_mentions(
        &message,
        &[
            &format!("the Redis at {shared} records another Herald cluster"),
            &format!("redis_prefix \"{prefix}\""),
            "Check --redis and --postgres",
        ],
    );
}
