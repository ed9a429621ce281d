//! Yjs clients (`yjs` + `y-websocket` from npm, unchanged) under Node against the real
//! server's y-websocket endpoint: concurrent edits converge, awareness reaches the other client
//! and is cleared when it leaves, a late joiner gets the full state, and the document survives
//! `kill -9`. The script is `tests/seed-clients/yjs-scenario.js`.

mod common;

use common::*;
use serde_json::Value;

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

/// Three nodes through Redis: clients on different nodes converge, and a late joiner on a third
/// gets the full state.
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
