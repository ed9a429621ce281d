//! Credentials on HTTP requests: `Authorization: Bearer <jwt or api key>`, `X-API-Key`, or the
//! dashboard's cookie (set by `api::web::dashboard`).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use herald_core::Identity;
use herald_core::protocol::code;

use super::error::AppError;
use crate::auth::Auth;

/// The cookie in which the dashboard keeps its token.
pub const AUTH_COOKIE: &str = "herald_token";

/// What the identity extractors need from the server's state (`App` provides it).
pub trait Credentials: Send + Sync {
    /// Verifies tokens and API keys.
    fn auth(&self) -> &Auth;
    /// The origins besides the server's own that a cookie-authenticated write may come from.
    fn cors_origins(&self) -> &[String];
}

/// The caller's identity; rejects the request with 401 when credentials are missing or bad.
pub struct Caller(pub Identity);

impl<S: Credentials> FromRequestParts<Arc<S>> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<S>) -> Result<Self, AppError> {
        match identify(state.auth(), &parts.headers, None)? {
            Some((identity, Source::Cookie)) if !parts.method.is_safe() => {
                check_cookie_write(state.cors_origins(), &parts.headers)?;
                Ok(Caller(identity))
            }
            Some((identity, _)) => Ok(Caller(identity)),
            None => Err(AppError::unauthorized(
                "missing credentials: send Authorization: Bearer <token>",
            )),
        }
    }
}

/// Where a request's credentials came from.
#[derive(Debug, PartialEq)]
enum Source {
    /// A header or the `token` parameter: the request itself chose to send them.
    Explicit,
    /// The dashboard's cookie, which the browser adds by itself.
    Cookie,
}

/// A state-changing request authenticated only by the cookie could have been made by another
/// page the browser has open (cross-site request forgery). Such a request must say it is JSON
/// — which a plain HTML form cannot, and a cross-origin `fetch` cannot without a CORS
/// preflight — and come from an allowed origin: this server's own, or one of `cors_origins`.
fn check_cookie_write(cors_origins: &[String], headers: &HeaderMap) -> Result<(), AppError> {
    let refuse = |why: &str| {
        metrics::counter!("herald_csrf_refused_total").increment(1);
        Err(AppError::new(
            StatusCode::FORBIDDEN,
            code::FORBIDDEN,
            format!(
                "{why}: a write authenticated by the dashboard cookie must be a JSON request from an allowed origin (or send Authorization: Bearer <token>)"
            ),
        ))
    };
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return refuse("Content-Type is not application/json");
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return refuse("no Origin header");
    };
    let own = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|host| {
            origin
                .split_once("://")
                .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
        });
    let listed = cors_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin));
    if own || listed {
        Ok(())
    } else {
        refuse("origin not allowed")
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
    auth: &Auth,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Option<Identity>, AppError> {
    Ok(identify(auth, headers, query_token)?.map(|(identity, _)| identity))
}

fn identify(
    auth: &Auth,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Option<(Identity, Source)>, AppError> {
    match credential(headers, query_token) {
        // The cookie is ambient, not something this request chose to send: one that no longer
        // verifies (expired, or signed with a previous run's generated secret) is ignored, so
        // public routes keep working and the dashboard asks for a new token.
        None => Ok(cookie(headers, AUTH_COOKIE)
            .and_then(|t| auth.verify(t).ok())
            .map(|identity| (identity, Source::Cookie))),
        Some(token) => auth
            .verify(token)
            .map(|i| Some((i, Source::Explicit)))
            .map_err(|e| {
                AppError::new(
                    StatusCode::UNAUTHORIZED,
                    code::AUTH_FAILED,
                    format!("authentication failed: {}", e),
                )
            }),
    }
}
