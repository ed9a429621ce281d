//! Server-Sent Events transport: `GET /api/realtime/stream`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use chrono::{SecondsFormat, Utc};
use herald_core::outbox::Drained;
use herald_core::protocol::{ServerMessage, SubscribeArgs};
use herald_core::resume::Replay;
use herald_core::wire::EventFrames;
use herald_core::{CloseReason, Filters, Identity, Outgoing, SubscriptionSpec, Transport};
use serde_json::json;

use super::Registration;
use super::session::count_resume;
use crate::app::App;
use crate::http::error::AppError;
use crate::http::identity::optional_identity;
use crate::http::replies::{hub_error, parse_spec};

/// Events every authenticated stream receives without asking (seed behaviour).
const PERSONAL_TYPES: [&str; 2] = ["user.notification", "user.message"];

/// The Server-Sent Events stream (events `connection`, `recovery`, `event`, `notification`, `heartbeat`, `close`).
#[utoipa::path(get, path = "/api/realtime/stream", tag = "realtime",
    params(("types" = Option<String>, Query, description = "Comma-separated type patterns; subscribes when present"),
        ("roomId" = Option<String>, Query), ("userId" = Option<String>, Query),
        ("token" = Option<String>, Query, description = "JWT or API key, for clients that cannot set headers"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume: replay the matching events after this seq, then go live"),
        ("lastEventId" = Option<u64>, Query, description = "Resume position for clients that cannot set headers; the header wins")),
    responses((status = 200, description = "text/event-stream", content_type = "text/event-stream"),
        (status = 400, body = crate::http::error::ErrorBody), (status = 401, body = crate::http::error::ErrorBody),
        (status = 429, body = crate::http::error::ErrorBody), (status = 503, body = crate::http::error::ErrorBody)))]
pub async fn stream(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, AppError> {
    let identity = optional_identity(&app.auth, &headers, params.get("token").map(String::as_str))?;
    let specs = stream_specs(identity.as_ref(), &params)?;
    open(
        app,
        peer,
        &headers,
        &params,
        identity,
        specs,
        Flavor::HERALD,
    )
}

/// How a stream looks on the wire. Herald's own stream wraps events (`event: event`, the whole
/// event as data); the seeds' pages listen for events by name with only their data.
#[derive(Clone, Copy)]
pub struct Flavor {
    /// The record that opens the stream.
    pub hello: Hello,
    pub keep_alive: KeepAlive,
    /// Events as `EventFrames::sse_plain_frame` rather than `sse_frame`.
    pub plain: bool,
}

#[derive(Clone, Copy)]
pub enum Hello {
    /// `event: connection` with `{connectionId}`.
    ConnectionId,
    /// `event: connect` with `{type: "connected", timestamp}` (seed 001).
    Connected,
    Nothing,
}

#[derive(Clone, Copy)]
pub enum KeepAlive {
    /// A named event with `{timestamp}`.
    Event(&'static str),
    /// A `: keep-alive` comment, invisible to `EventSource` handlers (seed 004).
    Comment,
}

impl Flavor {
    pub const HERALD: Self = Self {
        hello: Hello::ConnectionId,
        keep_alive: KeepAlive::Event("heartbeat"),
        plain: false,
    };
}

/// Opens an SSE stream with these subscriptions (resuming after `Last-Event-ID` when given).
pub fn open(
    app: Arc<App>,
    peer: SocketAddr,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    identity: Option<Identity>,
    specs: Vec<SubscriptionSpec>,
    flavor: Flavor,
) -> Result<Response, AppError> {
    let since = last_event_id(headers, params)?;
    let registration = Registration::open(&app, peer.ip(), Transport::Sse)?;
    let conn = registration.conn.clone();
    match flavor.hello {
        Hello::ConnectionId => conn.send(Outgoing::Message(ServerMessage::new(
            "connection",
            Some(json!({"connectionId": conn.id})),
        ))),
        Hello::Connected => conn.send(Outgoing::Message(ServerMessage::new(
            "connect",
            Some(json!({"type": "connected", "connectionId": conn.id, "timestamp": now()})),
        ))),
        Hello::Nothing => true,
    };
    if let Some(identity) = identity {
        app.hub.authenticate(&conn, identity).map_err(hub_error)?;
    }
    match since {
        // Resume: replay, then live (see herald_core::resume); `recovery` first when events
        // after the position are gone.
        Some(since) if !specs.is_empty() => {
            let replay = Replay::begin(&app.hub, &conn, specs, since).map_err(hub_error)?;
            let (store, conn) = (app.store.clone(), conn.clone());
            tokio::spawn(async move {
                let replayed = replay.run(&*store, |started| {
                    if let Ok(r) = started {
                        count_resume("sse", &r);
                        if !r.recovered {
                            conn.send(Outgoing::Message(ServerMessage::new(
                                "recovery",
                                Some(json!({"recovered": false, "oldestSeq": r.oldest_seq})),
                            )));
                        }
                    }
                });
                if let Err(e) = replayed.await {
                    tracing::warn!(connection = %conn.id, error = %e, "SSE resume failed; stream closed");
                }
            });
        }
        _ => {
            for spec in specs {
                app.hub.subscribe(&conn, spec).map_err(hub_error)?;
            }
        }
    }

    Ok(respond(registration, flavor, None))
}

/// The `text/event-stream` response that writes the connection's outbox (heartbeats
/// included) until the client goes or the outbox closes. `attached` is dropped with the stream (e.g. to
/// leave a data stream), right before the connection is unregistered.
pub fn respond(
    registration: Registration,
    flavor: Flavor,
    attached: Option<Box<dyn Send>>,
) -> Response {
    unregister_on_overflow(&registration);
    let state = StreamState {
        flavor,
        _attached: attached,
        registration,
        done: false,
    };
    let body = Body::from_stream(futures_util::stream::unfold(state, next_chunk));
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The subscriptions a stream or long-poll makes from its request: the authenticated user's
/// personal events, and `types` (with `userId`, `roomId`) when present.
pub fn stream_specs(
    identity: Option<&Identity>,
    params: &HashMap<String, String>,
) -> Result<Vec<SubscriptionSpec>, AppError> {
    let mut specs = Vec::new();
    if let Some(identity) = identity {
        specs.push(parse_spec(&SubscribeArgs {
            event_types: PERSONAL_TYPES.map(String::from).to_vec(),
            filters: Some(Filters {
                user_id: Some(identity.user_id.clone()),
                ..Default::default()
            }),
            since: None,
        })?);
    }
    if let Some(types) = params.get("types").filter(|t| !t.is_empty()) {
        specs.push(parse_spec(&SubscribeArgs {
            event_types: types.split(',').map(|t| t.trim().to_owned()).collect(),
            filters: Some(Filters {
                user_id: params.get("userId").cloned(),
                room_id: params.get("roomId").cloned(),
                ..Default::default()
            }),
            since: None,
        })?);
    }
    Ok(specs)
}

/// The resume position: the `Last-Event-ID` header (sent by `EventSource` when it reconnects),
/// else the `lastEventId` query parameter.
fn last_event_id(
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<Option<u64>, AppError> {
    raw_last_event_id(headers, params)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                AppError::bad_request("Last-Event-ID (or lastEventId) must be an event seq")
            })
        })
        .transpose()
}

/// The `Last-Event-ID` header, else the `lastEventId` query parameter, as given.
pub fn raw_last_event_id<'a>(
    headers: &'a HeaderMap,
    params: &'a HashMap<String, String>,
) -> Option<&'a str> {
    headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("?"))
        .or(params.get("lastEventId").map(String::as_str))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Unregisters the connection from the hub as soon as its outbox overflows. The stream cannot
/// do it in time itself: its writer stops polling the body while the client's socket is full,
/// which is when a queue overflows. The TCP connection goes when the client reads again (and
/// gets the `close` record) or when the write times out (`crate::listener`), whichever comes
/// first.
fn unregister_on_overflow(registration: &Registration) {
    let (hub, id) = (registration.hub.clone(), registration.conn.id);
    let runtime = tokio::runtime::Handle::current();
    registration.conn.outbox.on_overflow(Box::new(move || {
        // In a task: the push that overflowed may come from the hub, under its locks.
        drop(runtime.spawn(async move {
            tracing::info!(connection = %id, "SSE outbound buffer overflowed; connection unregistered");
            hub.disconnect(id);
        }));
    }));
}

struct StreamState {
    flavor: Flavor,
    /// Held only to be dropped with the stream; declared before `registration`, so it is
    /// dropped first.
    _attached: Option<Box<dyn Send>>,
    registration: Registration,
    done: bool,
}

/// Everything queued since the last chunk becomes one chunk (one write). The hub's heartbeat
/// arrives as `Outgoing::Ping` and becomes the flavor's keep-alive record.
async fn next_chunk(mut s: StreamState) -> Option<(Result<Bytes, std::io::Error>, StreamState)> {
    if s.done {
        return None;
    }
    let conn = s.registration.conn.clone();
    // The batch is taken with the queue's buffer and freed once written: an idle stream holds none.
    let (batch, drained) = conn.outbox.next_batch().await;
    let mut out = BytesMut::new();
    for item in batch {
        match item {
            Outgoing::Event(e) if s.flavor.plain => out.extend_from_slice(e.sse_plain_frame()),
            Outgoing::Event(e) => out.extend_from_slice(e.sse_frame()),
            Outgoing::Message(m) => out.extend_from_slice(m.sse_frame()),
            Outgoing::Raw { payload, .. } => out.extend_from_slice(&payload),
            Outgoing::Ping => {
                // An SSE client never speaks: the heartbeat it takes is its sign of life.
                conn.touch();
                match s.flavor.keep_alive {
                    KeepAlive::Event(name) => out.extend_from_slice(
                        ServerMessage::new(name, Some(json!({"timestamp": now()}))).sse_frame(),
                    ),
                    KeepAlive::Comment => out.extend_from_slice(b": keep-alive\n\n"),
                }
            }
        }
    }
    if let Drained::Close(reason) = drained {
        // Counted here, once the client is told; a client that never reads again is
        // counted when the write times out instead (`crate::listener`).
        if reason == CloseReason::SLOW_CONSUMER {
            metrics::counter!("herald_slow_consumers_total").increment(1);
        }
        let close = ServerMessage::new(
            "close",
            Some(json!({"code": reason.code, "reason": reason.reason})),
        );
        out.extend_from_slice(close.sse_frame());
        s.done = true;
    }
    Some((Ok(out.freeze()), s))
}
