//! Credentials on HTTP requests: `Authorization: Bearer <jwt or api key>`, `X-API-Key`, or the
//! dashboard's cookie (see `api::web::dashboard`).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use herald_core::Identity;
use herald_core::protocol::code;

use super::web::AUTH_COOKIE;
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

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// No credentials is anonymous; bad credentials are an error, never silently anonymous.
pub fn optional_identity(
    app: &App,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Option<Identity>, AppError> {
    match credential(headers, query_token) {
        // The cookie is ambient, not something this request chose to send: one that no longer
        // verifies (expired, or signed with a previous run's generated secret) is ignored, so
        // public routes keep working and the dashboard asks for a new token.
        None => Ok(cookie(headers, AUTH_COOKIE).and_then(|t| app.auth.verify(t).ok())),
        Some(token) => app.auth.verify(token).map(Some).map_err(|e| {
            AppError::new(
                StatusCode::UNAUTHORIZED,
                code::AUTH_FAILED,
                format!("authentication failed: {}", e),
            )
        }),
    }
}
