//! Long-polling: `GET /api/realtime/poll`. A poll is a hub connection for as long as it is
//! held (`Transport::LongPoll`): it counts against `max_connections` and, per client address,
//! `max_long_polls_per_ip`, and its subscriptions sit in the hub's subscription index like any
//! other, so a commit reaches it through fan-out only when an event matches one of them and
//! the poll may read it — an idle poll costs a commit nothing. The poll registers first, then
//! reads the store once for what matched after its cursor up to the fan-out head it saw (every
//! later event arrives in its outbox: the resume seam, `herald_core::resume`); with nothing
//! there, it waits on its outbox, its timeout, or shutdown — whichever comes first. An answer
//! holds at most `MAX_BATCH` events and `long_poll_max_bytes` of them (at least one event);
//! its `cursor` says where to continue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use herald_core::outbox::Drained;
use herald_core::resume::{self, Recovery};
use herald_core::store::HistoryQuery;
use herald_core::{CloseReason, Event, Outgoing, SubscriptionSpec, Transport};
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::app::App;
use crate::app::limits::client_key;
use crate::http::error::{AppError, ErrorBody};
use crate::http::identity::optional_identity;
use crate::http::replies::hub_error;
use crate::transport::Registration;
use crate::transport::sse::stream_specs;

/// The most events one answer carries.
pub const MAX_BATCH: usize = 500;
pub const DEFAULT_TIMEOUT_SECS: u64 = 25;
pub const MAX_TIMEOUT_SECS: u64 = 60;
/// Events read from the store per query: a page of large events is held in memory while it is
/// turned into the answer.
const PAGE: usize = 100;

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PollBatch {
    /// Matching events after the cursor, oldest first; at most 500, and at most
    /// `long_poll_max_bytes` of them (always at least one).
    #[schema(value_type = Vec<Event>)]
    events: Vec<Box<RawValue>>,
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

/// The events of an answer, bounded in count and bytes.
struct Answer {
    events: Vec<Box<RawValue>>,
    bytes: usize,
    max_bytes: usize,
    /// The seq of the last event taken.
    last: u64,
}

impl Answer {
    fn new(max_bytes: usize) -> Self {
        Self {
            events: Vec::new(),
            bytes: 0,
            max_bytes,
            last: 0,
        }
    }

    /// Takes an event unless the answer is full (the first is always taken).
    fn take(&mut self, seq: u64, json: Box<RawValue>) -> bool {
        let len = json.get().len() + 1;
        if !self.events.is_empty()
            && (self.events.len() >= MAX_BATCH || self.bytes + len > self.max_bytes)
        {
            return false;
        }
        self.bytes += len;
        self.last = seq;
        self.events.push(json);
        true
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// Reads the matching events in `(after, until]` from the store into `answer`, until it is
/// full or the range is read.
async fn read_store(
    app: &App,
    query: &HistoryQuery,
    specs: &[SubscriptionSpec],
    mut after: u64,
    until: u64,
    answer: &mut Answer,
) -> Result<(), AppError> {
    while after < until {
        metrics::counter!("herald_long_poll_store_reads_total").increment(1);
        let page = resume::page(&*app.store, query, after, until).await?;
        after = match page.last() {
            Some(e) if page.len() == query.limit => e.seq,
            _ => until,
        };
        for e in page.iter().filter(|e| resume::matches_any(specs, e)) {
            let json = serde_json::value::to_raw_value(e).expect("events serialise");
            if !answer.take(e.seq, json) {
                return Ok(());
            }
        }
    }
    Ok(())
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
        (status = 401, body = ErrorBody),
        (status = 429, description = "This address holds max_long_polls_per_ip polls already", body = ErrorBody),
        (status = 503, description = "Connection limit (max_connections) reached, store unavailable, or shutting down", body = ErrorBody)))]
pub async fn poll(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<PollBatch>, AppError> {
    let identity = optional_identity(&app.auth, &headers, params.get("token").map(String::as_str))?;
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
    query.limit = PAGE;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let refused = |limit: &'static str, e: AppError| {
        metrics::counter!("herald_refused_total", "resource" => "longpoll", "limit" => limit)
            .increment(1);
        e
    };
    let max_per_ip = app.config.max_long_polls_per_ip;
    let _slot = app
        .long_polls
        .take(client_key(peer.ip()), max_per_ip)
        .ok_or_else(|| {
            refused(
                "per_ip",
                AppError::rate_limited(format!(
                    "this address holds {max_per_ip} long-polls already (max_long_polls_per_ip); poll again once one is answered"
                )),
            )
        })?;
    let conn = app.hub.connect(Transport::LongPoll).map_err(|e| {
        refused(
            "max_connections",
            AppError::unavailable(format!("{e}; try again later")),
        )
    })?;
    let registration = Registration {
        hub: app.hub.clone(),
        conn,
    };
    let conn = &registration.conn;
    if let Some(identity) = identity {
        app.hub.authenticate(conn, identity).map_err(hub_error)?;
    }
    for spec in &specs {
        app.hub.subscribe(conn, spec.clone()).map_err(hub_error)?;
    }
    // Read after subscribing: every event up to it is in the store, every later match arrives
    // in the outbox.
    let head = app.hub.head();
    let (after, last) = match cursor {
        Some(c) => resume::locate(&*app.store, c, head).await?,
        None => (head, head),
    };
    // Nothing was read past a cursor this server never issued: hand out a real one.
    let idle_cursor = cursor.filter(|c| *c <= last).unwrap_or(head);
    let mut answer = Answer::new(app.config.long_poll_max_bytes);
    read_store(&app, &query, &specs, after, head, &mut answer).await?;
    // Judged after the first read, as a replay does (retention's bound never goes down).
    let recovery = match cursor {
        None => Recovery::assess(0, None, last),
        Some(c) => Recovery::assess(c, app.store.oldest_seq().await?, last),
    };
    // Live events the store read covered, or at or before the cursor, are not news.
    let seen = after.max(head);
    let mut stopping = app.stopping.subscribe();
    while answer.is_empty() {
        let (batch, drained) = tokio::select! {
            taken = conn.outbox.next_batch() => taken,
            () = tokio::time::sleep_until(deadline) => break,
            _ = stopping.wait_for(|s| *s) => break,
        };
        for item in batch {
            match item {
                Outgoing::Event(e)
                    if e.event.seq > seen && resume::matches_any(&specs, &e.event) =>
                {
                    let json = String::from_utf8(e.json().to_vec()).expect("JSON is UTF-8");
                    let json = RawValue::from_string(json).expect("an event's JSON");
                    if !answer.take(e.event.seq, json) {
                        break;
                    }
                }
                // The hub's heartbeat: the poll is alive (it is not idle, only waiting).
                Outgoing::Ping => conn.touch(),
                _ => {}
            }
        }
        if let Drained::Close(reason) = drained {
            if reason == CloseReason::SLOW_CONSUMER && answer.is_empty() {
                // More matched at once than an outbox holds: they are in the store.
                read_store(&app, &query, &specs, seen, app.hub.head(), &mut answer).await?;
            }
            break;
        }
    }
    let cursor = if answer.is_empty() {
        idle_cursor
    } else {
        answer.last
    };
    Ok(Json(PollBatch {
        events: answer.events,
        cursor,
        recovered: recovery.recovered,
        oldest_seq: recovery.oldest_seq,
    }))
}
