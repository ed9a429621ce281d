//! Errors with a defined answer on every transport: HTTP status + `{error, code}`, or a
//! WebSocket `error` message.

use std::sync::Arc;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_core::protocol::{ServerMessage, code};
use herald_core::{PublishError, StoreError};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct AppError {
    pub status: StatusCode,
    pub message: String,
    pub code: &'static str,
    /// Seconds after which a refused request may succeed: sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl AppError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            code,
            retry_after: None,
        }
    }

    /// Adds `Retry-After`: whole seconds, rounded up (at least 1).
    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        self.retry_after = Some(secs.max(1));
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code::VALIDATION_ERROR, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code::AUTH_REQUIRED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code::NOT_FOUND, message)
    }

    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, code::RATE_LIMITED, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE, message)
    }

    pub fn to_ws(&self, reply_to: Option<Value>) -> Arc<ServerMessage> {
        ServerMessage::error(self.message.clone(), self.code, reply_to)
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "event store error");
        Self::unavailable(e.to_string())
    }
}

impl From<PublishError> for AppError {
    fn from(e: PublishError) -> Self {
        tracing::warn!(error = %e, "publish failed");
        Self::unavailable(e.to_string())
    }
}

/// Every HTTP error body: `{"error": "...", "code": "..."}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Human-readable reason.
    pub error: String,
    /// Machine-readable code (see docs/protocol.md).
    pub code: &'static str,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        metrics::counter!("herald_errors_total", "code" => self.code).increment(1);
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: self.message,
                code: self.code,
            }),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}
