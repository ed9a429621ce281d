//! The HTTP API: routes of seed 000 (`/api/realtime/*`, `/api/dashboard/*`, `/health`) plus
//! `/metrics`, and the WebSocket endpoints.

pub mod auth;
pub mod cluster;
pub mod compat;
pub mod dashboard;
pub mod openapi;
pub mod realtime;
pub mod rooms;
pub mod streams;
pub mod system;
pub mod web;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::app::App;
use crate::error::AppError;
use crate::transport::{mailbox, poll, sse, ws};
use herald_core::protocol::code;

pub fn router(app: Arc<App>) -> Router {
    let mut router = Router::new()
        .route("/", get(system::root))
        .route("/herald.js", get(web::file))
        .route("/herald.d.ts", get(web::file))
        .route("/dashboard/{file}", get(web::file))
        .route("/examples", get(web::examples))
        .route("/examples/", get(web::file))
        .route("/examples/{file}", get(web::file))
        .route("/ws", get(ws::events))
        .route("/ws/chat", get(ws::events))
        .route("/ws/rooms", get(ws::events))
        .route("/api/rooms/{room}/presence", get(rooms::presence))
        .route("/api/cluster/nodes", get(cluster::nodes))
        .route("/health", get(system::health))
        .route("/metrics", get(system::metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/api/realtime/stream", get(sse::stream))
        .route("/events", get(compat::events))
        .route("/events/user/{user_id}", get(compat::user_events))
        .route("/notifications", post(compat::notifications))
        .route("/updates", post(compat::updates))
        .route("/api/messages", get(mailbox::poll).post(mailbox::send))
        // Seed 003's polling chat posts where it polls: publishing, as on `/publish`.
        .route(
            "/api/realtime/poll",
            get(poll::poll).post(realtime::publish),
        )
        .route("/api/realtime/subscribe", post(realtime::subscribe))
        .route("/api/realtime/publish", post(realtime::publish))
        .route(
            "/api/realtime/publish/batch",
            post(realtime::publish_batch).layer(DefaultBodyLimit::max(realtime::batch_body_limit(
                app.config.max_message_bytes,
            ))),
        )
        .route("/api/realtime/events", get(realtime::events))
        .route("/api/realtime/stats", get(realtime::stats))
        .route("/api/dashboard/live-data", get(dashboard::live_data))
        .route("/api/dashboard/activity", get(dashboard::activity))
        .route("/api/dashboard/alerts", get(dashboard::alerts))
        .route("/api/dashboard/notify", post(dashboard::notify))
        .route("/api/streams", get(streams::list).post(streams::create))
        .route(
            "/api/streams/{name}",
            get(streams::subscribe)
                .post(streams::publish)
                .delete(streams::delete),
        );
    if app.config.ws_echo {
        router = router.route("/echo", get(ws::echo));
    }
    router
        .fallback(streams::by_path)
        .method_not_allowed_fallback(|| async {
            AppError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                code::INVALID_MESSAGE,
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(app.config.max_message_bytes))
        .layer(cors(&app.config.cors_origins))
        .with_state(app)
}

fn cors(origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::CACHE_CONTROL,
            header::HeaderName::from_static("last-event-id"),
            header::HeaderName::from_static("x-api-key"),
        ]);
    if origins.iter().any(|o| o == "*") {
        layer.allow_origin(Any)
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        layer
            .allow_origin(AllowOrigin::list(list))
            .allow_credentials(true)
    }
}

/// Parses a JSON request body into `T`, answering 400 with the parser's reason. Bodies over
/// the size limit are answered 413.
pub fn json_body<T: DeserializeOwned>(
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<T, AppError> {
    json_object(&body_bytes(body)?)
}

/// Parses a JSON object into `T`, answering 400 with the parser's reason.
pub fn json_object<T: DeserializeOwned>(json: &[u8]) -> Result<T, AppError> {
    let parsed = parse_json(json)?;
    // serde also fills a struct from a JSON array, positionally; bodies are objects only.
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(AppError::bad_request("request body must be a JSON object"));
    }
    Ok(parsed)
}

/// Like `json_body`, for bodies that may be any JSON value.
pub fn any_json_body(
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<serde_json::Value, AppError> {
    parse_json(&body_bytes(body)?)
}

fn body_bytes(
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<bytes::Bytes, AppError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                code::VALIDATION_ERROR,
                "request body too large",
            )
        } else {
            AppError::bad_request(e.body_text())
        }
    })
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, AppError> {
    serde_json::from_slice(body).map_err(|e| {
        let c = if e.is_syntax() || e.is_eof() {
            code::INVALID_JSON
        } else {
            code::VALIDATION_ERROR
        };
        AppError::new(
            StatusCode::BAD_REQUEST,
            c,
            format!("invalid request body: {e}"),
        )
    })
}
