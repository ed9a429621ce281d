//! Seed 003's polling chat: mailboxes named by `x-client-id`, emptied by GET, filled by the
//! other clients' POSTs.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

async fn poll(server: &Server, client: Option<&str>) -> Value {
    let mut req = http().get(server.url("/api/messages"));
    if let Some(id) = client {
        req = req.header("x-client-id", id);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

async fn send(server: &Server, client: &str, bearer: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = http()
        .post(server.url("/api/messages"))
        .header("x-client-id", client)
        .json(&body);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn a_post_reaches_every_other_mailbox_once() {
    let server = Server::start();
    let a = poll(&server, None).await["clientId"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = poll(&server, None).await["clientId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(a, b);
    let (status, res) = send(
        &server,
        &a,
        Some(&token("alice")),
        json!({"content": "hi from a"}),
    )
    .await;
    assert_eq!(status, 200, "{res}");

    let got = poll(&server, Some(&b)).await;
    assert_eq!(got["clientId"], b.as_str());
    let messages = got["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{got}");
    assert_eq!(
        (
            messages[0]["from"].as_str(),
            messages[0]["content"].as_str()
        ),
        (Some(a.as_str()), Some("hi from a"))
    );
    assert_eq!(messages[0]["id"], res["seq"]);
    assert_eq!(
        poll(&server, Some(&b)).await["messages"],
        json!([]),
        "emptied by the poll"
    );
    assert_eq!(
        poll(&server, Some(&a)).await["messages"],
        json!([]),
        "not echoed to the sender"
    );
}

#[tokio::test]
async fn posting_needs_an_identity_and_content() {
    let server = Server::start();
    assert_eq!(
        send(&server, "a", None, json!({"content": "x"})).await.0,
        401
    );
    let (status, res) = send(&server, "a", Some(&token("alice")), json!({"content": ""})).await;
    assert_eq!(
        (status, res["code"].as_str()),
        (400, Some("VALIDATION_ERROR"))
    );
    assert_eq!(
        send(&server, "a", Some(&token("alice")), json!({"text": "x"}))
            .await
            .0,
        400
    );
}

#[tokio::test]
async fn a_mailbox_that_stops_polling_is_forgotten() {
    let server = Server::start_with(&["--idle-timeout-secs", "1", "--ping-interval-secs", "1"]);
    poll(&server, Some("quiet")).await;
    send(
        &server,
        "loud",
        Some(&token("bob")),
        json!({"content": "while you were away"}),
    )
    .await;
    // Within the timeout the message waits in the mailbox; after it, the mailbox is gone and
    // polling again opens a new one at the head of the log.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(poll(&server, Some("quiet")).await["messages"], json!([]));
    poll(&server, Some("attentive")).await;
    send(
        &server,
        "loud",
        Some(&token("bob")),
        json!({"content": "now"}),
    )
    .await;
    assert_eq!(
        poll(&server, Some("attentive")).await["messages"][0]["content"],
        "now"
    );
}
