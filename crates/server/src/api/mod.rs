//! Every HTTP route: seed 000's (`/api/realtime/*`, `/api/dashboard/*`, `/health`), the other
//! seeds' (`seeds`), streams, rooms, the cluster, `/metrics`; the WebSocket and SSE endpoints
//! are routed here to `transport`.

pub mod cluster;
pub mod dashboard;
pub mod documents;
pub mod openapi;
pub mod poll;
pub mod realtime;
pub mod rooms;
pub mod seeds;
pub mod streams;
pub mod system;
pub mod web;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::routing::{any, get, post};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::app::App;
use crate::http::error::AppError;
use crate::transport::{socketio, sse, ws};
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
        .route("/yjs/{name}", get(ws::yjs))
        .route("/api/rooms/{room}/presence", get(rooms::presence))
        .route("/api/documents/{id}", get(documents::state))
        .route("/api/documents/{id}/changes", get(documents::changes))
        .route("/api/cluster/nodes", get(cluster::nodes))
        .route("/health", get(system::health))
        .route("/metrics", get(system::metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/api/realtime/stream", get(sse::stream))
        .route("/events", get(seeds::events::events))
        .route("/events/user/{user_id}", get(seeds::events::user_events))
        .route("/notifications", post(seeds::events::notifications))
        .route("/updates", post(seeds::events::updates))
        .route(
            "/api/messages",
            get(seeds::mailbox::poll).post(seeds::mailbox::send),
        )
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
    if app.config.socketio_conformance {
        router = router
            .route(
                "/engine.io/",
                any(socketio::handle).with_state(socketio::Endpoint::engine_echo(&app)),
            )
            .route(
                "/socket.io/",
                any(socketio::handle).with_state(socketio::Endpoint::socket_io_conformance(&app)),
            );
    } else {
        router = router.route(
            "/socket.io/",
            any(socketio::handle).with_state(socketio::Endpoint::socket_io(&app)),
        );
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
