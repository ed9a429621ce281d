//! Streams (seed 002's stream routes, see `herald_core::stream`): `GET/POST /api/streams`,
//! `GET/POST/DELETE /api/streams/{name}`, and each stream's own path. Those paths are served
//! from the router's fallback, which looks the path up in the registry, so streams created at
//! run time get theirs as well.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use herald_core::protocol::code;
use herald_core::stream::{Published, Stream, StreamInfo, StreamSpec};
use herald_core::{Identity, Role, Transport};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::App;
use crate::http::error::{AppError, ErrorBody};
use crate::http::identity::Caller;
use crate::http::replies::stream_error;
use crate::http::{any_json_body, json_body};
use crate::transport::Registration;
use crate::transport::sse::{self, Flavor, Hello, KeepAlive};

/// Unnamed records only, so `EventSource.onmessage` sees every message and nothing else;
/// keep-alives are comments for the same reason.
const FLAVOR: Flavor = Flavor {
    hello: Hello::Nothing,
    keep_alive: KeepAlive::Comment,
    plain: true,
};

fn find(app: &App, name: &str) -> Result<Arc<Stream>, AppError> {
    app.streams
        .get(name)
        .ok_or_else(|| AppError::not_found(format!("no stream named {name:?}")))
}

fn admin(caller: &Identity) -> Result<(), AppError> {
    if caller.role == Role::Admin {
        Ok(())
    } else {
        Err(AppError::forbidden(
            "only admins may create or delete streams",
        ))
    }
}

#[derive(Serialize, ToSchema)]
pub struct StreamList {
    streams: Vec<StreamInfo>,
}

/// Every stream with its retained-history size and subscriber count.
#[utoipa::path(get, path = "/api/streams", tag = "streams", security(("bearer" = [])),
    responses((status = 200, body = StreamList), (status = 401, body = ErrorBody)))]
pub async fn list(State(app): State<Arc<App>>, Caller(_): Caller) -> Json<StreamList> {
    Json(StreamList {
        streams: app.streams.list(),
    })
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateStream {
    /// 1..=64 characters of `A-Z a-z 0-9 . _ -`.
    name: String,
    /// Where the stream is served; default `/<name>`. Must not be one of Herald's own routes.
    path: Option<String>,
    /// Messages retained for new subscribers, 0..=10000; default 100.
    history: Option<usize>,
    /// Deliver at most the latest message per this many ms; 0 or absent: every message.
    #[serde(default)]
    throttle_ms: u64,
    /// Deliver one JSON array per this many ms; 0 or absent: no batching.
    #[serde(default)]
    batch_ms: u64,
}

/// Creates a stream (admins only). It is served at once, at its path and at
/// `/api/streams/{name}`; it lasts until deleted or the server stops.
#[utoipa::path(post, path = "/api/streams", tag = "streams", security(("bearer" = [])),
    request_body = CreateStream,
    responses((status = 201, body = StreamInfo),
        (status = 400, description = "Invalid name, path, history or intervals; a path of a built-in route", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 409, description = "The name or path is taken (CONFLICT)", body = ErrorBody)))]
pub async fn create(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    body: Result<bytes::Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<StreamInfo>), AppError> {
    admin(&caller)?;
    let args: CreateStream = json_body(body)?;
    let spec = StreamSpec::new(
        args.name,
        args.path,
        args.history,
        args.throttle_ms,
        args.batch_ms,
    );
    let stream = app.streams.create(spec).map_err(stream_error)?;
    tracing::info!(stream = %stream.spec().name, path = %stream.spec().path, "stream created");
    Ok((StatusCode::CREATED, Json(stream.info())))
}

/// Deletes a stream (admins only): its SSE readers get a `close` record and their streams end
/// (an `EventSource` reconnecting then gets 404 and stops); WebSocket subscribers get
/// `stream.deleted`.
#[utoipa::path(delete, path = "/api/streams/{name}", tag = "streams", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, description = "`{deleted: <name>, subscribers: <how many were reading>}`", body = Object),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, AppError> {
    admin(&caller)?;
    let subscribers = app
        .streams
        .remove(&name)
        .ok_or_else(|| AppError::not_found(format!("no stream named {name:?}")))?;
    tracing::info!(stream = %name, subscribers, "stream deleted");
    Ok(Json(json!({"deleted": name, "subscribers": subscribers})))
}

/// Sends a message (any JSON value, at most `max_message_bytes`) to every subscriber, and
/// retains it for new ones. Not stored in the event log: stream messages live in memory.
#[utoipa::path(post, path = "/api/streams/{name}", operation_id = "stream_publish", tag = "streams", security(("bearer" = [])),
    params(("name" = String, Path)),
    request_body(content = Value, description = "The message: any JSON value"),
    responses((status = 200, description = "Queued for `delivered` of the `subscribers`", body = Published),
        (status = 202, description = "A throttled or batched stream delivers it at the end of its interval (no `delivered`)", body = Published),
        (status = 400, description = "Not JSON", body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, description = "No such stream", body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 429, description = "Publishing too fast (the budgets of `POST /api/realtime/publish`); see Retry-After", body = ErrorBody)))]
pub async fn publish(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    body: Result<bytes::Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Published>), AppError> {
    let bytes = body.as_ref().map_or(0, bytes::Bytes::len);
    app.admit_http_publish(&caller, peer.ip(), 1, bytes)?;
    let stream = find(&app, &name)?;
    let message = any_json_body(body)?;
    let published = stream.publish(&message);
    metrics::counter!("herald_stream_messages_total").increment(1);
    let status = if published.delivered.is_some() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(published)))
}

/// The stream as Server-Sent Events; the same as `GET <the stream's path>`.
#[utoipa::path(get, path = "/api/streams/{name}", operation_id = "stream_subscribe", tag = "streams",
    params(("name" = String, Path),
        ("Last-Event-ID" = Option<String>, Header, description = "Only the retained messages after this id, instead of the whole snapshot"),
        ("lastEventId" = Option<String>, Query, description = "The same, for clients that cannot set headers")),
    responses((status = 200, description = "text/event-stream: the retained snapshot, then each message, as unnamed records (`id:`, `data: <json>`); `: keep-alive` comments", content_type = "text/event-stream"),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn subscribe(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, AppError> {
    let stream = find(&app, &name)?;
    open(&app, peer, &headers, &params, stream)
}

/// The router's fallback: a stream's own path, or 404.
pub async fn by_path(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let Some(stream) = app.streams.by_path(uri.path()) else {
        return Err(AppError::not_found("no such route"));
    };
    if method != Method::GET {
        return Err(AppError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            code::INVALID_MESSAGE,
            format!(
                "a stream's path is read with GET; send to it with POST /api/streams/{}",
                stream.spec().name
            ),
        ));
    }
    // Parsed only here, so a malformed query on an unknown route stays a 404.
    let Query(params) = Query::<HashMap<String, String>>::try_from_uri(&uri)
        .map_err(|e| AppError::bad_request(e.body_text()))?;
    open(&app, peer, &headers, &params, stream)
}

fn open(
    app: &App,
    peer: SocketAddr,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    stream: Arc<Stream>,
) -> Result<Response, AppError> {
    let registration = Registration::open(app, peer.ip(), Transport::Sse)?;
    let conn = registration.conn.id;
    stream
        .subscribe(&registration.conn, sse::raw_last_event_id(headers, params))
        .map_err(stream_error)?;
    let leave = Box::new(Leave { stream, conn });
    Ok(sse::respond(registration, FLAVOR, Some(leave)))
}

/// Unsubscribes the SSE connection when its response ends, however it ends.
struct Leave {
    stream: Arc<Stream>,
    conn: Uuid,
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.stream.unsubscribe(self.conn);
    }
}
