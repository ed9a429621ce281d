//! Seed 003's "WebSocket-like polling": each client has a mailbox named by its `x-client-id`;
//! `GET /api/messages` empties it, `POST /api/messages` sends to every other client. A mailbox
//! is only a cursor into the log (messages are `mailbox.message` events), so nothing is copied
//! per client and a mailbox costs a few dozen bytes. Mailboxes not polled for
//! `idle_timeout_secs` are forgotten.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use herald_core::protocol::PublishArgs;
use herald_core::store::{HistoryQuery, Order};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::api::auth::Caller;
use crate::api::json_body;
use crate::app::{App, check_id};
use crate::error::{AppError, ErrorBody};

pub const MESSAGE_TYPE: &str = "mailbox.message";
/// Messages returned by one poll at most; the rest come with the next poll.
const BATCH: usize = 500;

struct Mailbox {
    cursor: u64,
    polled: Instant,
}

#[derive(Default)]
pub struct Mailboxes {
    boxes: Mutex<HashMap<String, Mailbox>>,
}

impl Mailboxes {
    /// The cursor of `id`, opening the mailbox at `head` (only messages from now on) when new.
    fn cursor(&self, id: &str, head: u64, max: usize) -> Result<u64, AppError> {
        let mut boxes = self.boxes.lock();
        if let Some(m) = boxes.get_mut(id) {
            m.polled = Instant::now();
            return Ok(m.cursor);
        }
        if boxes.len() >= max {
            return Err(AppError::unavailable("too many mailboxes; try again later"));
        }
        boxes.insert(
            id.to_owned(),
            Mailbox {
                cursor: head,
                polled: Instant::now(),
            },
        );
        Ok(head)
    }

    fn advance(&self, id: &str, cursor: u64) {
        if let Some(m) = self.boxes.lock().get_mut(id) {
            m.cursor = m.cursor.max(cursor);
        }
    }

    /// Forgets mailboxes not polled for `idle`; returns how many.
    pub fn forget_idle(&self, idle: Duration) -> usize {
        let mut boxes = self.boxes.lock();
        let before = boxes.len();
        boxes.retain(|_, m| m.polled.elapsed() <= idle);
        before - boxes.len()
    }
}

fn client_id(headers: &HeaderMap) -> Result<String, AppError> {
    match headers
        .get("x-client-id")
        .map(|v| v.to_str().map(str::trim))
    {
        // A page that has no id yet sends the string "null" (seed 003 does): a new mailbox.
        Some(Ok(id)) if !matches!(id, "" | "null" | "undefined") => {
            check_id("x-client-id", Some(id))?;
            Ok(id.to_owned())
        }
        Some(Err(_)) => Err(AppError::bad_request("x-client-id must be text")),
        _ => Ok(Uuid::new_v4().to_string()),
    }
}

/// Empties the caller's mailbox: `{messages: [{id, from, content, timestamp}], clientId}`.
#[utoipa::path(get, path = "/api/messages", operation_id = "mailbox_poll", tag = "seed-compatible",
    params(("x-client-id" = Option<String>, Header, description = "Your mailbox; a new one is opened (and named in the answer) when absent or unknown")),
    responses((status = 200, description = "`{messages: [{id, from, content, timestamp}], clientId}`; `id` is the message's seq", body = Object),
        (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn poll(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let id = client_id(&headers)?;
    let head = *app.head.borrow();
    let cursor = app
        .mailboxes
        .cursor(&id, head, app.config.max_connections)?;
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
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, description = "Store unavailable or shutting down", body = ErrorBody)))]
pub async fn send(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    headers: HeaderMap,
    body: Result<bytes::Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    let from = client_id(&headers)?;
    let post: Post = json_body(body)?;
    if post.content.is_empty() {
        return Err(AppError::bad_request("content must not be empty"));
    }
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
