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

mod engine;
pub mod packet;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::{CloseReason, Outgoing, Transport};
use serde_json::{Value, json};

use self::engine::{Session, Sessions, Timing, bad_request};
use self::packet::{BadPacket, Kind, decode, encode};
use super::Registration;
use super::ws::Handshake;
use crate::app::App;
use crate::http::error::AppError;

/// What an endpoint does with the messages of its sessions.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Engine.IO alone: every message is sent back.
    EngineEcho,
    /// The Socket.IO conformance namespaces.
    SocketIoConformance,
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

    fn protocol(&self) -> Protocol {
        match self.role {
            Role::EngineEcho => Protocol::Echo,
            Role::SocketIoConformance => Protocol::SocketIo(Box::default()),
        }
    }

    /// Opens a session; for Socket.IO, one that has not connected a namespace within
    /// `socketio_connect_timeout_ms` is closed.
    fn open(&self, registration: Registration, websocket: bool) -> Arc<Session> {
        let session = self.sessions.open(registration, websocket, self.protocol());
        if self.role == Role::SocketIoConformance {
            let (sessions, s) = (self.sessions.clone(), session.clone());
            let wait = Duration::from_millis(self.app.config.socketio_connect_timeout_ms);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                if !s.is_closed() && !s.protocol.lock().await.has_connected() {
                    sessions.close(&s, CloseReason::POLICY);
                }
            });
        }
        session
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
            let config = tungstenite::protocol::WebSocketConfig::default()
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
    SocketIo(Box<SocketIo>),
}

impl Protocol {
    fn on_text(&mut self, session: &Session, data: &str) -> Result<(), BadPacket> {
        match self {
            Self::Echo => {
                session.send_text(format!("4{data}"));
                Ok(())
            }
            Self::SocketIo(sio) => sio.on_packet(session, data),
        }
    }

    fn on_binary(&mut self, session: &Session, data: Bytes) -> Result<(), BadPacket> {
        match self {
            Self::Echo => {
                session.send_binary(data);
                Ok(())
            }
            Self::SocketIo(sio) => sio.on_attachment(session, data),
        }
    }

    fn has_connected(&self) -> bool {
        match self {
            Self::Echo => true,
            Self::SocketIo(sio) => sio.connected_once,
        }
    }
}

/// A binary packet waiting for its attachments.
struct Partial {
    kind: Kind,
    namespace: String,
    id: Option<u64>,
    data: Value,
    expected: usize,
    attachments: Vec<Bytes>,
}

/// The Socket.IO state of one Engine.IO session: its connected namespaces, by socket id.
#[derive(Default)]
pub struct SocketIo {
    namespaces: HashMap<String, String>,
    connected_once: bool,
    partial: Option<Partial>,
}

/// How long after the CONNECT reply the conformance namespaces emit `auth`.
const AUTH_DELAY: Duration = Duration::from_millis(20);

/// The namespaces of the conformance suite.
const CONFORMANCE_NAMESPACES: [&str; 2] = ["/", "/custom"];

impl SocketIo {
    fn on_packet(&mut self, session: &Session, text: &str) -> Result<(), BadPacket> {
        if self.partial.is_some() {
            return Err(BadPacket("a text packet while attachments were expected"));
        }
        let p = decode(text)?;
        let data = p.data.unwrap_or(Value::Null);
        if p.attachments > 0 {
            self.partial = Some(Partial {
                kind: p.kind,
                namespace: p.namespace.to_owned(),
                id: p.id,
                data,
                expected: p.attachments,
                attachments: Vec::with_capacity(p.attachments),
            });
            return Ok(());
        }
        self.on_complete(session, p.kind, p.namespace, p.id, data, Vec::new())
    }

    fn on_attachment(&mut self, session: &Session, bytes: Bytes) -> Result<(), BadPacket> {
        let partial = self
            .partial
            .as_mut()
            .ok_or(BadPacket("binary data without a packet"))?;
        partial.attachments.push(bytes);
        if partial.attachments.len() < partial.expected {
            return Ok(());
        }
        let Some(p) = self.partial.take() else {
            return Ok(());
        };
        self.on_complete(session, p.kind, &p.namespace, p.id, p.data, p.attachments)
    }

    fn on_complete(
        &mut self,
        session: &Session,
        kind: Kind,
        namespace: &str,
        id: Option<u64>,
        data: Value,
        attachments: Vec<Bytes>,
    ) -> Result<(), BadPacket> {
        match kind {
            Kind::Connect => {
                if !CONFORMANCE_NAMESPACES.contains(&namespace) {
                    let error = json!({"message": "Invalid namespace"}).to_string();
                    session.send_text(encode(Kind::ConnectError, namespace, None, 0, Some(&error)));
                    return Ok(());
                }
                let sid = uuid::Uuid::new_v4().simple().to_string();
                let reply = json!({ "sid": sid }).to_string();
                session.send_text(encode(Kind::Connect, namespace, None, 0, Some(&reply)));
                let auth = match data {
                    Value::Null => json!({}),
                    auth => auth,
                };
                let event = json!(["auth", auth]).to_string();
                let auth = encode(Kind::Event, namespace, None, 0, Some(&event));
                // A moment later, in a write of its own: the suite's client starts listening
                // for `auth` only once it has handled the CONNECT reply, and misses a second
                // packet delivered with the first.
                let conn = session.conn.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(AUTH_DELAY).await;
                    conn.send(Outgoing::Raw {
                        payload: Bytes::from(auth),
                        text: true,
                    });
                });
                self.namespaces.insert(namespace.to_owned(), sid);
                self.connected_once = true;
            }
            Kind::Disconnect => {
                self.namespaces.remove(namespace);
            }
            Kind::Event | Kind::BinaryEvent if self.namespaces.contains_key(namespace) => {
                let Value::Array(mut args) = data else {
                    return Err(BadPacket("event payload must be an array"));
                };
                let name = args.remove(0);
                let binary = !attachments.is_empty();
                let n = attachments.len();
                let reply = match (name.as_str(), id) {
                    (Some("message"), _) => {
                        args.insert(0, json!("message-back"));
                        let kind = if binary {
                            Kind::BinaryEvent
                        } else {
                            Kind::Event
                        };
                        encode(
                            kind,
                            namespace,
                            None,
                            n,
                            Some(&Value::Array(args).to_string()),
                        )
                    }
                    (Some("message-with-ack"), Some(id)) => {
                        let kind = if binary { Kind::BinaryAck } else { Kind::Ack };
                        encode(
                            kind,
                            namespace,
                            Some(id),
                            n,
                            Some(&Value::Array(args).to_string()),
                        )
                    }
                    _ => return Ok(()),
                };
                session.send_text(reply);
                for a in attachments {
                    session.send_binary(a);
                }
            }
            Kind::Event | Kind::BinaryEvent | Kind::Ack | Kind::BinaryAck => {}
            Kind::ConnectError => return Err(BadPacket("CONNECT_ERROR is sent by servers only")),
        }
        Ok(())
    }
}
