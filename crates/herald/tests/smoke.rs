//! The first path every user takes: start, publish over HTTP, receive over WebSocket and SSE.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn publish_over_http_reaches_websocket_and_sse_subscribers() {
    let server = Server::start_open();
    let mut ws = Ws::connect(&server, "/ws").await;
    ws.subscribe(&["chat.*"], json!({})).await;
    let mut sse = Sse::open(&server, "/api/realtime/stream?types=chat.message", None).await;
    assert_eq!(sse.status, 200);
    let hello = sse.next_event("connection").await;
    assert!(hello.json()["connectionId"].is_string());

    let ack = publish(
        &server,
        &token("alice"),
        json!({"type": "chat.message", "data": {"text": "hi"}, "roomId": "lobby"}),
    )
    .await;
    let seq = ack["seq"].as_u64().unwrap();

    let got = ws.recv_type("event").await;
    assert_eq!(got["data"]["seq"], seq);
    assert_eq!(got["data"]["data"]["text"], "hi");
    assert_eq!(got["data"]["userId"], "alice");
    assert_eq!(got["data"]["roomId"], "lobby");
    let e = sse.next_event("event").await;
    assert_eq!(e.id.as_deref(), Some(seq.to_string().as_str()));
    assert_eq!(e.json()["id"], ack["id"]);
}
