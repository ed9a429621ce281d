//! The seeds' SSE surface: seed 001's `/events`, `/notifications`, `/updates`, and seed 004's
//! `/events/user/{userId}`, read the way their `EventSource` pages read them.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::json;

#[tokio::test]
async fn events_stream_gets_connect_updates_and_notifications_by_name() {
    let server = Server::start();
    let mut anon = Sse::open(&server, "/events", None).await;
    assert_eq!(anon.status, 200);
    let hello = anon.next_event("connect").await;
    assert_eq!(hello.json()["type"], "connected");
    let mut alice = Sse::open(&server, "/events", Some(&token("alice"))).await;
    alice.next_event("connect").await;

    let admin = admin_token();
    let (status, res) = post(
        &server,
        "/updates",
        Some(&admin),
        &json!({"resource": "doc", "action": "edit", "data": {"v": 2}}),
    )
    .await;
    assert_eq!(status, 200, "{res}");
    let update = anon.next_event("update").await;
    assert_eq!(update.id.as_deref(), Some(res["seq"].to_string().as_str()));
    let u = update.json();
    assert_eq!(
        (
            u["resource"].as_str(),
            u["action"].as_str(),
            u["data"]["v"].as_i64()
        ),
        (Some("doc"), Some("edit"), Some(2))
    );
    assert!(u["timestamp"].is_string());

    // A notification for alice reaches her stream only; a broadcast reaches both.
    let (status, res) = post(
        &server,
        "/notifications",
        Some(&admin),
        &json!({"userId": "alice", "message": "for alice", "type": "info"}),
    )
    .await;
    assert_eq!(status, 200, "{res}");
    assert!(res["notificationId"].is_string());
    let (status, _) = post(
        &server,
        "/notifications",
        Some(&admin),
        &json!({"message": "for everyone"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(alice.next_event("update").await.json()["resource"], "doc");
    assert_eq!(
        alice.next_event("notification").await.json()["message"],
        "for alice"
    );
    assert_eq!(
        alice.next_event("notification").await.json()["message"],
        "for everyone"
    );
    assert_eq!(
        anon.next_event("notification").await.json()["message"],
        "for everyone"
    );

    // Stored as events, private where targeted.
    let (_, history) = get(
        &server,
        "/api/realtime/events?types=notification,user.notification,update",
        Some(&admin),
    )
    .await;
    assert_eq!(history["count"], 3, "{history}");
    let (_, bobs) = get(
        &server,
        "/api/realtime/events?types=user.notification",
        Some(&token("bob")),
    )
    .await;
    assert_eq!(bobs["count"], 0, "{bobs}");
}

#[tokio::test]
async fn only_operators_send_notifications_and_updates() {
    let server = Server::start();
    let alice = token("alice");
    let (status, res) = post(
        &server,
        "/notifications",
        Some(&alice),
        &json!({"message": "hi"}),
    )
    .await;
    assert_eq!((status, res["code"].as_str()), (403, Some("ACCESS_DENIED")));
    let (status, _) = post(
        &server,
        "/updates",
        Some(&alice),
        &json!({"resource": "a", "action": "b"}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = post(
        &server,
        "/updates",
        None,
        &json!({"resource": "a", "action": "b"}),
    )
    .await;
    assert_eq!(status, 401);
    let (status, res) = post(
        &server,
        "/updates",
        Some(API_KEY),
        &json!({"resource": "a"}),
    )
    .await;
    assert_eq!(
        (status, res["code"].as_str()),
        (400, Some("VALIDATION_ERROR"))
    );
    let (status, _) = post(
        &server,
        "/notifications",
        Some(API_KEY),
        &json!({"message": ""}),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn events_stream_pings() {
    let server = Server::start_with(&["--ping-interval-secs", "1"]);
    let mut sse = Sse::open(&server, "/events", None).await;
    let ping = sse.next_event("ping").await;
    assert!(ping.json()["timestamp"].is_string());
}

#[tokio::test]
async fn user_stream_is_that_users_events_by_name_with_keep_alive_comments() {
    let server = Server::start_with(&["--ping-interval-secs", "1"]);
    let path = "/events/user/alice";
    assert_eq!(Sse::open(&server, path, None).await.status, 401);
    assert_eq!(
        Sse::open(&server, path, Some(&token("bob"))).await.status,
        403
    );
    assert_eq!(
        Sse::open(&server, path, Some(&admin_token())).await.status,
        200
    );

    let mut alice = Sse::open(&server, path, Some(&token("alice"))).await;
    assert_eq!(alice.status, 200);
    publish(
        &server,
        API_KEY,
        json!({"type": "user.message", "userId": "bob", "data": {"text": "not yours"}}),
    )
    .await;
    publish(
        &server,
        API_KEY,
        json!({"type": "chat.message", "userId": "alice", "data": {"text": "public"}}),
    )
    .await;
    let ack = publish(
        &server,
        API_KEY,
        json!({"type": "user.message", "userId": "alice", "data": {"text": "hello"}}),
    )
    .await;
    // `user.message` is named `message`: it reaches `EventSource.onmessage`.
    let m = alice.next().await.unwrap();
    assert_eq!(
        (m.event.as_str(), m.id.clone()),
        ("message", Some(ack["seq"].to_string()))
    );
    assert_eq!(m.json(), json!({"text": "hello"}));

    // Keep-alives are comments, not events.
    let res = http()
        .get(server.url(path))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    let mut body = res.bytes_stream();
    let mut seen = String::new();
    while !seen.contains(": keep-alive\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn seed_streams_resume_with_last_event_id() {
    let server = Server::start();
    let admin = admin_token();
    let mut seqs = Vec::new();
    for i in 0..3 {
        let (_, res) = post(
            &server,
            "/updates",
            Some(&admin),
            &json!({"resource": "r", "action": format!("a{i}")}),
        )
        .await;
        seqs.push(res["seq"].as_u64().unwrap());
    }
    let mut sse = Sse::open(&server, &format!("/events?lastEventId={}", seqs[0]), None).await;
    for (i, seq) in seqs.iter().enumerate().skip(1) {
        let u = sse.next_event("update").await;
        assert_eq!(u.id, Some(seq.to_string()));
        assert_eq!(u.json()["action"], format!("a{i}"));
    }
}
