//! Seed 003's "WebSocket-like polling": each client has a mailbox named by its `x-client-id`
//! (`app::mailboxes`); `GET /api/messages` empties it, `POST /api/messages` sends to every
//! other client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use herald_core::protocol::PublishArgs;
use herald_core::store::{HistoryQuery, Order};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::App;
use crate::app::limits::client_key;
use crate::app::mailboxes::{issue, start_of};
use crate::http::error::{AppError, ErrorBody};
use crate::http::identity::Caller;
use crate::http::{check_id, json_body};

pub const MESSAGE_TYPE: &str = "mailbox.message";
/// Messages returned by one poll at most; the rest come with the next poll.
const BATCH: usize = 500;

/// The mailbox a request names, or `None` when it names none (a page that has no id yet sends
/// the string "null", as seed 003 does).
fn client_id(headers: &HeaderMap) -> Result<Option<String>, AppError> {
    match headers
        .get("x-client-id")
        .map(|v| v.to_str().map(str::trim))
    {
        Some(Ok(id)) if !matches!(id, "" | "null" | "undefined") => {
            check_id("x-client-id", Some(id))?;
            Ok(Some(id.to_owned()))
        }
        Some(Err(_)) => Err(AppError::bad_request("x-client-id must be text")),
        _ => Ok(None),
    }
}

/// Empties the caller's mailbox: `{messages: [{id, from, content, timestamp}], clientId}`.
#[utoipa::path(get, path = "/api/messages", operation_id = "mailbox_poll", tag = "seed-compatible",
    params(("x-client-id" = Option<String>, Header, description = "Your mailbox; when absent, the answer names a new one (which starts now), kept once it is polled or posted from; an unknown id opens one now")),
    responses((status = 200, description = "`{messages: [{id, from, content, timestamp}], clientId}`; `id` is the message's seq", body = Object),
        (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn poll(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let head = *app.head.borrow();
    let Some(id) = client_id(&headers)? else {
        // Nothing to read yet and nothing kept: the id says where its mailbox will start.
        return Ok(Json(json!({"messages": [], "clientId": issue(head)})));
    };
    let valid = Duration::from_secs(app.config.idle_timeout_secs);
    let cursor = app
        .mailboxes
        .open(&id, client_key(peer.ip()), start_of(&id, head, valid));
    let q = HistoryQuery {
        types: vec![MESSAGE_TYPE.into()],
        after_seq: Some(cursor),
        order: Order::OldestFirst,
        limit: BATCH,
        access: app.access().read_scope(None),
        ..Default::default()
    };
    let events = app.store.query(q).await?;
    if let Some(last) = events.last() {
        app.mailboxes.advance(&id, last.seq);
    }
    let messages: Vec<Value> = events
        .iter()
        .filter(|e| e.data.get("from").and_then(Value::as_str) != Some(id.as_str()))
        .map(|e| {
            json!({
                "id": e.seq,
                "from": e.data.get("from"),
                "content": e.data.get("content"),
                "timestamp": e.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            })
        })
        .collect();
    Ok(Json(json!({"messages": messages, "clientId": id})))
}

#[derive(Deserialize)]
struct Post {
    content: String,
}

/// Sends `{content}` to every other mailbox (stored as a `mailbox.message` event).
#[utoipa::path(post, path = "/api/messages", tag = "seed-compatible", security(("bearer" = [])),
    params(("x-client-id" = Option<String>, Header, description = "The sender's mailbox (its own messages are not delivered back to it)")),
    request_body(content = Object, description = "`{content}`"),
    responses((status = 200, description = "`{success, seq}`", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down", body = ErrorBody),
        (status = 429, description = "Publishing too fast (as `POST /api/realtime/publish`)", body = ErrorBody)))]
pub async fn send(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Caller(caller): Caller,
    headers: HeaderMap,
    body: Result<bytes::Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    let bytes = body.as_ref().map_or(0, bytes::Bytes::len);
    app.admit_http_publish(&caller, peer.ip(), 1, bytes)?;
    let named = client_id(&headers)?;
    let post: Post = json_body(body)?;
    if post.content.is_empty() {
        return Err(AppError::bad_request("content must not be empty"));
    }
    let from = match named {
        Some(id) => {
            // Posting from a mailbox is using it: it opens (if it had not) before the send,
            // so it gets every other client's messages from here on.
            let head = *app.head.borrow();
            let valid = Duration::from_secs(app.config.idle_timeout_secs);
            let start = start_of(&id, head, valid);
            app.mailboxes.open(&id, client_key(peer.ip()), start);
            id
        }
        None => Uuid::new_v4().to_string(),
    };
    let event = PublishArgs {
        kind: MESSAGE_TYPE.into(),
        data: json!({"from": from, "content": post.content}),
        user_id: None,
        room_id: None,
        metadata: None,
    };
    let committed = app.publish(&caller, event).await?;
    Ok(Json(json!({"success": true, "seq": committed.event.seq})))
}
