//! Engine.IO v4 sessions: the open handshake, HTTP long-polling (a GET takes what the
//! session's outbox holds, a POST delivers the client's packets), WebSocket alone or as an
//! upgrade from polling (`2probe` / `3probe` / `5`), and the server's heartbeat.
//!
//! A session is one hub connection: its outbox holds whole Engine.IO packets (`Raw`; binary
//! messages as binary items), bounded as every connection's is, drained by whichever transport
//! carries the session.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use herald_core::Connection;
use herald_core::outbox::Drained;
use herald_core::{CloseReason, Outgoing};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::Notify;

use super::Protocol;
use super::herald::Routes;
use super::packet::{BadPacket, EnginePacket, decode_engine};
use crate::transport::Registration;
use crate::transport::ws::{Error, Message, Socket, close_reason_for, frame, linger};

/// Separates packets in a long-polling payload.
const SEPARATOR: char = '\x1e';

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carrier {
    Polling,
    /// A WebSocket answered the probe: polls end with a noop until the upgrade completes.
    Probing,
    WebSocket,
}

struct State {
    carrier: Carrier,
    /// A GET is waiting for packets.
    polling: bool,
    /// When the next ping is due, once the last one has been answered.
    ping_due: Instant,
    /// When the unanswered ping's time runs out.
    pong_due: Option<Instant>,
    /// When a Socket.IO session that has connected no namespace is closed.
    connect_due: Option<Instant>,
}

pub struct Session {
    pub sid: String,
    pub conn: Arc<Connection>,
    /// Taken when the session closes: off the hub's books at once, whoever still holds the
    /// session.
    registration: Mutex<Option<Registration>>,
    state: Mutex<State>,
    closed: AtomicBool,
    /// Ends a waiting poll when a WebSocket takes the session over.
    probed: Notify,
    pub protocol: tokio::sync::Mutex<Protocol>,
    /// The connected namespaces, by which the writer renders the hub's events and messages.
    pub routes: Routes,
}

impl Session {
    /// Queues a text packet; false when the session is closed or just overflowed.
    pub fn send_text(&self, packet: String) -> bool {
        self.conn.send(Outgoing::Raw {
            payload: Bytes::from(packet),
            text: true,
        })
    }

    pub fn send_binary(&self, payload: Bytes) -> bool {
        self.conn.send(Outgoing::Raw {
            payload,
            text: false,
        })
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Heartbeat and limits of the Engine.IO sessions.
#[derive(Clone, Copy)]
pub(super) struct Timing {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub max_payload: usize,
    pub write_timeout: Duration,
}

/// The open sessions of one Engine.IO endpoint, by sid.
pub(super) struct Sessions {
    pub timing: Timing,
    open: Mutex<HashMap<String, Arc<Session>>>,
    /// The heartbeat of all the sessions runs once started.
    beating: AtomicBool,
}

impl Sessions {
    pub(super) fn new(timing: Timing) -> Self {
        Self {
            timing,
            open: Mutex::default(),
            beating: AtomicBool::new(false),
        }
    }

    /// Opens a session on an admitted hub connection; the open packet is the first thing
    /// queued. A session given `connect_timeout` is closed unless its protocol has connected
    /// by then.
    pub(super) fn open(
        self: &Arc<Self>,
        registration: Registration,
        websocket: bool,
        protocol: Protocol,
        connect_timeout: Option<Duration>,
    ) -> Arc<Session> {
        let now = Instant::now();
        let conn = registration.conn.clone();
        // Random, not the connection's id: the sid is all a request needs to act as the
        // session, and connection ids appear in logs.
        let sid = uuid::Uuid::new_v4().simple().to_string();
        let session = Arc::new(Session {
            sid: sid.clone(),
            conn,
            registration: Mutex::new(Some(registration)),
            state: Mutex::new(State {
                carrier: if websocket {
                    Carrier::WebSocket
                } else {
                    Carrier::Polling
                },
                polling: false,
                ping_due: now + self.timing.ping_interval,
                pong_due: None,
                connect_due: connect_timeout.map(|t| now + t),
            }),
            closed: AtomicBool::new(false),
            probed: Notify::new(),
            protocol: tokio::sync::Mutex::new(protocol),
            routes: Routes::default(),
        });
        let t = self.timing;
        let upgrades: &[&str] = if websocket { &[] } else { &["websocket"] };
        let open = json!({
            "sid": sid,
            "upgrades": upgrades,
            "pingInterval": t.ping_interval.as_millis() as u64,
            "pingTimeout": t.ping_timeout.as_millis() as u64,
            "maxPayload": t.max_payload,
        });
        session.send_text(format!("0{open}"));
        self.open.lock().insert(sid, session.clone());
        // A session whose client stops taking packets (over either transport) is closed as
        // soon as its outbox overflows; from a task, as the hub may be pushing under its lock.
        let (sessions, overflowed) = (self.clone(), Arc::downgrade(&session));
        session.conn.outbox.on_overflow(Box::new(move || {
            tokio::spawn(async move {
                if let Some(session) = overflowed.upgrade() {
                    tracing::info!(connection = %session.conn.id, "Socket.IO outbox overflowed; disconnecting");
                    metrics::counter!("herald_slow_consumers_total").increment(1);
                    sessions.close(&session, CloseReason::SLOW_CONSUMER);
                }
            });
        }));
        if !self.beating.swap(true, Ordering::AcqRel) {
            tokio::spawn(heartbeat(Arc::downgrade(self)));
        }
        session
    }

    /// One beat of the heartbeat: pings the sessions whose ping is due, closes those whose
    /// ping or namespace connection is overdue.
    fn beat(self: &Arc<Self>, now: Instant) {
        let t = self.timing;
        let mut ping = Vec::new();
        let mut late = Vec::new();
        let mut unconnected = Vec::new();
        for session in self.open.lock().values() {
            let mut st = session.state.lock();
            match st.pong_due {
                Some(due) if due <= now => late.push(session.clone()),
                Some(_) => {}
                None if st.ping_due <= now => {
                    // Counted from when the ping was due, so that a client is gone
                    // `ping_interval + ping_timeout` after its last pong, whenever the beat
                    // comes.
                    st.pong_due = Some(st.ping_due + t.ping_timeout);
                    ping.push(session.clone());
                }
                None => {}
            }
            if st.connect_due.is_some_and(|due| due <= now) {
                st.connect_due = None;
                unconnected.push(session.clone());
            }
        }
        for session in ping {
            session.send_text("2".into());
        }
        for session in late {
            self.close(&session, CloseReason::IDLE);
        }
        for session in unconnected {
            let sessions = self.clone();
            tokio::spawn(async move {
                if !session.is_closed() && !session.protocol.lock().await.has_connected() {
                    sessions.close(&session, CloseReason::POLICY);
                }
            });
        }
    }

    fn get(&self, sid: &str) -> Option<Arc<Session>> {
        self.open.lock().get(sid).cloned()
    }

    /// Ends a session: forgotten, off the hub, and its transport told to finish with what is
    /// queued.
    pub(super) fn close(&self, session: &Session, reason: CloseReason) {
        if session.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.open.lock().remove(&session.sid);
        session.conn.outbox.close(reason);
        drop(session.registration.lock().take());
    }

    /// A long-polling GET: waits for packets and answers them as one payload.
    pub(super) async fn poll(&self, session: &Arc<Session>) -> Response {
        {
            let mut st = session.state.lock();
            match st.carrier {
                Carrier::WebSocket => return bad_request("the session has been upgraded"),
                Carrier::Probing => return text("6"),
                Carrier::Polling => {}
            }
            if st.polling {
                drop(st);
                // The waiting poll is answered with a close packet.
                session.send_text("1".into());
                self.close(session, CloseReason::POLICY);
                return bad_request("duplicate poll");
            }
            st.polling = true;
        }
        let _polling = PollGuard(session);
        loop {
            let (batch, drained) = tokio::select! {
                drained = session.conn.outbox.next_batch() => drained,
                () = session.probed.notified() => return text("6"),
            };
            let payload = payload_of(&session.routes, &batch);
            if let Drained::Close(_) = drained {
                self.close(session, CloseReason::NORMAL);
                return text(if payload.is_empty() { "6" } else { &payload });
            }
            if !payload.is_empty() {
                return text(&payload);
            }
        }
    }

    /// A long-polling POST: the client's packets, in order.
    pub(super) async fn post(&self, session: &Arc<Session>, body: &[u8]) -> Response {
        if session.state.lock().carrier == Carrier::WebSocket {
            return bad_request("the session has been upgraded");
        }
        let Ok(body) = std::str::from_utf8(body) else {
            self.close(session, CloseReason::INVALID_UTF8);
            return bad_request("the payload is not UTF-8");
        };
        for packet in body.split(SEPARATOR) {
            let handled = match packet.strip_prefix('b') {
                Some(b64) => match BASE64.decode(b64) {
                    Ok(bytes) => self.on_binary(session, Bytes::from(bytes)).await,
                    Err(_) => Err(BadPacket("bad base64")),
                },
                None => self.on_text(session, packet).await,
            };
            if let Err(e) = handled {
                self.close(session, CloseReason::PROTOCOL_ERROR);
                return bad_request(&e.to_string());
            }
        }
        text("ok")
    }

    /// One text packet from the client, over either transport.
    async fn on_text(&self, session: &Arc<Session>, packet: &str) -> Result<(), BadPacket> {
        session.conn.touch();
        match decode_engine(packet)? {
            EnginePacket::Message(data) => {
                session.protocol.lock().await.on_text(session, data).await?;
            }
            EnginePacket::Pong => {
                let mut st = session.state.lock();
                // The next ping is `ping_interval` after this pong; one not asked for changes
                // nothing.
                if st.pong_due.take().is_some() {
                    st.ping_due = Instant::now() + self.timing.ping_interval;
                }
            }
            EnginePacket::Close => self.close(session, CloseReason::NORMAL),
            EnginePacket::Noop => {}
            EnginePacket::Ping(_) | EnginePacket::Upgrade => {
                return Err(BadPacket("unexpected packet"));
            }
        }
        Ok(())
    }

    async fn on_binary(&self, session: &Arc<Session>, bytes: Bytes) -> Result<(), BadPacket> {
        session.conn.touch();
        session.protocol.lock().await.on_binary(session, bytes)
    }

    /// A WebSocket carrying the session: alone from the start (`upgrading` false), or taking
    /// over a polling session once it has answered the probe and received the upgrade.
    pub(super) async fn run_websocket(
        self: Arc<Self>,
        session: Arc<Session>,
        mut socket: Box<Socket>,
        upgrading: bool,
    ) {
        let mut upgraded = !upgrading;
        let (reason, read_failed) = loop {
            // The select only picks the next step; the step runs boxed after it, so that what
            // it awaits is not part of every idle session's task.
            let step: BoxFuture<'_, Step> = tokio::select! {
                (batch, drained) = session.conn.outbox.next_batch(), if upgraded => {
                    Box::pin(self.write(&session, &mut socket, batch, drained))
                }
                message = socket.recv() => {
                    Box::pin(self.on_message(&session, &mut socket, message, upgraded))
                }
            };
            match step.await {
                Step::Open => {}
                Step::Upgraded => upgraded = true,
                Step::End(reason) => break (reason, false),
                Step::ReadFailed(reason) => break (reason, true),
            }
        };
        if upgraded {
            self.close(&session, reason.clone().unwrap_or(CloseReason::NORMAL));
        } else {
            // A probe that never completed: the session goes on polling.
            let mut st = session.state.lock();
            if st.carrier == Carrier::Probing {
                st.carrier = Carrier::Polling;
            }
        }
        if let Some(reason) = reason {
            Box::pin(self.close_socket(socket, reason, read_failed)).await;
        }
    }

    /// Writes a drained batch; its time is the write timeout.
    async fn write(
        &self,
        session: &Session,
        socket: &mut Socket,
        batch: Vec<Outgoing>,
        drained: Drained,
    ) -> Step {
        let frames = frames_of(&session.routes, &batch);
        drop(batch);
        let sent =
            tokio::time::timeout(self.timing.write_timeout, socket.send(&frames, &mut 0)).await;
        match (sent, drained) {
            (Ok(Ok(())), Drained::Batch) => Step::Open,
            (Ok(Ok(())), Drained::Close(reason)) => Step::End(Some(reason)),
            (Ok(Err(_)), _) => Step::End(None),
            (Err(_), _) => {
                // Unless its overflow already counted it.
                if !session.is_closed() {
                    tracing::info!(connection = %session.conn.id, "closing a Socket.IO client that stopped reading");
                    metrics::counter!("herald_slow_consumers_total").increment(1);
                }
                Step::End(None)
            }
        }
    }

    /// Handles one WebSocket message from the client, or the end of its stream.
    async fn on_message(
        &self,
        session: &Arc<Session>,
        socket: &mut Socket,
        message: Option<Result<Message, Error>>,
        upgraded: bool,
    ) -> Step {
        let handled = match message {
            Some(Ok(Message::Text(t))) => {
                if !upgraded {
                    match self.on_probe(session, socket, t.as_str()).await {
                        Ok(true) => return Step::Upgraded,
                        Ok(false) => Ok(()),
                        Err(e) => Err(e),
                    }
                } else {
                    self.on_text(session, t.as_str()).await
                }
            }
            Some(Ok(Message::Binary(b))) if upgraded => self.on_binary(session, b).await,
            Some(Ok(Message::Binary(_))) => Err(BadPacket("binary data before the upgrade")),
            Some(Ok(_)) => Ok(()),
            // The protocol's read state is spent: close without reading on.
            Some(Err(e)) => return Step::ReadFailed(close_reason_for(&e)),
            None => return Step::End(None),
        };
        match handled {
            Ok(()) => Step::Open,
            Err(_) => Step::End(Some(CloseReason::PROTOCOL_ERROR)),
        }
    }

    /// Sends the close frame; a client still sending (a flood) would otherwise lose it to a
    /// reset, so the socket lingers unless its reading already failed.
    async fn close_socket(&self, mut socket: Box<Socket>, reason: CloseReason, read_failed: bool) {
        let closed = tokio::time::timeout(
            self.timing.write_timeout,
            socket.close(reason.code, reason.reason),
        )
        .await;
        if matches!(closed, Ok(Ok(()))) && !read_failed {
            linger(&mut socket).await;
        }
    }

    /// Before the upgrade completes: `2probe` is answered `3probe` (and a waiting poll ends
    /// with a noop), `5` completes it. True once upgraded.
    async fn on_probe(
        &self,
        session: &Session,
        socket: &mut Socket,
        packet: &str,
    ) -> Result<bool, BadPacket> {
        match decode_engine(packet)? {
            EnginePacket::Ping("probe") => {
                session.state.lock().carrier = Carrier::Probing;
                session.probed.notify_one();
                let mut reply = Vec::new();
                frame(&mut reply, crate::transport::ws::TEXT, b"3probe");
                socket
                    .send(&reply, &mut 0)
                    .await
                    .map_err(|_| BadPacket("probe reply failed"))?;
                Ok(false)
            }
            EnginePacket::Upgrade if session.state.lock().carrier == Carrier::Probing => {
                session.state.lock().carrier = Carrier::WebSocket;
                Ok(true)
            }
            _ => Err(BadPacket("expected the upgrade probe")),
        }
    }

    /// The session of a polling request, unless it is gone: closed, or its ping unanswered
    /// past the timeout (a request racing the heartbeat's own check).
    pub(super) fn live(&self, sid: &str) -> Option<Arc<Session>> {
        let session = self.get(sid)?;
        let late = session
            .state
            .lock()
            .pong_due
            .is_some_and(|due| due <= Instant::now());
        if late {
            self.close(&session, CloseReason::IDLE);
            return None;
        }
        Some(session)
    }

    /// Whether a WebSocket may take this session over: it must be polling, not upgraded or
    /// being upgraded.
    pub(super) fn may_upgrade(session: &Session) -> bool {
        session.state.lock().carrier == Carrier::Polling && !session.is_closed()
    }
}

/// What a WebSocket session's step leaves it at.
enum Step {
    Open,
    /// The client completed the upgrade: the session's packets go to this socket.
    Upgraded,
    /// The socket is done, closed with this reason if any.
    End(Option<CloseReason>),
    /// Reading failed: closed with this reason if any, without reading on.
    ReadFailed(Option<CloseReason>),
}

/// Clears the session's waiting poll however the GET ends (answered, or the client gone).
struct PollGuard<'a>(&'a Session);

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        self.0.state.lock().polling = false;
    }
}

/// Pings `ping_interval` after the handshake and after each pong; a client that has not
/// answered within `ping_timeout` is gone. One timer for all the sessions of an endpoint, not
/// one each (an idle session's memory): it beats a twentieth of the shorter period apart,
/// between 10 ms and 1 s, and ends with the endpoint. A ping goes out up to a beat late, and
/// the next is due `ping_interval` after its pong: coarser beats would let the pings drift.
async fn heartbeat(sessions: std::sync::Weak<Sessions>) {
    let period = match sessions.upgrade() {
        Some(s) => (s.timing.ping_interval.min(s.timing.ping_timeout) / 20)
            .clamp(Duration::from_millis(10), Duration::from_secs(1)),
        None => return,
    };
    let mut beats = tokio::time::interval(period);
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        beats.tick().await;
        let Some(sessions) = sessions.upgrade() else {
            return;
        };
        sessions.beat(Instant::now());
    }
}

/// The packets of a batch as one long-polling payload; binary messages base64-encoded.
fn payload_of(routes: &Routes, batch: &[Outgoing]) -> String {
    let mut out = String::new();
    for (payload, text) in batch.iter().filter_map(|item| routes.render(item)) {
        if !out.is_empty() {
            out.push(SEPARATOR);
        }
        if text {
            out.push_str(&String::from_utf8_lossy(&payload));
        } else {
            out.push('b');
            BASE64.encode_string(&payload, &mut out);
        }
    }
    out
}

/// The packets of a batch as WebSocket frames, one buffer.
fn frames_of(routes: &Routes, batch: &[Outgoing]) -> Vec<u8> {
    let mut out = Vec::new();
    for (payload, text) in batch.iter().filter_map(|item| routes.render(item)) {
        let opcode = if text {
            crate::transport::ws::TEXT
        } else {
            crate::transport::ws::BINARY
        };
        frame(&mut out, opcode, &payload);
    }
    out
}

fn text(body: &str) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")],
        body.to_owned(),
    )
        .into_response()
}

pub(super) fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"code": 1, "message": message}).to_string(),
    )
        .into_response()
}
