//! Socket.IO on Herald's hub: seed 004's `/chat` namespace driven by socket.io-client under
//! Node (the `useChatRoom` hook's logic, `tests/seed-clients/socketio-chat.js`) over WebSocket
//! alone and over long-polling with the upgrade, beside a `/ws/chat` client in the same room;
//! and hostile clients on the raw Engine.IO wire.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn seed_clients() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/seed-clients");
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "run `npm ci --prefix tests/seed-clients` (./scripts/test.sh does)"
    );
    dir
}

async fn chat_scenario(mode: &'static str) {
    let server = Server::start_with(&["--public-room", "general"]);
    let base = server.url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("socketio-chat.js")
            .arg(base.trim_end_matches('/'))
            .arg(token("alice"))
            .arg(token("bob"))
            .arg(token("carol"))
            .arg(mode)
            .current_dir(seed_clients())
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn seed_chat_hook_over_websocket() {
    chat_scenario("websocket").await;
}

#[tokio::test]
async fn seed_chat_hook_over_polling_then_websocket() {
    chat_scenario("polling").await;
}
