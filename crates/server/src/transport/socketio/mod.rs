//! Socket.IO v5 over Engine.IO v4, on Herald's own connections.
//!
//! The framing is implemented here rather than with socketioxide: socketioxide owns its
//! sockets, their buffers, rooms and adapter, while a Socket.IO session here must be a hub
//! connection like any other — admitted by the same connection limits, fed by the hub's
//! fan-out into its bounded outbox (a client that stops reading is disconnected as any slow
//! consumer), and served over Herald's WebSocket (`transport::ws`) and HTTP stack. Engine.IO
//! sessions are in `engine`, the packet codec in `packet`.
//!
//! With `socketio_conformance` two endpoints serve the official protocol suites: `/engine.io/`
//! echoes every message, `/socket.io/` offers the namespaces `/` and `/custom`, emits `auth`
//! with the handshake's payload on connection, answers `message` with `message-back` and
//! acknowledges `message-with-ack` with its arguments (binary attachments included).

mod conformance;
mod engine;
mod herald;
pub mod packet;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::{CloseReason, Transport};

use self::engine::{Session, Sessions, Timing, bad_request};
use self::packet::BadPacket;
use super::Registration;
use super::ws::{self, Handshake};
use crate::app::App;
use crate::http::error::AppError;

/// What an endpoint does with the messages of its sessions.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Engine.IO alone: every message is sent back.
    EngineEcho,
    /// The Socket.IO conformance namespaces.
    SocketIoConformance,
    /// Herald's namespaces: `/chat` and `/`.
    SocketIo,
}

/// One Engine.IO endpoint (`/engine.io/` or `/socket.io/`) and its sessions.
pub struct Endpoint {
    app: Arc<App>,
    sessions: Arc<Sessions>,
    role: Role,
}

impl Endpoint {
    fn new(app: &Arc<App>, role: Role) -> Arc<Self> {
        let c = &app.config;
        let timing = Timing {
            ping_interval: Duration::from_millis(c.socketio_ping_interval_ms.max(1)),
            ping_timeout: Duration::from_millis(c.socketio_ping_timeout_ms.max(1)),
            max_payload: c.max_message_bytes,
            write_timeout: Duration::from_secs(c.write_timeout_secs.max(1)),
        };
        Arc::new(Self {
            app: app.clone(),
            sessions: Arc::new(Sessions::new(timing)),
            role,
        })
    }

    /// `/engine.io/`, echoing every message (conformance mode only).
    pub fn engine_echo(app: &Arc<App>) -> Arc<Self> {
        Self::new(app, Role::EngineEcho)
    }

    /// `/socket.io/` with the conformance suite's namespaces (conformance mode only).
    pub fn socket_io_conformance(app: &Arc<App>) -> Arc<Self> {
        Self::new(app, Role::SocketIoConformance)
    }

    /// `/socket.io/`: seed 004's `/chat` and Herald's protocol in `/`.
    pub fn socket_io(app: &Arc<App>) -> Arc<Self> {
        Self::new(app, Role::SocketIo)
    }

    fn protocol(&self, registration: &Registration) -> Protocol {
        match self.role {
            Role::EngineEcho => Protocol::Echo,
            Role::SocketIoConformance => Protocol::Conformance(Box::default()),
            Role::SocketIo => Protocol::Herald(Box::new(herald::Namespaces::new(
                self.app.clone(),
                registration.conn.clone(),
            ))),
        }
    }

    /// Opens a session; for Socket.IO, one that has not connected a namespace within
    /// `socketio_connect_timeout_ms` is closed.
    fn open(&self, registration: Registration, websocket: bool) -> Arc<Session> {
        let protocol = self.protocol(&registration);
        let connect_timeout = (self.role != Role::EngineEcho)
            .then(|| Duration::from_millis(self.app.config.socketio_connect_timeout_ms));
        self.sessions
            .open(registration, websocket, protocol, connect_timeout)
    }
}

#[derive(serde::Deserialize)]
pub struct EngineQuery {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

/// Every Engine.IO request: the handshake, polls and posts, WebSocket upgrades.
pub async fn handle(
    State(endpoint): State<Arc<Endpoint>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    Query(query): Query<EngineQuery>,
    upgrade: Result<Handshake, AppError>,
    body: Bytes,
) -> Response {
    if query.eio.as_deref() != Some("4") {
        return bad_request("unsupported protocol version: EIO=4 only");
    }
    let sessions = &endpoint.sessions;
    let session = match &query.sid {
        Some(sid) => match sessions.live(sid) {
            Some(s) => Some(s),
            None => return bad_request("unknown session id"),
        },
        None => None,
    };
    match (query.transport.as_deref(), method, session) {
        (Some("websocket"), Method::GET, session) => {
            let Ok(upgrade) = upgrade else {
                return bad_request("not a WebSocket handshake");
            };
            // The small read buffer of `/ws`: tungstenite's default (128 KiB) would be most of
            // an idle session's memory.
            let config = tungstenite::protocol::WebSocketConfig::default()
                .read_buffer_size(ws::READ_BUFFER)
                .max_message_size(Some(sessions.timing.max_payload))
                .max_frame_size(Some(sessions.timing.max_payload));
            let sessions = sessions.clone();
            match session {
                Some(session) if Sessions::may_upgrade(&session) => upgrade
                    .accept(config, move |socket| {
                        sessions.run_websocket(session, socket, true)
                    }),
                // Already upgraded (or being upgraded): the second socket is accepted and closed,
                // so the session's own socket goes on undisturbed.
                Some(_) => upgrade.accept(config, |mut socket| async move {
                    let policy = CloseReason::POLICY;
                    let _ = socket
                        .close(policy.code, "the session has been upgraded")
                        .await;
                }),
                None => match Registration::open(&endpoint.app, peer.ip(), Transport::SocketIo) {
                    Ok(registration) => upgrade.accept(config, move |socket| async move {
                        let session = endpoint.open(registration, true);
                        sessions.run_websocket(session, socket, false).await;
                    }),
                    Err(e) => e.into_response(),
                },
            }
        }
        (Some("polling"), Method::GET, Some(session)) => sessions.poll(&session).await,
        (Some("polling"), Method::GET, None) => {
            match Registration::open(&endpoint.app, peer.ip(), Transport::SocketIo) {
                Ok(registration) => {
                    let session = endpoint.open(registration, false);
                    sessions.poll(&session).await
                }
                Err(e) => e.into_response(),
            }
        }
        (Some("polling"), Method::POST, Some(session)) => sessions.post(&session, &body).await,
        (Some("polling" | "websocket"), _, _) => bad_request("bad request method"),
        _ => bad_request("unknown transport: polling or websocket"),
    }
}

/// What a session's messages mean.
pub enum Protocol {
    Echo,
    Conformance(Box<conformance::Namespaces>),
    Herald(Box<herald::Namespaces>),
}

impl Protocol {
    async fn on_text(&mut self, session: &Session, data: &str) -> Result<(), BadPacket> {
        match self {
            Self::Echo => {
                session.send_text(format!("4{data}"));
                Ok(())
            }
            Self::Conformance(sio) => sio.on_packet(session, data),
            Self::Herald(sio) => sio.on_packet(session, data).await,
        }
    }

    fn on_binary(&mut self, session: &Session, data: Bytes) -> Result<(), BadPacket> {
        match self {
            Self::Echo => {
                session.send_binary(data);
                Ok(())
            }
            Self::Conformance(sio) => sio.on_attachment(session, data),
            Self::Herald(_) => Err(BadPacket("binary attachments are not supported; send JSON")),
        }
    }

    fn has_connected(&self) -> bool {
        match self {
            Self::Echo => true,
            Self::Conformance(sio) => sio.connected_once,
            Self::Herald(sio) => sio.connected_once,
        }
    }
}
