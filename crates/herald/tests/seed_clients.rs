//! The seeds' own chat clients — seed 001's `RealTimeChat` and seed 004's `WebSocketClient` —
//! run under Node (with the `ws` package as `WebSocket`) against the real server. The script
//! and the clients are in `tests/seed-clients/`; `./scripts/test.sh` installs its packages.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

#[tokio::test]
async fn seed_chat_clients_join_chat_type_and_leave() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/seed-clients");
    assert!(
        dir.join("node_modules/ws").exists(),
        "run `npm ci --prefix tests/seed-clients` (./scripts/test.sh does)"
    );
    let server = Server::start_with(&["--public-room", "general"]);
    let base = server.ws_url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("chat-scenario.js")
            .arg(base.trim_end_matches('/'))
            .arg(token("alice"))
            .arg(token("bob"))
            .current_dir(dir)
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
