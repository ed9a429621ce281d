//! The seeds' own chat clients — seed 001's `RealTimeChat` and seed 004's `WebSocketClient` —
//! run under Node (with the `ws` package as `WebSocket`) against the real server. The script
//! and the clients are in `tests/seed-clients/`; `./scripts/test.sh` installs its packages.

mod common;

use common::*;

#[tokio::test]
async fn seed_chat_clients_join_chat_type_and_leave() {
    let server = Server::start_with(&["--public-room", "general"]);
    let base = server.ws_url("");
    let args = vec![
        base.trim_end_matches('/').to_owned(),
        token("alice"),
        token("bob"),
    ];
    run_seed_client(seed_clients_with("ws"), "chat-scenario.js", args).await;
}
