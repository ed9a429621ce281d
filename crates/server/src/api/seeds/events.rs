//! The seeds' own SSE surface, for pages written against them: seed 001's `GET /events`
//! (`connect`, `ping` every `ping_interval_secs`, `notification` and `update` events),
//! `POST /notifications`, `POST /updates`, and seed 004's authenticated
//! `GET /events/user/{userId}` (`: keep-alive` comments). Every message is a Herald event:
//! stored, sequenced, resumable with `Last-Event-ID`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{SecondsFormat, Utc};
use herald_core::protocol::{PublishArgs, SubscribeArgs};
use herald_core::{Filters, Identity, SubscriptionSpec};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::App;
use crate::http::check_id;
use crate::http::error::{AppError, ErrorBody};
use crate::http::identity::{Caller, optional_identity};
use crate::http::json_body;
use crate::http::replies::parse_spec;
use crate::transport::sse::{self, Flavor, Hello, KeepAlive};

const SEED_001: Flavor = Flavor {
    hello: Hello::Connected,
    keep_alive: KeepAlive::Event("ping"),
    plain: true,
};
const SEED_004_USER: Flavor = Flavor {
    hello: Hello::Nothing,
    keep_alive: KeepAlive::Comment,
    plain: true,
};

fn spec(types: &[&str], user_id: Option<String>) -> Result<SubscriptionSpec, AppError> {
    parse_spec(&SubscribeArgs {
        event_types: types.iter().map(|t| t.to_string()).collect(),
        filters: Some(Filters {
            user_id,
            ..Default::default()
        }),
        since: None,
    })
}

/// Seed 001's stream: broadcast `notification` and `update` events, plus the caller's own
/// notifications when authenticated (header or `token`).
#[utoipa::path(get, path = "/events", operation_id = "seed_events", tag = "seed-compatible",
    params(("token" = Option<String>, Query, description = "JWT or API key: adds your own notifications")),
    responses((status = 200, description = "text/event-stream: `connect`, `notification`, `update`, `ping`", content_type = "text/event-stream"),
        (status = 400, description = "`Last-Event-ID` (or `lastEventId`) is not an event seq", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn events(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, AppError> {
    let identity = optional_identity(&app.auth, &headers, params.get("token").map(String::as_str))?;
    let mut specs = vec![spec(&["notification", "update"], None)?];
    if let Some(i) = &identity {
        specs.push(spec(&["user.notification"], Some(i.user_id.clone()))?);
    }
    sse::open(app, peer, &headers, &params, identity, specs, SEED_001)
}

/// Seed 004's per-user stream: every `user.*` event of that user, named by type without the
/// `user.` prefix. Only that user (or an operator) may open it.
#[utoipa::path(get, path = "/events/user/{userId}", tag = "seed-compatible", security(("bearer" = [])),
    params(("userId" = String, Path)),
    responses((status = 200, description = "text/event-stream with `: keep-alive` comments", content_type = "text/event-stream"),
        (status = 400, description = "An invalid `userId`; `Last-Event-ID` (or `lastEventId`) is not an event seq", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, description = "Another user's stream", body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn user_events(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, AppError> {
    let identity: Identity =
        optional_identity(&app.auth, &headers, params.get("token").map(String::as_str))?
            .ok_or_else(|| {
                AppError::unauthorized("missing credentials: send Authorization: Bearer <token>")
            })?;
    if identity.user_id != user_id && !identity.is_privileged() {
        return Err(AppError::forbidden(
            "you may only open your own event stream",
        ));
    }
    check_id("userId", Some(&user_id))?;
    let specs = vec![spec(&["user.*"], Some(user_id))?];
    sse::open(
        app,
        peer,
        &headers,
        &params,
        Some(identity),
        specs,
        SEED_004_USER,
    )
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NotificationArgs {
    #[serde(default)]
    user_id: Option<String>,
    message: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

/// Seed 001: a `notification` to one user's streams (stored as `user.notification`) or to
/// every `/events` stream (stored as `notification`).
#[utoipa::path(post, path = "/notifications", tag = "seed-compatible", security(("bearer" = [])),
    request_body(content = Object, description = "`{userId?, message, type?}`"),
    responses((status = 200, description = "`{success, notificationId, seq}`", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down", body = ErrorBody)))]
pub async fn notifications(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    body: Result<bytes::Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    let args: NotificationArgs = json_body(body)?;
    check_id("userId", args.user_id.as_deref())?;
    if args.message.is_empty() {
        return Err(AppError::bad_request("message must not be empty"));
    }
    let id = Uuid::new_v4();
    let data = json!({"id": id, "userId": args.user_id, "message": args.message, "type": args.kind, "timestamp": now()});
    let kind = if args.user_id.is_some() {
        "user.notification"
    } else {
        "notification"
    };
    // Reserved types: only operators get past `App::publish`.
    let event = PublishArgs {
        kind: kind.into(),
        data,
        user_id: args.user_id,
        room_id: None,
        metadata: None,
    };
    let committed = app.publish(&caller, event).await?;
    Ok(Json(
        json!({"success": true, "notificationId": id, "seq": committed.event.seq}),
    ))
}

#[derive(Deserialize)]
struct UpdateArgs {
    resource: String,
    action: String,
    #[serde(default)]
    data: Value,
}

/// Seed 001: an `update` event to every `/events` stream.
#[utoipa::path(post, path = "/updates", tag = "seed-compatible", security(("bearer" = [])),
    request_body(content = Object, description = "`{resource, action, data?}`"),
    responses((status = 200, description = "`{success, seq}`", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 503, description = "Store unavailable or shutting down", body = ErrorBody)))]
pub async fn updates(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    body: Result<bytes::Bytes, BytesRejection>,
) -> Result<Json<Value>, AppError> {
    let args: UpdateArgs = json_body(body)?;
    let data = json!({"resource": args.resource, "action": args.action, "data": args.data, "timestamp": now()});
    let event = PublishArgs {
        kind: "update".into(),
        data,
        user_id: None,
        room_id: None,
        metadata: None,
    };
    let committed = app.publish(&caller, event).await?;
    Ok(Json(json!({"success": true, "seq": committed.event.seq})))
}
