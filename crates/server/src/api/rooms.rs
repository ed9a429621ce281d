//! Room presence over HTTP.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use herald_core::room::{Presence, validate_room};
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::App;
use crate::http::error::{AppError, ErrorBody};
use crate::http::identity::Caller;

#[derive(Serialize, ToSchema)]
pub struct RoomPresence {
    room: String,
    /// Present members, each once however many connections it has in the room.
    count: usize,
    users: Vec<Presence>,
}

/// Who is in a room now. Needs access to the room.
#[utoipa::path(get, path = "/api/rooms/{room}/presence", tag = "rooms", security(("bearer" = [])),
    params(("room" = String, Path)),
    responses((status = 200, body = RoomPresence), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, description = "No access to the room", body = ErrorBody)))]
pub async fn presence(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    Path(room): Path<String>,
) -> Result<Json<RoomPresence>, AppError> {
    validate_room(&room).map_err(AppError::bad_request)?;
    app.check_room_read(Some(&caller), &room)?;
    let users = app.hub.presence(&room);
    Ok(Json(RoomPresence {
        count: users.len(),
        room,
        users,
    }))
}
