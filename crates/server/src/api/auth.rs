//! Credentials on HTTP requests: `Authorization: Bearer <jwt or api key>` or `X-API-Key`.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use herald_core::Identity;
use herald_core::protocol::code;

use crate::app::App;
use crate::error::AppError;

/// The caller's identity; rejects the request with 401 when credentials are missing or bad.
pub struct Caller(pub Identity);

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, AppError> {
        optional_identity(app, &parts.headers, None)?
            .map(Caller)
            .ok_or_else(|| {
                AppError::unauthorized("missing credentials: send Authorization: Bearer <token>")
            })
    }
}

/// Stands for a credential header that is not valid text; no token or key can equal it.
const UNREADABLE: &str = "\u{fffd}";

fn credential<'a>(headers: &'a HeaderMap, query_token: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        // A header that is not text is a bad credential (401), not an absent one.
        .map(|v| v.to_str().unwrap_or(UNREADABLE))
        // The scheme is case-insensitive (RFC 9110 §11.1).
        .map(|v| match v.trim().split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => v.trim(),
        })
        .or_else(|| {
            headers
                .get("x-api-key")
                .map(|v| v.to_str().unwrap_or(UNREADABLE))
        })
        .or(query_token)
        .filter(|t| !t.is_empty())
}

/// No credentials is anonymous; bad credentials are an error, never silently anonymous.
pub fn optional_identity(
    app: &App,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Option<Identity>, AppError> {
    match credential(headers, query_token) {
        None => Ok(None),
        Some(token) => app.auth.verify(token).map(Some).map_err(|e| {
            AppError::new(
                StatusCode::UNAUTHORIZED,
                code::AUTH_FAILED,
                format!("authentication failed: {}", e),
            )
        }),
    }
}
