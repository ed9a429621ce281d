//! The request vocabulary the routes and the transports share: errors (`error`), who is
//! calling (`identity`), replies several of them give (`replies`), and here what a request
//! carries: JSON bodies and the ids clients name. Below `app`, which answers in it; it never
//! names `App`.

pub mod error;
pub mod identity;
pub mod replies;

use axum::http::StatusCode;
use herald_core::identity::is_unsafe_in_name;
use herald_core::protocol::code;
use serde::de::DeserializeOwned;

use self::error::AppError;

pub const MAX_ID_LEN: usize = 256;

/// An id a client names (a user, a room filter, a mailbox): 1..=`MAX_ID_LEN` bytes without
/// control or bidirectional-control characters.
pub fn check_id(field: &str, value: Option<&str>) -> Result<(), AppError> {
    match value {
        Some(v) if v.is_empty() || v.len() > MAX_ID_LEN || v.chars().any(is_unsafe_in_name) => {
            Err(AppError::bad_request(format!(
                "{field} must be 1..={MAX_ID_LEN} bytes without control or bidirectional-control characters"
            )))
        }
        _ => Ok(()),
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
