//! `/api/dashboard/*`: live figures, activity, alerts and operator notifications.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use chrono::{Duration, SecondsFormat, Utc};
use herald_core::log::MAX_PUBLISH_ALL;
use herald_core::protocol::PublishArgs;
use herald_core::protocol::ServerMessage;
use herald_core::store::HistoryQuery;
use herald_core::{Event, Outgoing};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::realtime::limit_param;
use crate::app::App;
use crate::http::check_id;
use crate::http::error::{AppError, ErrorBody};
use crate::http::identity::Caller;
use crate::http::json_body;

/// Real figures of this node: connections, users, events today, process CPU and memory.
#[utoipa::path(get, path = "/api/dashboard/live-data", tag = "dashboard", security(("bearer" = [])),
    responses((status = 200, description = "`{activeUsers, totalConnections, connectionsByType, eventsToday, systemLoad, memoryUsage, uptime}`", body = Object),
        (status = 401, body = ErrorBody), (status = 503, description = "Store unavailable", body = ErrorBody)))]
pub async fn live_data(
    State(app): State<Arc<App>>,
    Caller(_): Caller,
) -> Result<Json<Value>, AppError> {
    let midnight = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc();
    let events_today = app.store.count_since(midnight).await?;
    let hub = app.hub.stats();
    let process = app.process.lock().sample();
    Ok(Json(json!({
        "activeUsers": hub.unique_users,
        "totalConnections": hub.total,
        "connectionsByType": hub.by_type,
        "eventsToday": events_today,
        "systemLoad": {"cpuPercent": process.cpu_percent, "cores": process.cpu_cores},
        "memoryUsage": {"rss": process.rss_bytes, "virtual": process.virtual_bytes},
        "uptime": app.started.elapsed().as_secs_f64(),
    })))
}

fn activity_message(e: &Event) -> String {
    let field = |k: &str| {
        e.data.get(k).map_or_else(
            || "unknown".to_owned(),
            |v| v.as_str().map_or_else(|| v.to_string(), str::to_owned),
        )
    };
    match e.kind.as_str() {
        "user.login" => format!("User logged in from {}", field("ipAddress")),
        "user.action" => format!("User performed action: {}", field("action")),
        "system.alert" => format!("System alert: {}", field("message")),
        other => format!("Event: {other}"),
    }
}

/// Recent `user.login`, `user.action` and `system.alert` events as readable activity.
#[utoipa::path(get, path = "/api/dashboard/activity", tag = "dashboard", security(("bearer" = [])),
    params(("limit" = Option<usize>, Query, description = "1..=1000, default 20")),
    responses((status = 200, description = "`{activities: [{id, seq, type, message, timestamp, userId}]}`", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, description = "Store unavailable", body = ErrorBody)))]
pub async fn activity(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, AppError> {
    let q = HistoryQuery {
        types: vec![
            "user.login".into(),
            "user.action".into(),
            "system.alert".into(),
        ],
        limit: limit_param(&params, 20)?,
        access: app.access().read_scope(Some(&caller)),
        ..Default::default()
    };
    let activities: Vec<Value> = app
        .store
        .query(q)
        .await?
        .iter()
        .map(|e| json!({"id": e.id, "seq": e.seq, "type": e.kind, "message": activity_message(e), "timestamp": e.timestamp.to_rfc3339_opts(SecondsFormat::Millis, true), "userId": e.user_id}))
        .collect();
    Ok(Json(json!({"activities": activities})))
}

/// `system.error`, `system.warning`, `system.critical` of the last 24 h, grouped by type.
#[utoipa::path(get, path = "/api/dashboard/alerts", tag = "dashboard", security(("bearer" = [])),
    responses((status = 200, description = "`{alerts: {<type>: [Event]}, total}`", body = Object), (status = 401, body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody)))]
pub async fn alerts(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
) -> Result<Json<Value>, AppError> {
    let q = HistoryQuery {
        types: vec![
            "system.error".into(),
            "system.warning".into(),
            "system.critical".into(),
        ],
        since_time: Some(Utc::now() - Duration::hours(24)),
        limit: 100,
        access: app.access().read_scope(Some(&caller)),
        ..Default::default()
    };
    let events = app.store.query(q).await?;
    let total = events.len();
    let mut grouped: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    for e in events {
        grouped.entry(e.kind.clone()).or_default().push(e);
    }
    Ok(Json(json!({"alerts": grouped, "total": total})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifyArgs {
    message: String,
    #[serde(default = "info", rename = "type")]
    kind: String,
    #[serde(default)]
    target_users: Vec<String>,
}

fn info() -> String {
    "info".into()
}

/// Operators (admin token or API key) notify listed users, or everyone.
#[utoipa::path(post, path = "/api/dashboard/notify", tag = "dashboard", security(("bearer" = [])),
    request_body(content = Object, description = "`{message, type?, targetUsers?}`"),
    responses((status = 201, description = "`{message, notification, connectionsReached}`", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "Not an operator", body = ErrorBody), (status = 503, description = "Store unavailable or shutting down", body = ErrorBody)))]
pub async fn notify(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    body: Result<bytes::Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let args: NotifyArgs = json_body(body)?;
    if args.message.is_empty() {
        return Err(AppError::bad_request("message must not be empty"));
    }
    for u in &args.target_users {
        check_id("targetUsers[]", Some(u))?;
    }
    let notification = json!({
        "id": Uuid::new_v4(),
        "message": args.message,
        "type": args.kind,
        "createdBy": caller.user_id,
        "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
    });
    let message = Outgoing::Message(ServerMessage::new(
        "notification",
        Some(notification.clone()),
    ));
    // Reserved types: only operators get past `App::publish`.
    let event = |kind: &str, user: Option<&String>| PublishArgs {
        kind: kind.into(),
        data: notification.clone(),
        user_id: user.cloned(),
        room_id: None,
        metadata: None,
    };
    let mut reached = 0;
    if args.target_users.is_empty() {
        app.publish(&caller, event("system.notification", None))
            .await?;
        reached += app.hub.broadcast(&message);
    } else {
        // One commit for every target (in chunks the log takes at once), not one per user.
        let mut events: Vec<PublishArgs> = args
            .target_users
            .iter()
            .map(|user| event("user.notification", Some(user)))
            .collect();
        while !events.is_empty() {
            let rest = events.split_off(events.len().min(MAX_PUBLISH_ALL));
            app.publish_all(&caller, events).await?;
            events = rest;
        }
        for user in &args.target_users {
            reached += app.hub.send_to_user(user, &message);
        }
    }
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"message": "Notification sent", "notification": notification, "connectionsReached": reached}),
        ),
    ))
}
