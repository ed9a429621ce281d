//! Collaborative documents over HTTP: the current state and the change history.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use herald_core::Event;
use herald_core::store::{HistoryQuery, Order};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::app::App;
use crate::app::documents::{CHANGE, room_of};
use crate::http::error::{AppError, ErrorBody};
use crate::http::identity::Caller;

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DocumentState {
    document_id: String,
    content: String,
    version: u64,
    /// The participants connected to this node, with their cursors.
    participants: Vec<Value>,
}

/// A document's content, version and participants. Needs read access to its room
/// (`document:{id}`).
#[utoipa::path(get, path = "/api/documents/{id}", tag = "documents", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = DocumentState), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, description = "No access to the document", body = ErrorBody)))]
pub async fn state(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<DocumentState>, AppError> {
    let room = room_of(&id)?;
    app.check_room_read(Some(&caller), &room)?;
    let view = app.documents.view(&*app.store, &id).await?;
    Ok(Json(DocumentState {
        document_id: id,
        content: view.content,
        version: view.version,
        participants: view.participants,
    }))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangesPage {
    document_id: String,
    /// `document.change` events, oldest first: `data` is the change as its author sent it
    /// (`baseVersion`, `position`, `length`, `text`).
    changes: Vec<Event>,
}

/// A document's change history, as stored (within retention), oldest first.
#[utoipa::path(get, path = "/api/documents/{id}/changes", tag = "documents", security(("bearer" = [])),
    params(("id" = String, Path),
        ("after" = Option<u64>, Query, description = "Only changes with a greater `seq`"),
        ("limit" = Option<usize>, Query, description = "1..=1000, default 100")),
    responses((status = 200, body = ChangesPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, description = "No access to the document", body = ErrorBody)))]
pub async fn changes(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<ChangesPage>, AppError> {
    let room = room_of(&id)?;
    app.check_room_read(Some(&caller), &room)?;
    let number = |key: &str| {
        params
            .get(key)
            .map(|v| v.parse::<u64>())
            .transpose()
            .map_err(|_| AppError::bad_request(format!("{key} must be a non-negative integer")))
    };
    let after = number("after")?;
    let limit = number("limit")?.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AppError::bad_request("limit must be 1..=1000"));
    }
    let changes = app
        .store
        .query(HistoryQuery {
            types: vec![CHANGE.to_owned()],
            room_id: Some(room),
            after_seq: after,
            order: Order::OldestFirst,
            limit: limit as usize,
            access: app.access().read_scope(Some(&caller)),
            ..Default::default()
        })
        .await?;
    Ok(Json(ChangesPage {
        document_id: id,
        changes,
    }))
}
