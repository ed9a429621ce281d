//! `/` (WebSocket upgrade or the dashboard), `/health`, `/metrics`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, MatchedPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use herald_core::Transport;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;

use super::web;
use crate::app::App;
use crate::http::error::AppError;
use crate::transport::ws;

/// `GET /` speaks WebSocket to WebSocket clients (the seeds connect to the root URL) and
/// serves the dashboard to browsers.
pub async fn root(
    State(app): State<Arc<App>>,
    peer: ConnectInfo<SocketAddr>,
    path: MatchedPath,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
    upgrade: Result<ws::Handshake, AppError>,
) -> Result<Response, AppError> {
    match upgrade {
        Ok(upgrade) => ws::events(State(app), peer, path, upgrade).await,
        Err(_) => {
            let token = query.ok().and_then(|Query(q)| q.get("token").cloned());
            Ok(web::dashboard(&app, token.as_deref(), &headers))
        }
    }
}

/// Liveness: 200 when the store answers, 503 otherwise.
#[utoipa::path(get, path = "/health", tag = "system",
    responses((status = 200, description = "`{status, timestamp, connections, events: {lastSeq}, uptime}`", body = Object),
        (status = 503, description = "Store unavailable", body = Object)))]
pub async fn health(State(app): State<Arc<App>>) -> Response {
    let hub = app.hub.stats();
    let last_seq = app.store.last_seq().await;
    let status = if last_seq.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if last_seq.is_ok() { "healthy" } else { "unhealthy" },
        "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        "connections": hub,
        "events": {"lastSeq": last_seq.ok()},
        "uptime": app.started.elapsed().as_secs_f64(),
    });
    (status, Json(body)).into_response()
}

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once).
pub fn install_metrics() {
    PROMETHEUS.get_or_init(|| PrometheusBuilder::new().install_recorder().ok());
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let Some(handle) = PROMETHEUS.get().and_then(Option::as_ref) else {
        return AppError::unavailable("metrics recorder not installed").into_response();
    };
    let stats = app.hub.stats();
    for (transport, n) in [
        (Transport::WebSocket, stats.by_type.websocket),
        (Transport::Sse, stats.by_type.sse),
        (Transport::LongPoll, stats.by_type.longpoll),
        (Transport::SocketIo, stats.by_type.socketio),
    ] {
        let label = match transport {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::LongPoll => "longpoll",
            Transport::SocketIo => "socketio",
        };
        metrics::gauge!("herald_connections", "transport" => label).set(n as f64);
    }
    metrics::gauge!("herald_subscriptions").set(stats.subscriptions as f64);
    metrics::gauge!("herald_users").set(stats.unique_users as f64);
    metrics::gauge!("herald_mailboxes").set(app.mailboxes.len() as f64);
    let rss = app.process.lock().sample().rss_bytes;
    metrics::gauge!("herald_process_resident_memory_bytes").set(rss as f64);
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    metrics::gauge!("herald_runtime_workers").set(workers as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}
