//! Long-polling: `GET /api/realtime/poll`. A poll is not a hub connection: it reads the store
//! after its cursor and, while nothing matches, waits on the committed head (a watch that the
//! log's commit sink advances), its timeout, or shutdown — whichever comes first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use herald_core::Event;
use herald_core::resume::{self, Recovery};
use serde::Serialize;
use utoipa::ToSchema;

use super::sse::stream_specs;
use crate::api::auth::optional_identity;
use crate::app::App;
use crate::error::{AppError, ErrorBody};

/// The most events one answer carries.
pub const MAX_BATCH: usize = 500;
pub const DEFAULT_TIMEOUT_SECS: u64 = 25;
pub const MAX_TIMEOUT_SECS: u64 = 60;

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PollBatch {
    /// Matching events after the cursor, oldest first; at most 500.
    events: Vec<Event>,
    /// Poll from here next: the last returned event's seq; when none arrived, the request's
    /// cursor (the current head when it had none).
    cursor: u64,
    /// False when events after the cursor were deleted by retention (or the cursor was never
    /// issued by this server); the batch then starts at the oldest event still stored.
    recovered: bool,
    /// With `recovered: false`: the oldest seq still available.
    #[serde(skip_serializing_if = "Option::is_none")]
    oldest_seq: Option<u64>,
}

/// Long-polling: answers at once with the matching events after `cursor`, or holds the request
/// until one is committed or `timeout` passes (then `events` is empty and `cursor` unchanged).
/// The same subscriptions as the SSE stream: `types` (with `userId`, `roomId`), plus the
/// caller's own `user.notification` and `user.message` when authenticated.
#[utoipa::path(get, path = "/api/realtime/poll", tag = "realtime",
    params(
        ("cursor" = Option<u64>, Query, description = "The `cursor` of the previous answer (a seq); without one, only events committed from now on"),
        ("types" = Option<String>, Query, description = "Comma-separated type patterns; required unless authenticated"),
        ("roomId" = Option<String>, Query), ("userId" = Option<String>, Query),
        ("timeout" = Option<u64>, Query, description = "Seconds to hold the request when nothing matches: default 25, at most 60"),
        ("token" = Option<String>, Query, description = "JWT or API key, for clients that cannot set headers")),
    responses((status = 200, body = PollBatch), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn poll(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<PollBatch>, AppError> {
    let identity = optional_identity(&app, &headers, params.get("token").map(String::as_str))?;
    let specs = stream_specs(identity.as_ref(), &params)?;
    if specs.is_empty() {
        return Err(AppError::bad_request(
            "types is required (an authenticated poll also gets its own user.notification and user.message events)",
        ));
    }
    let timeout = match params.get("timeout") {
        None => DEFAULT_TIMEOUT_SECS,
        Some(t) => t
            .parse::<u64>()
            .map_err(|_| AppError::bad_request("timeout must be a number of seconds"))?
            .min(MAX_TIMEOUT_SECS),
    };
    let cursor = params
        .get("cursor")
        .map(|c| c.trim())
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<u64>()
                .map_err(|_| AppError::bad_request("cursor must be a seq (an integer)"))
        })
        .transpose()?;
    let mut query = resume::union_query(&specs, app.access().read_scope(identity.as_ref()));
    query.limit = MAX_BATCH;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let mut heads = app.head.subscribe();
    let mut stopping = app.stopping.subscribe();
    let head = *heads.borrow_and_update();
    let (mut after, last) = match cursor {
        Some(c) => resume::locate(&*app.store, c, head).await?,
        None => (head, head),
    };
    // Nothing was read past a cursor this server never issued: hand out a real one.
    let idle_cursor = cursor.filter(|c| *c <= last).unwrap_or(head);
    let mut recovery = None;
    loop {
        let head = *heads.borrow_and_update();
        let mut scanned = after;
        let mut events = Vec::new();
        if head > after {
            let page = resume::page(&*app.store, &query, after, head).await?;
            scanned = match page.last() {
                Some(e) if page.len() == MAX_BATCH => e.seq,
                _ => head,
            };
            events = page
                .into_iter()
                .filter(|e| resume::matches_any(&specs, e))
                .collect();
        }
        // Judged after the first read, as a replay does (retention deletes the oldest first).
        let r = match (recovery, cursor) {
            (Some(r), _) => r,
            (None, None) => Recovery::assess(0, None, last),
            (None, Some(c)) => Recovery::assess(c, app.store.oldest_seq().await?, last),
        };
        recovery = Some(r);
        if let Some(newest) = events.last() {
            return Ok(Json(PollBatch {
                cursor: newest.seq,
                events,
                recovered: r.recovered,
                oldest_seq: r.oldest_seq,
            }));
        }
        after = scanned;
        if scanned < head {
            // A full page without a match: read on before waiting.
            continue;
        }
        tokio::select! {
            changed = heads.changed() => if changed.is_err() { break },
            () = tokio::time::sleep_until(deadline) => break,
            _ = stopping.wait_for(|s| *s) => break,
        }
    }
    let r = recovery.expect("assessed in the first round");
    Ok(Json(PollBatch {
        events: Vec::new(),
        cursor: idle_cursor,
        recovered: r.recovered,
        oldest_seq: r.oldest_seq,
    }))
}
