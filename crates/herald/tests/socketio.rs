//! Socket.IO on Herald's hub: seed 004's `/chat` namespace driven by socket.io-client under
//! Node (the `useChatRoom` hook's logic, `tests/seed-clients/socketio-chat.js`) over WebSocket
//! alone and over long-polling with the upgrade, beside a `/ws/chat` client in the same room;
//! and hostile clients on the raw Engine.IO wire.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn seed_clients() -> PathBuf {
    seed_clients_with("socket.io-client")
}

async fn chat_scenario(mode: &str) {
    let server = Server::start_with(&["--public-room", "general"]);
    let base = server.url("");
    let args = [base.trim_end_matches('/'), &token("alice"), &token("bob")];
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend([token("carol"), mode.to_owned()]);
    let stdout = seed_client_script("socketio-chat.js", args).await;
    assert_eq!(stdout.trim(), "ok", "{stdout}");
}

#[tokio::test]
async fn seed_chat_hook_over_websocket() {
    chat_scenario("websocket").await;
}

#[tokio::test]
async fn seed_chat_hook_over_polling_then_websocket() {
    chat_scenario("polling").await;
}

// ---------------------------------------------------------------------------------------------
// Hostile clients on the raw Engine.IO wire.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame that is not an Engine.IO ping.
async fn next_text(ws: &mut Socket) -> String {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("stream ended")
            .expect("websocket error");
        if let Message::Text(t) = m
            && t.as_str() != "2"
        {
            return t.as_str().to_owned();
        }
    }
}

/// A Socket.IO socket on `/chat` over WebSocket alone, authenticated as `user`.
async fn chat_socket(server: &Server, user: &str) -> Socket {
    let url = server.ws_url("/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let open = next_text(&mut ws).await;
    assert!(open.starts_with("0{"), "{open}");
    let connect = format!(r#"40/chat,{{"token":"{}"}}"#, token(user));
    ws.send(Message::text(connect)).await.unwrap();
    let reply = next_text(&mut ws).await;
    assert!(reply.starts_with(r#"40/chat,{"sid":"#), "{reply}");
    ws
}

/// The next `/chat` event named `name`: its first argument.
async fn next_event(ws: &mut Socket, name: &str) -> Value {
    loop {
        let t = next_text(ws).await;
        if let Some(json) = t.strip_prefix("42/chat,") {
            let args: Value = serde_json::from_str(json).unwrap();
            if args[0] == name {
                return args[1].clone();
            }
        }
    }
}

/// The close code the server ends the socket with (None: the stream just ended).
async fn close_code(ws: &mut Socket) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for the close")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code.into()),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Opens an Engine.IO session over long-polling: its open packet.
async fn polling_handshake(server: &Server) -> Value {
    let url = server.url("/socket.io/?EIO=4&transport=polling");
    let res = http().get(url).send().await.unwrap();
    let body = res.text().await.unwrap();
    let open = body.strip_prefix('0').unwrap_or_else(|| panic!("{body}"));
    serde_json::from_str(open).unwrap()
}

async fn stored_chat_messages(server: &Server) -> usize {
    let path = "/api/realtime/events?type=chat.message&limit=1000";
    let (_, events) = get(server, path, Some(&admin_token())).await;
    let listed = events["events"].as_array();
    listed.unwrap_or_else(|| panic!("{events}")).len()
}

async fn socketio_connections(server: &Server) -> u64 {
    let (_, stats) = get(server, "/api/realtime/stats", Some(&admin_token())).await;
    stats["connections"]["byType"]["socketio"]
        .as_u64()
        .unwrap_or_else(|| panic!("stats by transport: {stats}"))
}

async fn socketio_connections_reach(server: &Server, n: u64) -> u64 {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let v = socketio_connections(server).await;
        if v == n || std::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sockets_are_hub_connections_counted_and_limited() {
    let server = Server::start_with(&["--public-room", "general", "--max-connections", "2"]);
    let mut a = chat_socket(&server, "alice").await;
    let _b = chat_socket(&server, "bob").await;
    assert_eq!(socketio_connections(&server).await, 2);
    // The third handshake, on either transport, is refused by the connection limit.
    let res = http()
        .get(server.url("/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 503);
    a.close(None).await.unwrap();
    assert_eq!(socketio_connections_reach(&server, 1).await, 1);
}

#[tokio::test]
async fn bad_handshakes_and_packets_are_refused() {
    let server = Server::start_with(&["--public-room", "general"]);
    // No token, or a bad one, on /chat: connect_error, and nothing else is served.
    let url = server.ws_url("/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    next_text(&mut ws).await;
    for connect in [r#"40/chat,"#, r#"40/chat,{"token":"forged"}"#] {
        ws.send(Message::text(connect)).await.unwrap();
        assert_eq!(
            next_text(&mut ws).await,
            r#"44/chat,{"message":"Authentication failed"}"#
        );
    }
    ws.send(Message::text(
        r#"42/chat,["message",{"roomId":"general","content":"x"}]"#,
    ))
    .await
    .unwrap();
    ws.send(Message::text("40/nowhere,")).await.unwrap();
    assert_eq!(
        next_text(&mut ws).await,
        r#"44/nowhere,{"message":"Invalid namespace"}"#
    );
    // A malformed packet ends the session.
    ws.send(Message::text(r#"42/chat,{"not":"an array"}"#))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1002));
    // Binary attachments are refused.
    let mut ws = chat_socket(&server, "alice").await;
    ws.send(Message::text(
        r#"451-/chat,["message",{"_placeholder":true,"num":0}]"#,
    ))
    .await
    .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1002));
    // Nothing was published by any of it.
    assert_eq!(stored_chat_messages(&server).await, 0);
}

#[tokio::test]
async fn oversize_payloads_are_refused_on_both_transports() {
    let server = Server::start_with(&["--public-room", "general", "--max-message-bytes", "4096"]);
    let mut ws = chat_socket(&server, "alice").await;
    let big = format!(
        r#"42/chat,["message",{{"roomId":"general","content":"{}"}}]"#,
        "x".repeat(8000)
    );
    ws.send(Message::text(big.clone())).await.unwrap();
    assert_eq!(close_code(&mut ws).await, Some(1009));
    // Long-polling: the POST is refused.
    let open = polling_handshake(&server).await;
    assert_eq!(open["maxPayload"], 4096);
    let sid = open["sid"].as_str().unwrap();
    let res = http()
        .post(server.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}")))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 413);
}

#[tokio::test]
async fn a_flooding_socket_is_refused_then_disconnected() {
    let server = Server::start_with(&[
        "--public-room",
        "general",
        "--publish-rate-per-connection",
        "5",
    ]);
    let mut ws = chat_socket(&server, "alice").await;
    for i in 0..300 {
        let m = format!(r#"42/chat,["message",{{"roomId":"general","content":"m{i}"}}]"#);
        if ws.send(Message::text(m)).await.is_err() {
            break;
        }
    }
    let refused = next_event(&mut ws, "error").await;
    assert_eq!(refused["code"], "RATE_LIMITED", "{refused}");
    assert_eq!(close_code(&mut ws).await, Some(4029));
    // The publishes let through (the burst) commit after their commands were read.
    let deadline = std::time::Instant::now() + WAIT;
    let mut stored = stored_chat_messages(&server).await;
    while stored == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        stored = stored_chat_messages(&server).await;
    }
    assert!((1..=20).contains(&stored), "{stored} of 300 published");
}

#[tokio::test]
async fn a_socket_that_does_not_read_is_disconnected() {
    let server = Server::start_with(&["--public-room", "general", "--outbox-max-messages", "50"]);
    // A long-polling session joins the room, then never polls again.
    let open = polling_handshake(&server).await;
    let sid = open["sid"].as_str().unwrap().to_owned();
    let post = |body: String| {
        let url = server.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"));
        async move {
            http()
                .post(url)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        post(format!(r#"40/chat,{{"token":"{}"}}"#, token("alice"))).await,
        200
    );
    assert_eq!(post(r#"42/chat,["join_room","general"]"#.into()).await, 200);
    // A reader in the same room gets everything while the other falls behind.
    let mut reader = chat_socket(&server, "bob").await;
    reader
        .send(Message::text(r#"42/chat,["join_room","general"]"#))
        .await
        .unwrap();
    next_event(&mut reader, "room_history").await;
    assert_eq!(socketio_connections(&server).await, 2);
    for i in 0..80 {
        publish(
            &server,
            API_KEY,
            json!({"type": "chat.message", "roomId": "general", "data": {"text": format!("m{i}")}}),
        )
        .await;
    }
    for i in 0..80 {
        let m = next_event(&mut reader, "message").await;
        assert_eq!(m["content"], format!("m{i}"));
    }
    assert_eq!(socketio_connections_reach(&server, 1).await, 1);
    let res = http()
        .get(server.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    assert!(metric(&server, "herald_slow_consumers_total").await >= Some(1.0));
}

/// A Socket.IO socket on the main namespace over WebSocket alone, authenticated as `user`.
async fn main_socket(server: &Server, user: &str) -> Socket {
    let url = server.ws_url("/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    next_text(&mut ws).await;
    let connect = format!(r#"40{{"token":"{}"}}"#, token(user));
    ws.send(Message::text(connect)).await.unwrap();
    let reply = next_text(&mut ws).await;
    assert!(reply.starts_with(r#"40{"sid":"#), "{reply}");
    ws
}

/// The acknowledgement `ack` of the main namespace: its first argument.
async fn next_ack(ws: &mut Socket, ack: u64) -> Value {
    let prefix = format!("43{ack}[");
    loop {
        let t = next_text(ws).await;
        if t.starts_with(&prefix) {
            let args: Value = serde_json::from_str(&t[prefix.len() - 1..]).unwrap();
            return args[0].clone();
        }
    }
}

/// The next event of the main namespace (`42["event", <event>]`).
async fn next_herald_event(ws: &mut Socket) -> Value {
    loop {
        let t = next_text(ws).await;
        if let Some(json) = t.strip_prefix("42") {
            let args: Value = serde_json::from_str(json).unwrap();
            if args[0] == "event" {
                return args[1].clone();
            }
        }
    }
}

#[tokio::test]
async fn main_namespace_speaks_herald_with_acknowledgements() {
    let server = Server::start();
    let mut alice = main_socket(&server, "alice").await;
    let sub = r#"421["subscribe",{"eventTypes":["order.*"],"filters":{"custom":{"region":"eu"}}}]"#;
    alice.send(Message::text(sub)).await.unwrap();
    let created = next_ack(&mut alice, 1).await;
    let subscription = created["subscriptionId"].as_str().unwrap().to_owned();

    let publish = r#"422["publish",{"type":"order.created","data":{"region":"eu","n":1}}]"#;
    alice.send(Message::text(publish)).await.unwrap();
    // The event and the acknowledgement, in either order.
    let (mut published, mut event) = (Value::Null, Value::Null);
    while published.is_null() || event.is_null() {
        let t = next_text(&mut alice).await;
        match (t.strip_prefix("432"), t.strip_prefix("42[\"event\",")) {
            (Some(ack), _) => published = serde_json::from_str::<Value>(ack).unwrap()[0].take(),
            (_, Some(e)) => event = serde_json::from_str(&e[..e.len() - 1]).unwrap(),
            _ => {}
        }
    }
    let seq = published["seq"].as_u64().expect("the ack carries seq");
    assert!(published["id"].is_string(), "{published}");
    assert_eq!(
        (event["type"].clone(), event["seq"].as_u64()),
        (json!("order.created"), Some(seq))
    );

    // Any publish path reaches the socket: HTTP, filtered as subscribed.
    publish_as_api(
        &server,
        json!({"type": "order.paid", "data": {"region": "us"}}),
    )
    .await;
    publish_as_api(
        &server,
        json!({"type": "order.paid", "data": {"region": "eu"}}),
    )
    .await;
    let event = next_herald_event(&mut alice).await;
    assert_eq!(
        (event["type"].clone(), event["data"]["region"].clone()),
        (json!("order.paid"), json!("eu"))
    );
    // Sent to the user: the personal room reaches every socket of alice.
    publish_as_api(
        &server,
        json!({"type": "note", "roomId": "user:alice", "data": {"hi": 1}}),
    )
    .await;
    let event = next_herald_event(&mut alice).await;
    assert_eq!(event["type"], "note");

    // A refused command is acknowledged with the error.
    alice
        .send(Message::text(
            r#"423["publish",{"type":"x","userId":"bob","data":{}}]"#,
        ))
        .await
        .unwrap();
    let refused = next_ack(&mut alice, 3).await;
    assert!(refused["code"].is_string(), "{refused}");

    let unsub = format!(r#"424["unsubscribe",{{"subscriptionId":"{subscription}"}}]"#);
    alice.send(Message::text(unsub)).await.unwrap();
    assert_eq!(
        next_ack(&mut alice, 4).await["subscriptionId"],
        subscription
    );

    // An anonymous socket may subscribe but not publish.
    let url = server.ws_url("/socket.io/?EIO=4&transport=websocket");
    let (mut anon, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    next_text(&mut anon).await;
    anon.send(Message::text("40")).await.unwrap();
    assert!(next_text(&mut anon).await.starts_with(r#"40{"sid""#));
    anon.send(Message::text(
        r#"427["publish",{"type":"order.created","data":{}}]"#,
    ))
    .await
    .unwrap();
    assert_eq!(next_ack(&mut anon, 7).await["code"], "AUTH_REQUIRED");
}

async fn publish_as_api(server: &Server, body: Value) -> Value {
    publish(server, API_KEY, body).await
}

// ---------------------------------------------------------------------------------------------
// Connection-state recovery (socket.io-client's `pid` and `offset`), and several nodes.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

/// Runs `socketio-recovery.js` against `first`; when it has dropped its transport, `between`
/// runs (a restart, another node) and returns the URL it reconnects to.
async fn recovery(
    first: String,
    scenario: &str,
    between: impl FnOnce() -> String + Send + 'static,
) {
    let scenario = scenario.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("node")
            .arg("socketio-recovery.js")
            .arg(first.trim_end_matches('/'))
            .arg(token("alice"))
            .arg(API_KEY)
            .arg(&scenario)
            .current_dir(seed_clients())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node runs");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut between = Some(between);
        let mut last = String::new();
        for line in lines.by_ref() {
            last = line.unwrap();
            if last == "dropped" {
                let url = (between.take().expect("dropped once"))();
                let mut stdin = child.stdin.take().unwrap();
                writeln!(stdin, "{}", url.trim_end_matches('/')).unwrap();
            }
        }
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        (status, last, stderr)
    })
    .await
    .unwrap();
    let (status, last, stderr) = out;
    assert!(status.success() && last == "ok", "{last}\n{stderr}");
}

#[tokio::test]
async fn a_dropped_transport_recovers_exactly_the_missed_messages() {
    let server = Server::start_with(&["--public-room", "general"]);
    recovery(server.url(""), "drop", || unreachable!()).await;
}

#[tokio::test]
async fn past_retention_a_socket_is_told_it_is_not_recovered() {
    // Retention deletes everything older than now, every second.
    let server = Server::start_env(
        &["--public-room", "general", "--retention-hours", "0"],
        &[("HERALD_RETENTION_INTERVAL_SECS", "1")],
    );
    let url = server.url("");
    let same = url.clone();
    recovery(url, "expired", move || {
        // Past at least two retention runs: the messages missed meanwhile are gone.
        std::thread::sleep(std::time::Duration::from_millis(2500));
        same
    })
    .await;
}

#[tokio::test]
async fn a_socket_recovers_across_a_server_restart() {
    let mut server = Server::start_with(&["--public-room", "general"]);
    let url = server.url("");
    let restarted = std::sync::Arc::new(std::sync::Mutex::new(None));
    let slot = restarted.clone();
    recovery(url, "restart", move || {
        server.terminate(WAIT);
        let again = server.restart();
        let url = again.url("");
        // The first keeps the data directory the second runs on.
        *slot.lock().unwrap() = Some((server, again));
        url
    })
    .await;
    drop(restarted);
}

#[tokio::test]
async fn a_socket_recovers_on_another_node() {
    let redis = herald_redis::testing::redis_url();
    let mut nodes = cluster_with(2, &redis, &["--public-room", "general"]).await;
    let second = nodes.pop().unwrap();
    let (first, second_url) = (nodes.pop().unwrap(), second.url(""));
    recovery(first.url(""), "node", move || second_url).await;
    drop((first, second));
}

#[tokio::test]
async fn sockets_on_different_nodes_share_rooms_chat_typing_and_presence() {
    let redis = herald_redis::testing::redis_url();
    let nodes = cluster_with(2, &redis, &["--public-room", "general"]).await;
    let mut alice = chat_socket(&nodes[0], "alice").await;
    let mut bob = chat_socket(&nodes[1], "bob").await;
    let join = r#"42/chat,["join_room","general"]"#;
    alice.send(Message::text(join)).await.unwrap();
    next_event(&mut alice, "room_history").await;
    bob.send(Message::text(join)).await.unwrap();
    next_event(&mut bob, "room_history").await;
    assert_eq!(next_event(&mut alice, "user_joined").await["userId"], "bob");
    let say = r#"42/chat,["message",{"roomId":"general","content":"across"}]"#;
    bob.send(Message::text(say)).await.unwrap();
    let heard = next_event(&mut alice, "message").await;
    assert_eq!(
        (heard["content"].clone(), heard["userId"].clone()),
        (json!("across"), json!("bob"))
    );
    let typing = r#"42/chat,["typing_start","general"]"#;
    bob.send(Message::text(typing)).await.unwrap();
    assert_eq!(next_event(&mut alice, "user_typing").await["userId"], "bob");
    bob.close(None).await.unwrap();
    assert_eq!(next_event(&mut alice, "user_left").await["userId"], "bob");
}

#[tokio::test]
async fn cors_follows_the_configured_origins() {
    let server = Server::start_with(&["--cors-origin", "https://app.example"]);
    let url = server.url("/socket.io/?EIO=4&transport=polling");
    let allowed = http()
        .get(&url)
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status().as_u16(), 200);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let other = http()
        .get(&url)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let preflight = http()
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}
