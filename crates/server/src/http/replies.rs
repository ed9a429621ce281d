//! Replies and refusals that several routes and transports give alike: the publish
//! acknowledgement, a subscription's `subscription.created` body, and the hub's and streams'
//! errors as `AppError`s; and the subscription request they all validate.

use axum::http::StatusCode;
use herald_core::SubscriptionSpec;
use herald_core::hub::HubError;
use herald_core::protocol::{SubscribeArgs, code};
use herald_core::stream::StreamError;
use serde_json::{Value, json};
use uuid::Uuid;

use super::check_id;
use super::error::AppError;

/// The acknowledgement shared by WebSocket `event.published` and HTTP 201.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Published {
    pub success: bool,
    pub id: Uuid,
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(serialize_with = "herald_core::event::iso_millis")]
    pub timestamp: chrono::DateTime<chrono::Utc>,
}

impl Published {
    pub fn of(e: &herald_core::Event) -> Self {
        Self {
            success: true,
            id: e.id,
            seq: e.seq,
            kind: e.kind.clone(),
            timestamp: e.timestamp,
        }
    }
}

/// Validates a subscription request (patterns, filter lengths).
pub fn parse_spec(args: &SubscribeArgs) -> Result<SubscriptionSpec, AppError> {
    let filters = args.filters.clone().unwrap_or_default();
    check_id("filters.userId", filters.user_id.as_deref())?;
    check_id("filters.roomId", filters.room_id.as_deref())?;
    SubscriptionSpec::parse(&args.event_types, filters).map_err(AppError::bad_request)
}

/// The body of `subscription.created`.
pub fn created_body(sid: Uuid, spec: &SubscriptionSpec) -> Value {
    let filters = serde_json::to_value(&spec.filters).expect("filters serialise");
    json!({"subscriptionId": sid, "eventTypes": spec.event_types(), "filters": filters})
}

pub fn hub_error(e: HubError) -> AppError {
    match e {
        HubError::TooManySubscriptions(_)
        | HubError::TooManyRooms(_)
        | HubError::SubscriptionsTooLarge(_)
        | HubError::TooManyReplays => AppError::rate_limited(e.to_string()),
        HubError::OtherUser(_) => {
            AppError::new(StatusCode::CONFLICT, code::CONFLICT, e.to_string())
        }
        HubError::NotInRoom => {
            AppError::new(StatusCode::BAD_REQUEST, code::NOT_IN_ROOM, e.to_string())
        }
        other => AppError::not_found(other.to_string()),
    }
}

/// A taken name or path, or a second subscription, is a conflict (409); the rest bad requests.
pub fn stream_error(e: StreamError) -> AppError {
    if e.is_conflict() {
        AppError::new(StatusCode::CONFLICT, code::CONFLICT, e.to_string())
    } else {
        AppError::bad_request(e.to_string())
    }
}
