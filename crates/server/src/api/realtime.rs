//! `/api/realtime/*`: publish, subscribe an open stream, history, statistics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::header::{self, HeaderName};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use herald_core::Connection;
use herald_core::log::MAX_PUBLISH_ALL;
use herald_core::protocol::{PublishArgs, ServerMessage, SubscribeArgs, code};
use herald_core::store::{HistoryQuery, ReadAccess};
use herald_core::subscription::MAX_PATTERNS;
use herald_core::{Event, Outgoing};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::App;
use crate::http::check_id;
use crate::http::error::{AppError, ErrorBody};
use crate::http::identity::Caller;
use crate::http::replies::{Published, created_body, hub_error, parse_spec};
use crate::http::{json_body, json_object};

pub const MAX_HISTORY: usize = 1000;

#[derive(Serialize, ToSchema)]
pub struct PublishResponse {
    /// Always "Event published".
    message: &'static str,
    event: Published,
}

/// Publishes an event; answers once it is durable and fanned out.
#[utoipa::path(post, path = "/api/realtime/publish", tag = "realtime", security(("bearer" = [])),
    request_body = PublishArgs,
    responses(
        (status = 201, description = "Committed and delivered", body = PublishResponse),
        (status = 400, description = "Invalid JSON or fields", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "Publishing as another user", body = ErrorBody),
        (status = 413, description = "Body over max_message_bytes", body = ErrorBody),
        (status = 429, description = "Publishing too fast (publish_rate_per_identity, publish_rate_per_ip, publish_bytes_per_identity, publish_bytes_per_ip); see Retry-After", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down", body = ErrorBody)))]
pub async fn publish(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Caller(caller): Caller,
    body: Result<bytes::Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<PublishResponse>), AppError> {
    let bytes = body.as_ref().map_or(0, bytes::Bytes::len);
    app.admit_http_publish(&caller, peer.ip(), 1, bytes)?;
    let args: PublishArgs = json_body(body)?;
    let event = app.publish(&caller, args).await?;
    let event = Published::of(&event.event);
    Ok((
        StatusCode::CREATED,
        Json(PublishResponse {
            message: "Event published",
            event,
        }),
    ))
}

/// The body of `POST /api/realtime/publish/batch`: each event as `/publish` takes it.
#[derive(Deserialize, ToSchema)]
pub struct PublishBatchArgs {
    /// 1..=1000 events, published in this order.
    #[schema(value_type = Vec<PublishArgs>)]
    events: Vec<Box<RawValue>>,
}

#[derive(Serialize, ToSchema)]
pub struct PublishBatchResponse {
    /// Always "Events published".
    message: &'static str,
    /// One per event, in the order sent (consecutive `seq`s).
    events: Vec<Published>,
}

/// A batch's body may hold up to 1 MiB (each of its events up to `max_message_bytes`).
pub fn batch_body_limit(max_message_bytes: usize) -> usize {
    max_message_bytes.max(1 << 20)
}

/// Publishes several events as one unit: consecutive `seq`s in the order sent, committed
/// together or not at all; answers once they are durable and fanned out.
#[utoipa::path(post, path = "/api/realtime/publish/batch", tag = "realtime", security(("bearer" = [])),
    request_body = PublishBatchArgs,
    responses(
        (status = 201, description = "All committed and delivered", body = PublishBatchResponse),
        (status = 400, description = "Invalid JSON; no events or more than 1000; an invalid event (`events[i]: ...`): nothing is published", body = ErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = ErrorBody),
        (status = 403, description = "An event published as another user: nothing is published", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB, or an event over max_message_bytes", body = ErrorBody),
        (status = 429, description = "Publishing too fast: the batch counts its events and its bytes (see /publish); see Retry-After", body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down: nothing is published", body = ErrorBody)))]
pub async fn publish_batch(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Caller(caller): Caller,
    body: Result<bytes::Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<PublishBatchResponse>), AppError> {
    let bytes = body.as_ref().map_or(0, bytes::Bytes::len);
    let batch: PublishBatchArgs = json_body(body)?;
    if !(1..=MAX_PUBLISH_ALL).contains(&batch.events.len()) {
        return Err(AppError::bad_request(format!(
            "events must hold 1..={MAX_PUBLISH_ALL} events"
        )));
    }
    app.admit_http_publish(&caller, peer.ip(), batch.events.len(), bytes)?;
    let all = batch
        .events
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            if raw.get().len() > app.config.max_message_bytes {
                return Err(AppError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    code::VALIDATION_ERROR,
                    format!("events[{i}]: over {} bytes", app.config.max_message_bytes),
                ));
            }
            json_object(raw.get().as_bytes()).map_err(|mut e| {
                e.message = format!("events[{i}]: {}", e.message);
                e
            })
        })
        .collect::<Result<Vec<PublishArgs>, _>>()?;
    let events = app.publish_all(&caller, all).await?;
    Ok((
        StatusCode::CREATED,
        Json(PublishBatchResponse {
            message: "Events published",
            events: events.iter().map(|e| Published::of(&e.event)).collect(),
        }),
    ))
}

/// Adds a subscription to an open connection (typically an SSE stream) named by `connectionId`.
#[utoipa::path(post, path = "/api/realtime/subscribe", tag = "realtime", security(("bearer" = [])),
    params(("connectionId" = Uuid, Query, description = "From the SSE `connection` event or WebSocket `connection.established`")),
    request_body = SubscribeArgs,
    responses(
        (status = 200, description = "`{message, subscriptionId, eventTypes, filters}`", body = Object),
        (status = 400, description = "Invalid body, patterns, or no connectionId (CONNECTION_ID_REQUIRED)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, description = "Another user's connection", body = ErrorBody),
        (status = 404, description = "No such open connection", body = ErrorBody),
        (status = 429, description = "Subscription limit per connection reached", body = ErrorBody)))]
pub async fn subscribe(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    Query(params): Query<HashMap<String, String>>,
    body: Result<bytes::Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    let args: SubscribeArgs = json_body(body)?;
    if args.since.is_some() {
        return Err(AppError::bad_request(
            "since is for WebSocket subscribe; an SSE stream resumes with Last-Event-ID (or lastEventId)",
        ));
    }
    let Some(raw_id) = params.get("connectionId") else {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            "CONNECTION_ID_REQUIRED",
            "Connection ID required",
        ));
    };
    let conn = Uuid::parse_str(raw_id)
        .ok()
        .and_then(|id| app.hub.get(id))
        .ok_or_else(|| AppError::not_found(format!("no open connection {raw_id}")))?;
    let foreign = conn.user_id().is_some_and(|owner| owner != caller.user_id);
    if foreign && !caller.is_privileged() {
        return Err(AppError::forbidden(
            "that connection belongs to another user",
        ));
    }
    let created = subscribe_connection(&app, &conn, args)?;
    conn.send(Outgoing::Message(ServerMessage::new(
        "subscription.created",
        Some(created.clone()),
    )));
    let mut body = json!({"message": "Subscription created"});
    body.as_object_mut()
        .expect("object")
        .extend(created.as_object().expect("object").clone());
    Ok(Json(body))
}

/// Adds a (live) subscription to a connection; the body of `subscription.created`.
fn subscribe_connection(
    app: &App,
    conn: &Arc<Connection>,
    args: SubscribeArgs,
) -> Result<Value, AppError> {
    let spec = parse_spec(&args)?;
    let sid = app.hub.subscribe(conn, spec.clone()).map_err(hub_error)?;
    Ok(created_body(sid, &spec))
}

/// The `limit` parameter of history routes: 1..=MAX_HISTORY, `default` when absent.
pub fn limit_param(params: &HashMap<String, String>, default: usize) -> Result<usize, AppError> {
    params.get("limit").map_or(Ok(default), |l| {
        l.parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_HISTORY).contains(l))
            .ok_or_else(|| {
                AppError::bad_request(format!("limit must be an integer in 1..={MAX_HISTORY}"))
            })
    })
}

/// Parses the history parameters shared by the history routes.
pub fn history_query(
    params: &HashMap<String, String>,
    access: ReadAccess,
    default_limit: usize,
) -> Result<HistoryQuery, AppError> {
    let mut q = HistoryQuery {
        limit: default_limit,
        access,
        ..Default::default()
    };
    if let Some(types) = params.get("types").filter(|t| !t.is_empty()) {
        if types.split(',').count() > MAX_PATTERNS {
            return Err(AppError::bad_request(format!(
                "types may list at most {MAX_PATTERNS} patterns"
            )));
        }
        for t in types.split(',') {
            herald_core::TypePattern::parse(t.trim()).map_err(AppError::bad_request)?;
            q.types.push(t.trim().to_owned());
        }
    }
    check_id("userId", params.get("userId").map(String::as_str))?;
    check_id("roomId", params.get("roomId").map(String::as_str))?;
    q.user_id = params.get("userId").cloned();
    q.room_id = params.get("roomId").cloned();
    if let Some(since) = params.get("since") {
        if let Ok(seq) = since.parse::<u64>() {
            q.after_seq = Some(seq);
        } else {
            let t = DateTime::parse_from_rfc3339(since).map_err(|_| {
                AppError::bad_request("since must be a seq (integer) or an RFC 3339 time")
            })?;
            q.since_time = Some(t.with_timezone(&Utc));
        }
    }
    q.limit = limit_param(params, default_limit)?;
    Ok(q)
}

#[derive(Serialize, ToSchema)]
pub struct EventsPage {
    count: usize,
    /// Newest first.
    events: Vec<Event>,
}

/// History, newest first; `user.*` events only to their user and operators.
#[utoipa::path(get, path = "/api/realtime/events", tag = "realtime", security(("bearer" = [])),
    params(
        ("types" = Option<String>, Query, description = "Comma-separated type patterns (`a.b`, `a.*`, `*`)"),
        ("userId" = Option<String>, Query), ("roomId" = Option<String>, Query),
        ("since" = Option<String>, Query, description = "A seq (integer: events after it) or an RFC 3339 time"),
        ("limit" = Option<usize>, Query, description = "1..=1000, default 50"),
        ("If-Modified-Since" = Option<String>, Header, description = "Only events after this time (HTTP date or RFC 3339), when `since` is absent; the response's `Last-Modified` is the time to send next")),
    responses((status = 200, body = EventsPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "A `roomId` the caller may not read", body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn events(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<([(HeaderName, String); 1], Json<EventsPage>), AppError> {
    let mut q = history_query(&params, app.access().read_scope(Some(&caller)), 50)?;
    if let Some(room) = &q.room_id {
        app.check_room_read(Some(&caller), room)?;
    }
    // Seed 003's activity feed polls with If-Modified-Since and keeps the Last-Modified it
    // gets back; `since` wins when both are given.
    if q.since_time.is_none() && q.after_seq.is_none() {
        q.since_time = if_modified_since(&headers)?;
    }
    let served_at = Utc::now();
    let events = app.store.query(q).await?;
    let last_modified = served_at.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let page = EventsPage {
        count: events.len(),
        events,
    };
    Ok(([(header::LAST_MODIFIED, last_modified)], Json(page)))
}

/// `If-Modified-Since` as an HTTP date (what browsers send back from `Last-Modified`) or an
/// RFC 3339 time (what seed 003's page sends on its first poll).
fn if_modified_since(headers: &HeaderMap) -> Result<Option<DateTime<Utc>>, AppError> {
    let Some(raw) = headers.get(header::IF_MODIFIED_SINCE) else {
        return Ok(None);
    };
    let raw = raw.to_str().unwrap_or_default().trim();
    DateTime::parse_from_rfc2822(raw)
        .or_else(|_| DateTime::parse_from_rfc3339(raw))
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|_| {
            AppError::bad_request("If-Modified-Since must be an HTTP date or an RFC 3339 time")
        })
}

/// Connection and event statistics.
#[utoipa::path(get, path = "/api/realtime/stats", tag = "realtime", security(("bearer" = [])),
    responses((status = 200, description = "`{connections, events, timestamp}`", body = Object), (status = 401, body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody)))]
pub async fn stats(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
) -> Result<Json<Value>, AppError> {
    let mut summary = app.store.summary().await?;
    if !caller.is_privileged() {
        // The types a caller is shown come from the events it may read, not from every room.
        let visible = app
            .store
            .query(HistoryQuery {
                access: app.access().read_scope(Some(&caller)),
                limit: 1000,
                ..Default::default()
            })
            .await?;
        let types: std::collections::BTreeSet<String> =
            visible.into_iter().map(|e| e.kind).collect();
        summary.recent_types = types.into_iter().collect();
    }
    let hub = app.hub.stats();
    Ok(Json(json!({
        "connections": hub,
        "events": {
            "totalSubscriptions": hub.subscriptions,
            "eventsInHistory": summary.events,
            "eventTypes": summary.recent_types,
            "oldestSeq": summary.oldest_seq,
            "lastSeq": summary.newest_seq,
        },
        "timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })))
}
