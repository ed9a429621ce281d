//! Rooms, presence and chat on the WebSocket (seeds 001 and 004): every room command in the
//! three dialects, presence counted per user, notices on join/leave/disconnect/timeout, access
//! control, sanitising, history on join, persistence, and private messages.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const QUIET: Duration = Duration::from_millis(300);

fn public(rooms: &str) -> Server {
    Server::start_with(&["--public-room", rooms])
}

/// Joins `room` and returns (`room_joined`, `room_history`).
async fn join(ws: &mut Ws, room: &str, user: Option<&str>) -> (Value, Value) {
    let mut cmd = json!({"type": "join", "room": room});
    if let Some(u) = user {
        cmd["user"] = json!(u);
    }
    ws.send(cmd).await;
    let joined = ws.recv().await;
    assert_eq!(joined["type"], "room_joined", "{joined}");
    let history = ws.recv().await;
    assert_eq!(history["type"], "room_history", "{history}");
    (joined, history)
}

async fn error_code(ws: &mut Ws, cmd: Value) -> String {
    ws.send(cmd).await;
    let e = ws.recv_type("error").await;
    assert!(e["message"].is_string(), "{e}");
    e["data"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn seed_001_chat_join_chat_typing_leave() {
    let server = public("general");
    let mut john = Ws::dialect(&server, "/ws/chat", None).await;
    let (joined, history) = join(&mut john, "general", Some("JohnDoe")).await;
    assert_eq!(joined["room"], "general");
    assert_eq!(joined["users"], json!(["JohnDoe"]));
    assert_eq!(history["messages"], json!([]));

    let mut jane = Ws::dialect(&server, "/ws/chat", None).await;
    let (joined, _) = join(&mut jane, "general", Some("Jane")).await;
    assert_eq!(joined["users"], json!(["Jane", "JohnDoe"]));
    let seen = john.recv().await;
    assert_eq!(seen["type"], "user_joined", "{seen}");
    assert_eq!(
        (&seen["user"], &seen["room"]),
        (&json!("Jane"), &json!("general"))
    );
    assert_eq!(seen["users"], json!(["Jane", "JohnDoe"]));
    assert!(
        seen.get("userId").is_none(),
        "anonymous members have no userId: {seen}"
    );

    // `chat` goes to the current room, the sender included, sanitised.
    john.send(
        json!({"type": "chat", "text": "hi <b>all</b><script>alert(1)</script><a href=x>x</a>"}),
    )
    .await;
    for ws in [&mut john, &mut jane] {
        let m = ws.recv().await;
        assert_eq!(m["type"], "chat", "{m}");
        assert_eq!(m["text"], "hi <b>all</b>x");
        assert_eq!(
            (&m["user"], &m["room"]),
            (&json!("JohnDoe"), &json!("general"))
        );
        assert!(
            m["seq"].as_u64().unwrap() > 0 && m["timestamp"].is_string(),
            "{m}"
        );
    }

    // Typing reaches the others only, and only when it changes.
    jane.send(json!({"type": "typing", "isTyping": true})).await;
    let t = john.recv().await;
    assert_eq!(
        (&t["type"], &t["user"], &t["isTyping"]),
        (&json!("typing"), &json!("Jane"), &json!(true))
    );
    jane.send(json!({"type": "typing", "isTyping": true})).await;
    jane.expect_silence(QUIET).await;
    john.expect_silence(QUIET).await;

    // Leaving while typing: the others see typing stop, then the member leave.
    jane.send(json!({"type": "leave"})).await;
    assert_eq!(jane.recv().await["type"], "room_left");
    let t = john.recv().await;
    assert_eq!(
        (&t["type"], &t["isTyping"]),
        (&json!("typing"), &json!(false)),
        "{t}"
    );
    let left = john.recv().await;
    assert_eq!(
        (&left["type"], &left["user"]),
        (&json!("user_left"), &json!("Jane")),
        "{left}"
    );
    assert_eq!(left["users"], json!(["JohnDoe"]));
}

#[tokio::test]
async fn seed_004_message_reaches_everyone_but_the_sender_and_is_stored() {
    let server = Server::start();
    let mut alice = Ws::dialect(&server, "/ws/rooms", Some("alice")).await;
    let mut bob = Ws::dialect(&server, "/ws/rooms", Some("bob")).await;
    join(&mut alice, "team", None).await;
    join(&mut bob, "team", None).await;
    let seen = alice.recv().await;
    assert_eq!(
        (&seen["type"], &seen["userId"]),
        (&json!("user_joined"), &json!("bob"))
    );

    bob.send(json!({"type": "message", "room": "team", "content": "hello"}))
        .await;
    let m = alice.recv().await;
    assert_eq!(m["type"], "message", "{m}");
    assert_eq!(
        (&m["from"], &m["content"]),
        (&json!("bob"), &json!("hello"))
    );
    assert!(
        m["timestamp"].is_u64(),
        "seed 004 timestamps are milliseconds: {m}"
    );
    bob.expect_silence(QUIET).await;

    // The same message is an event: in history with its room and author.
    let (status, page) = get(
        &server,
        "/api/realtime/events?roomId=team",
        Some(&token("alice")),
    )
    .await;
    assert_eq!(status, 200);
    let e = &page["events"][0];
    assert_eq!(
        (&e["type"], &e["userId"], &e["roomId"]),
        (&json!("chat.message"), &json!("bob"), &json!("team"))
    );
    assert_eq!(e["data"]["text"], "hello");
    assert_eq!(e["seq"], m["seq"]);

    // With an `id`, the sender gets an acknowledgement.
    bob.send(json!({"type": "message", "room": "team", "content": "ack me", "id": 7}))
        .await;
    let ack = bob.recv().await;
    assert_eq!(
        (&ack["type"], &ack["id"]),
        (&json!("event.published"), &json!(7)),
        "{ack}"
    );
}

#[tokio::test]
async fn herald_protocol_members_get_room_events_and_history_in_order() {
    let mut server = Server::start();
    let mut writer = Ws::dialect(&server, "/ws/rooms", Some("writer")).await;
    join(&mut writer, "r", None).await;
    for i in 0..55 {
        writer
            .send(json!({"type": "message", "room": "r", "content": format!("m{i}"), "id": i}))
            .await;
        writer.recv_type("event.published").await;
    }
    // Any event published to the room reaches its members, not only chat.
    let mut reader = Ws::user(&server, "reader").await;
    let (_, history) = join(&mut reader, "r", None).await;
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 50, "the last 50 messages");
    assert_eq!(messages[0]["data"]["text"], "m5");
    assert_eq!(messages[49]["data"]["text"], "m54");
    assert!(
        messages
            .windows(2)
            .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64())
    );
    publish(
        &server,
        &token("writer"),
        json!({"type": "score.update", "roomId": "r", "data": {"n": 1}}),
    )
    .await;
    let e = reader.recv().await;
    assert_eq!(
        (&e["type"], &e["data"]["type"]),
        (&json!("event"), &json!("score.update")),
        "{e}"
    );

    // History survives a restart.
    drop((writer, reader));
    server.terminate(Duration::from_secs(10));
    let restarted = server.restart();
    let mut again = Ws::user(&restarted, "reader").await;
    let (_, history) = join(&mut again, "r", None).await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 50);
    assert_eq!(history["messages"][49]["data"]["text"], "m54");
}

#[tokio::test]
async fn presence_counts_a_user_once_across_connections() {
    let server = Server::start();
    let mut bob = Ws::user(&server, "bob").await;
    join(&mut bob, "r", None).await;
    let mut alice1 = Ws::user(&server, "alice").await;
    let mut alice2 = Ws::dialect(&server, "/ws/chat", Some("alice")).await;
    join(&mut alice1, "r", None).await;
    let seen = bob.recv().await;
    assert_eq!(
        (&seen["type"], &seen["user"]),
        (&json!("user_joined"), &json!("alice"))
    );
    let (joined, _) = join(&mut alice2, "r", Some("ignored for users")).await;
    assert_eq!(joined["users"], json!(["alice", "bob"]));
    bob.expect_silence(QUIET).await;

    let (status, p) = get(&server, "/api/rooms/r/presence", Some(&token("bob"))).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["count"], 2);
    assert_eq!(
        p["users"][0],
        json!({"userId": "alice", "name": "alice", "connections": 2})
    );
    let st = stats_until(&server, |s| s["connections"]["rooms"]["seats"] == 3).await;
    assert_eq!(st["connections"]["rooms"]["rooms"], 1, "{st}");
    assert_eq!(st["connections"]["rooms"]["members"], 2, "{st}");

    // The first of alice's connections going is not her leaving; the last one is.
    drop(alice1);
    bob.expect_silence(QUIET).await;
    alice2.stream.close(None).await.unwrap();
    let left = bob.recv().await;
    assert_eq!(
        (&left["type"], &left["user"]),
        (&json!("user_left"), &json!("alice")),
        "{left}"
    );
    assert_eq!(left["users"], json!(["bob"]));
    let (_, p) = get(&server, "/api/rooms/r/presence", Some(&token("bob"))).await;
    assert_eq!(p["count"], 1);
}

#[tokio::test]
async fn a_silent_connection_times_out_and_leaves() {
    let server = Server::start_with(&["--idle-timeout-secs", "1", "--ping-interval-secs", "1"]);
    let mut watcher = Ws::user(&server, "watcher").await;
    join(&mut watcher, "r", None).await;
    let mut silent = Ws::user(&server, "silent").await;
    join(&mut silent, "r", None).await;
    assert_eq!(watcher.recv().await["type"], "user_joined");
    // The watcher keeps talking; the other stops reading and writing, so it never answers a
    // ping either.
    let left = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            watcher.send(json!({"type": "ping"})).await;
            let m = watcher.recv().await;
            if m["type"] == "user_left" {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the silent member was never timed out");
    assert_eq!(left["user"], "silent");
    drop(silent);
}

#[tokio::test]
async fn access_to_rooms_follows_tokens_and_public_rooms() {
    let server = public("lobby,open-*");
    let mut anon = Ws::dialect(&server, "/ws/chat", None).await;
    join(&mut anon, "open-1", Some("guest")).await;
    assert_eq!(
        error_code(&mut anon, json!({"type": "join", "room": "secret"})).await,
        "ACCESS_DENIED"
    );
    assert_eq!(
        error_code(
            &mut anon,
            json!({"type": "message", "room": "secret", "content": "x"})
        )
        .await,
        "ACCESS_DENIED"
    );

    let mut carol = Ws::connect(&server, "/ws").await;
    carol
        .send(json!({"type": "authenticate", "token": token_for_rooms("carol", &["team-*"])}))
        .await;
    assert_eq!(carol.recv().await["type"], "authenticated");
    join(&mut carol, "team-a", None).await;
    join(&mut carol, "lobby", None).await;
    assert_eq!(
        error_code(&mut carol, json!({"type": "join", "room": "secret"})).await,
        "ACCESS_DENIED"
    );
    let (status, _) = get(
        &server,
        "/api/rooms/secret/presence",
        Some(&token_for_rooms("carol", &["team-*"])),
    )
    .await;
    assert_eq!(status, 403);

    // Personal rooms: only their user.
    let mut bob = Ws::user(&server, "bob").await;
    assert_eq!(
        error_code(&mut bob, json!({"type": "join", "room": "user:alice"})).await,
        "ACCESS_DENIED"
    );
    join(&mut bob, "user:bob", None).await;
    let (status, _) = get(
        &server,
        "/api/realtime/events?roomId=user:alice",
        Some(&token("bob")),
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn private_messages_reach_every_connection_of_the_target_only() {
    let server = Server::start();
    let mut chat_alice = Ws::dialect(&server, "/ws/chat", Some("alice")).await;
    let mut herald_alice = Ws::user(&server, "alice").await;
    let mut carol = Ws::user(&server, "carol").await;
    carol.subscribe(&["*"], json!({})).await;
    let mut bob = Ws::dialect(&server, "/ws/chat", Some("bob")).await;

    bob.send(json!({"type": "private_message", "target": "alice", "text": "psst <i>hi</i>"}))
        .await;
    let m = chat_alice.recv().await;
    assert_eq!(
        (&m["type"], &m["from"], &m["text"]),
        (
            &json!("private_message"),
            &json!("bob"),
            &json!("psst <i>hi</i>")
        ),
        "{m}"
    );
    let e = herald_alice.recv().await;
    assert_eq!(
        (&e["data"]["type"], &e["data"]["roomId"]),
        (&json!("chat.private"), &json!("user:alice")),
        "{e}"
    );
    carol.expect_silence(QUIET).await;
    bob.expect_silence(QUIET).await;

    let (_, page) = get(
        &server,
        "/api/realtime/events?roomId=user:alice",
        Some(&token("alice")),
    )
    .await;
    assert_eq!(page["count"], 1, "{page}");
    let (_, page) = get(
        &server,
        "/api/realtime/events?types=chat.private",
        Some(&token("carol")),
    )
    .await;
    assert_eq!(page["count"], 0, "others never read it: {page}");

    // Anonymous connections cannot send private messages.
    let mut anon = Ws::dialect(&server, "/ws/chat", None).await;
    assert_eq!(
        error_code(
            &mut anon,
            json!({"type": "private_message", "target": "alice", "text": "x"})
        )
        .await,
        "AUTH_REQUIRED"
    );
}

#[tokio::test]
async fn bad_room_input_gets_clear_errors() {
    let server = public("*");
    let mut ws = Ws::dialect(&server, "/ws/chat", None).await;
    assert_eq!(
        error_code(&mut ws, json!({"type": "join"})).await,
        "VALIDATION_ERROR"
    );
    assert_eq!(
        error_code(&mut ws, json!({"type": "join", "room": ""})).await,
        "VALIDATION_ERROR"
    );
    assert_eq!(
        error_code(&mut ws, json!({"type": "join", "room": "r".repeat(300)})).await,
        "VALIDATION_ERROR"
    );
    assert_eq!(
        error_code(
            &mut ws,
            json!({"type": "join", "room": "r", "user": "<b>x</b>"})
        )
        .await,
        "VALIDATION_ERROR"
    );
    assert_eq!(
        error_code(&mut ws, json!({"type": "chat", "text": "x"})).await,
        "NOT_IN_ROOM"
    );
    assert_eq!(
        error_code(&mut ws, json!({"type": "typing", "isTyping": true})).await,
        "NOT_IN_ROOM"
    );
    assert_eq!(
        error_code(&mut ws, json!({"type": "leave"})).await,
        "NOT_IN_ROOM"
    );
    assert_eq!(
        error_code(&mut ws, json!({"type": "chat", "text": 5})).await,
        "VALIDATION_ERROR"
    );
    join(&mut ws, "r", Some("me")).await;
    assert_eq!(
        error_code(
            &mut ws,
            json!({"type": "chat", "text": "<script>x</script>"})
        )
        .await,
        "VALIDATION_ERROR"
    );
    assert_eq!(
        error_code(
            &mut ws,
            json!({"type": "typing", "room": "elsewhere", "isTyping": true})
        )
        .await,
        "NOT_IN_ROOM"
    );
    // Typing is rate-limited.
    let mut limited = false;
    for i in 0..20 {
        ws.send(json!({"type": "typing", "isTyping": i % 2 == 0}))
            .await;
    }
    while let Ok(m) = tokio::time::timeout(QUIET, ws.recv()).await {
        limited |= m["data"]["code"] == "RATE_LIMITED";
    }
    assert!(limited, "typing floods are refused");
    // The connection still works.
    ws.send(json!({"type": "chat", "text": "still here"})).await;
    assert_eq!(ws.recv_type("chat").await["text"], "still here");
}
