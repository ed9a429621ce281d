//! Several nodes as one (issue 7), beyond the shared log (`scale_out.rs`): cluster-wide room
//! presence, and messages `PUBLISH`ed straight to Redis channels becoming events. Three real
//! `herald serve --postgres --redis` nodes on loopback, real PostgreSQL and Redis
//! (`scripts/services.sh start`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use herald_redis::cluster::NODE_TTL;
use herald_redis::testing::{redis_url, scratch_prefix};
use serde_json::{Value, json};

const QUIET: Duration = Duration::from_millis(400);

/// Joins `room` on a `/ws/rooms` connection; returns `room_joined`.
async fn join(ws: &mut Ws, room: &str) -> Value {
    ws.send(json!({"type": "join", "room": room})).await;
    let joined = ws.recv_type("room_joined").await;
    ws.recv_type("room_history").await;
    joined
}

/// Polls `GET /api/rooms/{room}/presence` on `node` until `pred` holds; returns that answer.
async fn presence_until(node: &Server, room: &str, pred: impl Fn(&Value) -> bool) -> Value {
    get_until(node, &format!("/api/rooms/{room}/presence"), pred).await
}

/// The presence answer's users as (userId, connections).
fn counts(presence: &Value) -> Vec<(String, u64)> {
    presence["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            let id = u["userId"].as_str().unwrap().to_owned();
            (id, u["connections"].as_u64().unwrap())
        })
        .collect()
}

fn has(users: &[&str]) -> impl Fn(&Value) -> bool {
    let want: Vec<String> = users.iter().map(|u| u.to_string()).collect();
    move |p| counts(p).into_iter().map(|(u, _)| u).collect::<Vec<_>>() == want
}

async fn expect_notice(ws: &mut Ws, kind: &str, user: &str, users: &[&str]) {
    let n = ws.recv().await;
    assert_eq!(
        (&n["type"], &n["userId"]),
        (&json!(kind), &json!(user)),
        "{n}"
    );
    assert_eq!(n["users"], json!(users), "{n}");
}

#[tokio::test]
async fn presence_is_the_union_of_every_node_and_a_user_on_two_nodes_counts_once() {
    let nodes = cluster(3, &redis_url()).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    let mut alice_a = Ws::dialect(a, "/ws/rooms", Some("alice")).await;
    assert_eq!(join(&mut alice_a, "lobby").await["users"], json!(["alice"]));
    presence_until(b, "lobby", has(&["alice"])).await;

    // A member joining on B is told who is on A, and A's members are told about it.
    let mut bob_b = Ws::dialect(b, "/ws/rooms", Some("bob")).await;
    assert_eq!(
        join(&mut bob_b, "lobby").await["users"],
        json!(["alice", "bob"])
    );
    expect_notice(&mut alice_a, "user_joined", "bob", &["alice", "bob"]).await;
    presence_until(c, "lobby", has(&["alice", "bob"])).await;

    let mut carol_c = Ws::dialect(c, "/ws/rooms", Some("carol")).await;
    assert_eq!(
        join(&mut carol_c, "lobby").await["users"],
        json!(["alice", "bob", "carol"])
    );
    for ws in [&mut alice_a, &mut bob_b] {
        expect_notice(ws, "user_joined", "carol", &["alice", "bob", "carol"]).await;
    }

    // Alice on a second node: still one member, with two connections; nobody is told.
    let mut alice_b = Ws::dialect(b, "/ws/rooms", Some("alice")).await;
    assert_eq!(
        join(&mut alice_b, "lobby").await["users"],
        json!(["alice", "bob", "carol"])
    );
    let both = presence_until(c, "lobby", |p| counts(p).contains(&("alice".into(), 2))).await;
    assert_eq!(both["count"], 3, "{both}");
    for ws in [&mut alice_a, &mut bob_b, &mut carol_c] {
        ws.expect_silence(QUIET).await;
    }

    // Her connection on A goes: she is still present through B.
    drop(alice_a);
    presence_until(c, "lobby", |p| counts(p).contains(&("alice".into(), 1))).await;
    bob_b.expect_silence(QUIET).await;
    carol_c.expect_silence(QUIET).await;

    // Her last connection leaves: every node's members are told.
    alice_b
        .send(json!({"type": "leave", "room": "lobby"}))
        .await;
    for ws in [&mut bob_b, &mut carol_c] {
        expect_notice(ws, "user_left", "alice", &["bob", "carol"]).await;
    }
    for node in [a, b, c] {
        presence_until(node, "lobby", has(&["bob", "carol"])).await;
    }
}

/// Typing crosses nodes (as a cluster signal, not an event): a member typing on one node is
/// seen on the other, and leaving while typing stops it there too.
#[tokio::test]
async fn typing_crosses_nodes() {
    let nodes = cluster(2, &redis_url()).await;
    let mut alice = Ws::dialect(&nodes[0], "/ws/rooms", Some("alice")).await;
    join(&mut alice, "desk").await;
    let mut bob = Ws::dialect(&nodes[1], "/ws/rooms", Some("bob")).await;
    join(&mut bob, "desk").await;
    expect_notice(&mut alice, "user_joined", "bob", &["alice", "bob"]).await;

    bob.send(json!({"type": "typing", "room": "desk", "isTyping": true}))
        .await;
    let typing = alice.recv().await;
    assert_eq!(
        (&typing["type"], &typing["userId"], &typing["isTyping"]),
        (&json!("typing"), &json!("bob"), &json!(true)),
        "{typing}"
    );
    assert!(
        stored_events(&nodes[0])
            .await
            .iter()
            .all(|e| e["type"] != "typing"),
        "typing is not an event"
    );

    bob.send(json!({"type": "leave", "room": "desk"})).await;
    // Presence and typing travel apart: either may arrive first.
    let mut seen = vec![alice.recv().await, alice.recv().await];
    seen.sort_by_key(|m| m["type"].to_string());
    assert_eq!(
        (&seen[0]["type"], &seen[0]["isTyping"]),
        (&json!("typing"), &json!(false)),
        "{seen:?}"
    );
    assert_eq!(seen[1]["type"], "user_left", "{seen:?}");
}

#[tokio::test]
async fn a_killed_nodes_members_leave_within_the_expiry_and_a_stopped_nodes_at_once() {
    let mut nodes = cluster(3, &redis_url()).await;
    let mut dave_a = Ws::dialect(&nodes[0], "/ws/rooms", Some("dave")).await;
    join(&mut dave_a, "ops").await;
    let mut eve_c = Ws::dialect(&nodes[2], "/ws/rooms", Some("eve")).await;
    join(&mut eve_c, "ops").await;
    presence_until(&nodes[1], "ops", has(&["dave", "eve"])).await;
    let mut bob_b = Ws::dialect(&nodes[1], "/ws/rooms", Some("bob")).await;
    assert_eq!(
        join(&mut bob_b, "ops").await["users"],
        json!(["bob", "dave", "eve"])
    );

    // `kill -9`: nothing is said; the node's key and presence expire.
    nodes[0].kill9();
    let killed = Instant::now();
    let left = loop {
        let n = bob_b.recv().await;
        if n["type"] == "user_left" {
            break n;
        }
    };
    assert_eq!(left["userId"], "dave", "{left}");
    assert_eq!(left["users"], json!(["bob", "eve"]));
    let took = killed.elapsed();
    assert!(
        took < NODE_TTL + Duration::from_secs(2),
        "a dead node's members lasted {took:?}"
    );
    presence_until(&nodes[2], "ops", has(&["bob", "eve"])).await;

    // A node shut down gracefully takes its members with it at once.
    let stopping = Instant::now();
    nodes[2].terminate(Duration::from_secs(10));
    expect_notice(&mut bob_b, "user_left", "eve", &["bob"]).await;
    assert!(stopping.elapsed() < NODE_TTL, "{:?}", stopping.elapsed());
}

// ---------------------------------------------------------------------------------------------
// The cluster view (`GET /api/cluster/nodes`)

/// A cluster view's nodes as url → connections, and the least loaded node's url.
fn load(view: &Value) -> (Vec<(String, u64)>, String) {
    let mut nodes: Vec<(String, u64)> = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            assert_eq!(n["byTransport"]["websocket"], n["connections"], "{n}");
            let url = n["url"].as_str().unwrap().to_owned();
            (url, n["connections"].as_u64().unwrap())
        })
        .collect();
    nodes.sort();
    (
        nodes,
        view["leastLoaded"]["url"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn every_node_shows_every_node_and_its_load_and_a_killed_node_leaves_within_the_expiry() {
    let mut nodes = cluster(3, &redis_url()).await;
    let path = "/api/cluster/nodes";
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(Ws::connect(&nodes[0], "/ws").await);
    }
    sockets.push(Ws::connect(&nodes[1], "/ws").await);
    let mut want: Vec<(String, u64)> = nodes
        .iter()
        .zip([3, 1, 0])
        .map(|(n, c)| (n.url(""), c))
        .collect();
    want.sort();

    // Each node reports on its heartbeat: every node comes to show the same three, with the
    // connections each really has, and names the idle one as least loaded.
    let mut ids = Vec::new();
    for node in &nodes {
        let view = get_until(node, path, |v| load(v).0 == want).await;
        assert_eq!(load(&view).1, nodes[2].url(""), "{view}");
        ids.push(
            view["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["id"].clone())
                .collect::<Vec<_>>(),
        );
    }
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");

    // `kill -9` the least loaded: nothing is said; its key expires, and the next least loaded
    // (B, with one connection against A's three) takes its place.
    nodes[2].kill9();
    let killed = Instant::now();
    want.retain(|(url, _)| *url != nodes[2].url(""));
    for node in &nodes[..2] {
        let view = get_until(node, path, |v| load(v).0 == want).await;
        assert_eq!(load(&view).1, nodes[1].url(""), "{view}");
    }
    let took = killed.elapsed();
    assert!(
        took < NODE_TTL + Duration::from_secs(2),
        "a killed node stayed listed for {took:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Redis channels (`[[redis_channels]]`)

/// `PUBLISH`es `payload` on `channel`; returns how many subscribers got it.
async fn redis_publish(channel: &str, payload: &str) -> u64 {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// The sum over `nodes` of the counter `herald_redis_channel_messages_total{result}`.
async fn channel_messages(nodes: &[Server], result: &str) -> u64 {
    let series = format!("herald_redis_channel_messages_total{{result=\"{result}\"}}");
    let mut total = 0.0;
    for node in nodes {
        total += metric(node, &series).await.unwrap_or(0.0);
    }
    total as u64
}

#[tokio::test]
async fn messages_published_to_redis_channels_reach_the_right_clients_once() {
    // Channel names of this run's own: the Redis server is shared.
    let tag = scratch_prefix();
    let (to_users, to_all) = (format!("{tag}.user.notifications"), format!("{tag}.system"));
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!(
            r#"
[[redis_channels]]
channel = "{to_users}"
route = "user"
type = "notification"

[[redis_channels]]
pattern = "{tag}:room:*"
route = "room"

[[redis_channels]]
channel = "{to_all}"
route = "all"
type = "system_event"
"#
        ),
    )
    .unwrap();
    let config_path = config.path().to_str().unwrap();
    let nodes = cluster_with(3, &redis_url(), &["--config", config_path]).await;

    let mut alice_a = Ws::user(&nodes[0], "alice").await;
    let mut alice_b = Ws::user(&nodes[1], "alice").await;
    let mut bob_c = Ws::user(&nodes[2], "bob").await;
    let mut member_b = Ws::user(&nodes[1], "member").await;
    join(&mut member_b, "lobby").await;
    let mut everything_c = Ws::connect(&nodes[2], "/ws").await;
    everything_c.subscribe(&["system_event"], json!({})).await;

    // To a user: each of her connections, on every node, gets it once. Exactly one node
    // consumes the channels (PUBLISH counts the subscribers), once one has taken the role.
    let note = json!({"userId": "alice", "data": {"text": "hello"}}).to_string();
    let deadline = Instant::now() + WAIT;
    loop {
        match redis_publish(&to_users, &note).await {
            0 => assert!(Instant::now() < deadline, "no node consumes the channels"),
            1 => break,
            n => panic!("{n} nodes consume the channels"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for ws in [&mut alice_a, &mut alice_b] {
        let e = ws.recv_type("event").await;
        assert_eq!(e["data"]["type"], "notification", "{e}");
        assert_eq!(e["data"]["data"], json!({"text": "hello"}), "{e}");
        assert_eq!(e["data"]["userId"], "alice", "{e}");
        assert!(e["data"]["seq"].as_u64().unwrap() > 0, "a real event: {e}");
    }

    // To a room, named by the pattern's `*`.
    let said = json!({"type": "message", "data": {"text": "hi lobby"}}).to_string();
    assert_eq!(redis_publish(&format!("{tag}:room:lobby"), &said).await, 1);
    let e = member_b.recv_type("event").await;
    assert_eq!(
        (&e["data"]["type"], &e["data"]["roomId"]),
        (&json!("message"), &json!("lobby")),
        "{e}"
    );

    // To everyone subscribed to the type.
    let system = json!({"data": {"level": "info"}}).to_string();
    assert_eq!(redis_publish(&to_all, &system).await, 1);
    let e = everything_c.recv_type("event").await;
    assert_eq!(e["data"]["type"], "system_event", "{e}");
    assert_eq!(e["data"]["data"]["level"], "info", "{e}");

    // Messages that cannot become events are counted and dropped; the consumer goes on.
    redis_publish(&to_users, "not json").await;
    redis_publish(&to_users, r#"{"data": {"no": "userId"}}"#).await;
    let again = json!({"userId": "alice", "data": {"text": "again"}}).to_string();
    redis_publish(&to_users, &again).await;
    for ws in [&mut alice_a, &mut alice_b] {
        let e = ws.recv_type("event").await;
        assert_eq!(e["data"]["data"]["text"], "again", "{e}");
    }
    assert_eq!(channel_messages(&nodes, "invalid").await, 2);
    assert_eq!(channel_messages(&nodes, "published").await, 4);
    bob_c.expect_silence(QUIET).await;

    // Each message is one stored event, whichever node reads the history.
    let (status, page) = get(
        &nodes[2],
        "/api/realtime/events?limit=100",
        Some(&admin_token()),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let mut types: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    types.sort_unstable();
    assert_eq!(
        types,
        ["message", "notification", "notification", "system_event"]
    );
}
