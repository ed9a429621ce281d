//! Yjs clients (`yjs` + `y-websocket` from npm, unchanged) under Node against the real
//! server's y-websocket endpoint: concurrent edits converge, awareness reaches the other client
//! and is cleared when it leaves, a late joiner gets the full state, and the document survives
//! `kill -9`. The script is `tests/seed-clients/yjs-scenario.js`.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message as Frame;
use yrs::ClientID;
use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::sync::{AwarenessUpdate, Message};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;

async fn node(args: Vec<String>) -> Value {
    let stdout = seed_client_script("yjs-scenario.js", args).await;
    serde_json::from_str(stdout.trim()).unwrap()
}

/// Alice and Bob edit the document `pad` at once (the scenario's `edit`); the text they
/// converged on.
async fn edit_pad(server: &Server) -> String {
    let base = server.ws_url("").trim_end_matches('/').to_owned();
    let edited = node(vec![
        "edit".into(),
        base,
        "pad".into(),
        token("alice"),
        token("bob"),
    ])
    .await;
    edited["text"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn yjs_clients_converge_share_awareness_and_survive_kill_9() {
    let mut server = Server::start_env(&[], &[("HERALD_DOCUMENT_SNAPSHOT_EVERY", "2")]);
    let text = edit_pad(&server).await;
    assert_eq!(text.len(), "hello world!".len(), "{text}");
    // Updates are durable events; compaction wrote snapshots of the whole state.
    let stored = stored_events(&server).await;
    assert!(stored.iter().any(|e| e["type"] == "yjs.update"));
    assert!(stored.iter().any(|e| e["type"] == "yjs.snapshot"));

    server.kill9();
    let server = server.restart();
    let base = server.ws_url("").trim_end_matches('/').to_owned();
    let read = node(vec!["read".into(), base, "pad".into(), token("carol")]).await;
    assert_eq!(read["text"], text.as_str(), "the document after kill -9");
}

/// A Yjs document nobody edits outlives retention: the saved snapshot and the updates after it
/// are kept, and a restart reads them back.
#[tokio::test]
async fn yjs_documents_outlive_retention() {
    edit_retain_restart_read("2").await;
}

/// Without a snapshot, retention keeps every update.
#[tokio::test]
async fn yjs_updates_no_snapshot_covers_outlive_retention() {
    edit_retain_restart_read("1000").await;
}

async fn edit_retain_restart_read(snapshot_every: &str) {
    let mut server = Server::start_env(
        &["--retention-hours", "0"],
        &[
            ("HERALD_RETENTION_INTERVAL_SECS", "1"),
            ("HERALD_DOCUMENT_SNAPSHOT_EVERY", snapshot_every),
        ],
    );
    let text = edit_pad(&server).await;
    // Retention has run since the snapshots were published: only uncovered updates are left.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stored_events(&server)
        .await
        .iter()
        .any(|e| e["type"] != "yjs.update")
    {
        assert!(std::time::Instant::now() < deadline, "retention never ran");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    server.kill9();
    let server = server.restart();
    let base = server.ws_url("").trim_end_matches('/').to_owned();
    let read = node(vec!["read".into(), base, "pad".into(), token("carol")]).await;
    assert_eq!(read["text"], text.as_str(), "the document after retention");
}

/// Three nodes through Redis: awareness crosses nodes, clients on different nodes converge, a
/// late joiner on a third gets the full state and the awareness its node mirrors, and a client's
/// awareness is cleared on the other node when it leaves.
#[tokio::test]
async fn yjs_clients_on_several_nodes_converge() {
    let nodes = cluster_with(3, &herald_redis::testing::redis_url(), &[]).await;
    let bases: Vec<String> = nodes
        .iter()
        .map(|n| n.ws_url("").trim_end_matches('/').to_owned())
        .collect();
    let done = node(vec![
        "converge".into(),
        bases.join(","),
        "shared".into(),
        token("alice"),
        token("bob"),
    ])
    .await;
    assert_eq!(done["text"].as_str().unwrap().len(), "hello world!".len());
}

/// The endpoint follows the room's rules: no token for a private document, or a token without
/// the room, is refused before the upgrade; a bad token too.
#[tokio::test]
async fn yjs_access_follows_the_room_rules() {
    let server = Server::start();
    let server_url = |p: &str| server.ws_url(p);
    for (path, status) in [
        ("/yjs/secret".to_owned(), 403),
        (
            format!("/yjs/secret?token={}", token_for_rooms("eve", &["team-*"])),
            403,
        ),
        ("/yjs/secret?token=forged".to_owned(), 401),
    ] {
        let got = match tokio_tungstenite::connect_async(server_url(&path)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
            other => panic!("{path}: expected a refusal, got {:?}", other.map(|_| ())),
        };
        assert_eq!(got, status, "{path}");
    }
    let ok = tokio_tungstenite::connect_async(server_url(&format!(
        "/yjs/team-pad?token={}",
        token_for_rooms("eve", &["yjs:team-*"])
    )))
    .await;
    assert!(ok.is_ok(), "a token with the room opens it");
}

/// A y-websocket client speaking the protocol frame by frame, as `user`.
async fn raw_client(server: &Server, name: &str, user: &str) -> Ws {
    let url = server.ws_url(&format!("/yjs/{name}?token={}", token(user)));
    let (stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    Ws {
        stream,
        connection_id: String::new(),
    }
}

/// The next y-websocket message, arriving within `wait`.
async fn next_message(ws: &mut Ws, wait: Duration) -> Message {
    loop {
        let frame = tokio::time::timeout(wait, ws.stream.next())
            .await
            .expect("timed out waiting for a y-websocket message")
            .expect("stream ended")
            .expect("websocket error");
        if let Frame::Binary(b) = frame {
            return Message::decode_v1(&b).unwrap();
        }
    }
}

/// Reads until an awareness message mentions Yjs client `id` (each message arriving within
/// `wait`); returns the state it gives.
async fn awareness_of(ws: &mut Ws, id: u64, wait: Duration) -> String {
    loop {
        if let Message::Awareness(u) = next_message(ws, wait).await
            && let Some(e) = u.clients.get(&ClientID::new(id))
        {
            return e.json.to_string();
        }
    }
}

/// Reads until the server denies something; returns its reason.
async fn denial(ws: &mut Ws) -> String {
    loop {
        if let Message::Auth(Some(reason)) = next_message(ws, WAIT).await {
            return reason;
        }
    }
}

/// An awareness message setting `states` (client id, clock, JSON).
fn awareness(states: &[(u64, u32, &str)]) -> Frame {
    let clients = states
        .iter()
        .map(|&(id, clock, json)| {
            let entry = AwarenessUpdateEntry {
                clock,
                json: json.into(),
            };
            (ClientID::new(id), entry)
        })
        .collect();
    Frame::binary(Message::Awareness(AwarenessUpdate { clients }).encode_v1())
}

/// A client may not set or clear another connection's awareness, hold more than a few states,
/// send a huge one, claim millions in one message, or flood: each is denied (y-websocket's
/// permission-denied message) and the others keep what they had; a flood ends in close 4029.
#[tokio::test]
async fn hostile_awareness_is_refused() {
    let server = Server::start();
    let mut alice = raw_client(&server, "pad", "alice").await;
    let mut bob = raw_client(&server, "pad", "bob").await;
    let mut mallory = raw_client(&server, "pad", "mallory").await;
    alice
        .send_raw(awareness(&[(1, 1, r#"{"user":"alice"}"#)]))
        .await;
    assert_eq!(awareness_of(&mut bob, 1, WAIT).await, r#"{"user":"alice"}"#);

    // Clearing or overwriting alice's state.
    for state in ["null", r#"{"user":"mallory"}"#] {
        mallory.send_raw(awareness(&[(1, 9, state)])).await;
        let reason = denial(&mut mallory).await;
        assert!(reason.contains("another connection"), "{reason}");
    }
    // A state of more than 4 KiB.
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(5000));
    mallory.send_raw(awareness(&[(7, 1, &big)])).await;
    assert!(denial(&mut mallory).await.contains("bytes"));
    // More states than a connection may hold, in one message or one by one.
    let nine: Vec<(u64, u32, &str)> = (100..109).map(|id| (id, 1, "{}")).collect();
    mallory.send_raw(awareness(&nine)).await;
    assert!(denial(&mut mallory).await.contains("at most 8"));
    mallory.send_raw(awareness(&nine[..8])).await;
    mallory.send_raw(awareness(&nine[8..])).await;
    assert!(denial(&mut mallory).await.contains("at most 8"));
    // A message claiming a million states (the decoder would reserve room for them all).
    mallory
        .send_raw(Frame::binary(vec![1, 4, 0xc0, 0x84, 0x3d, 0]))
        .await;
    assert!(denial(&mut mallory).await.contains("at most 8"));

    // Bob still sees alice as she said.
    bob.send_raw(Frame::binary(Message::AwarenessQuery.encode_v1()))
        .await;
    assert_eq!(awareness_of(&mut bob, 1, WAIT).await, r#"{"user":"alice"}"#);

    // A flood: rate-limited, then disconnected.
    for clock in 10..400 {
        mallory
            .send_raw(awareness(&[(100, clock, r#"{"n":1}"#)]))
            .await;
    }
    assert!(denial(&mut mallory).await.contains("rate limit"));
    let close = mallory.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4029, "{close:?}");
}

/// Awareness crosses nodes, and a node killed with `kill -9` takes its clients' awareness with
/// it: the other node's clients see it cleared once the cluster notices.
#[tokio::test]
async fn awareness_leaves_with_a_dead_node() {
    let mut nodes = cluster_with(2, &herald_redis::testing::redis_url(), &[]).await;
    let mut bob = raw_client(&nodes[0], "pad", "bob").await;
    let mut alice = raw_client(&nodes[1], "pad", "alice").await;
    alice
        .send_raw(awareness(&[(1, 1, r#"{"user":"alice"}"#)]))
        .await;
    assert_eq!(awareness_of(&mut bob, 1, WAIT).await, r#"{"user":"alice"}"#);
    nodes[1].kill9();
    // The cluster notices within its node TTL and a heartbeat.
    let cleared = awareness_of(&mut bob, 1, Duration::from_secs(15)).await;
    assert_eq!(cleared, "null");
}
