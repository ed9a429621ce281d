//! WebSocket transport. One task per connection multiplexes two things: frames from the
//! client, and the connection's outbox (written in batches with one flush; the hub's
//! heartbeat queues the pings there too, so a connection needs no timer of its own).

mod socket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use axum::extract::{ConnectInfo, MatchedPath, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::future::BoxFuture;
use herald_core::Connection;
use herald_core::Identity;
use herald_core::outbox::Drained;
use herald_core::protocol::{Dialect, ServerMessage};
use herald_core::room::validate_room;
use herald_core::wire::EventFrames;
use herald_core::{CloseReason, Outgoing, Transport};
use serde_json::json;

pub(crate) use self::socket::Error;
use self::socket::PING;
pub(crate) use self::socket::{BINARY, Handshake, Message, Socket, TEXT, frame};
use super::Registration;
use super::session::{Flow, Session};
use crate::app::App;
use crate::http::error::AppError;
use crate::http::identity::optional_identity;

/// Small socket buffers: most messages are a few hundred bytes, and idle connections should
/// cost little memory. Larger messages still work; the buffers grow as needed. tungstenite
/// allocates the read buffer up front and reads at most this much per syscall: 128 saved
/// another ~140 bytes per idle connection, but split common commands over several reads.
pub(crate) const READ_BUFFER: usize = 256;
/// How long a server-initiated close waits for the client's half of the closing handshake.
const LINGER: Duration = Duration::from_secs(1);
/// How long a close frame with nothing owed before it may take to reach the socket.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone, Copy)]
enum Mode {
    Events(Dialect),
    Echo,
    /// The y-websocket protocol: binary frames for one Yjs document.
    Yjs,
}

/// The Yjs document a y-websocket connection opens, and who opens it.
struct YjsOpen {
    name: String,
    identity: Option<Identity>,
}

/// The event and room protocol. The path picks the dialect: `/ws/chat` seed 001's,
/// `/ws/rooms` seed 004's, anything else (`/ws`, `/`) Herald's.
pub async fn events(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    path: MatchedPath,
    upgrade: Handshake,
) -> Result<Response, AppError> {
    let dialect = match path.as_str() {
        "/ws/chat" => Dialect::Chat,
        "/ws/rooms" => Dialect::Rooms,
        _ => Dialect::Herald,
    };
    accept(app, peer, upgrade, Mode::Events(dialect), None)
}

/// The y-websocket protocol for the Yjs document `name` (`/yjs/{name}?token=…`): a document is
/// the room `yjs:{name}`, opened with the room's join rule (anonymous clients: public documents only).
pub async fn yjs(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: Handshake,
) -> Result<Response, AppError> {
    let identity = optional_identity(&app.auth, &headers, params.get("token").map(String::as_str))?;
    let room = format!("{}{name}", crate::app::yjs::ROOM_PREFIX);
    validate_room(&room).map_err(|e| AppError::bad_request(format!("document name: {e}")))?;
    app.check_room_access(identity.as_ref(), &room)?;
    accept(
        app,
        peer,
        upgrade,
        Mode::Yjs,
        Some(YjsOpen { name, identity }),
    )
}

pub async fn echo(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    upgrade: Handshake,
) -> Result<Response, AppError> {
    accept(app, peer, upgrade, Mode::Echo, None)
}

fn accept(
    app: Arc<App>,
    peer: SocketAddr,
    upgrade: Handshake,
    mode: Mode,
    yjs: Option<YjsOpen>,
) -> Result<Response, AppError> {
    let registration = Registration::open(&app, peer.ip(), Transport::WebSocket)?;
    let max = app.config.max_message_bytes;
    let config = tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    Ok(upgrade.accept(config, move |socket| {
        run(app, registration, socket, mode, yjs)
    }))
}

/// An outgoing item's frame: opcode and payload.
fn frame_of(item: &Outgoing, dialect: Dialect) -> (u8, &[u8]) {
    match item {
        Outgoing::Event(e) => (TEXT, e.ws_frame_in(dialect)),
        Outgoing::Message(m) => (TEXT, m.ws_frame()),
        Outgoing::Raw {
            payload,
            text: true,
        } => (TEXT, payload),
        Outgoing::Raw {
            payload,
            text: false,
        } => (BINARY, payload),
        Outgoing::Ping => (PING, &[]),
    }
}

/// The socket is not split: reading and writing take turns in this one task, so the halves'
/// shared lock and buffered item would be pure cost.
async fn run(
    app: Arc<App>,
    registration: Registration,
    mut socket: Box<Socket>,
    mode: Mode,
    yjs: Option<YjsOpen>,
) {
    // Locals kept across the loop's awaits are part of every idle connection's task: the
    // connection is reached through `registration` and the write timeout read when needed.
    let dialect = match mode {
        Mode::Events(d) => d,
        Mode::Echo | Mode::Yjs => Dialect::Herald,
    };
    let mut session = Session::new(app.clone(), registration.conn.clone(), dialect);
    if let Some(open) = yjs {
        // Before reading: the client's first frames need the document loaded.
        if let Err(e) = session.yjs_open(open.name, open.identity).await {
            tracing::warn!(connection = %registration.conn.id, error = %e, "Yjs document not opened");
            send_close(
                &mut socket,
                CloseReason::STORE_UNAVAILABLE,
                &[],
                CLOSE_TIMEOUT,
            )
            .await;
            return;
        }
    }
    if let Mode::Events(dialect) = mode {
        let conn = &registration.conn;
        conn.send(Outgoing::Message(greeting(dialect, conn.id)));
    }
    let overflowed = loop {
        // The select only picks the next step; the step runs boxed after it. Awaiting inside
        // the select's arms would keep their bindings (the frame, the batch) in the task's
        // state for as long as the connection is open.
        let step: BoxFuture<'_, Written> = tokio::select! {
            (batch, drained) = registration.conn.outbox.next_batch() => {
                let close = match drained {
                    Drained::Batch => None,
                    Drained::Close(r) => Some(r),
                };
                Box::pin(write_batch(&mut socket, &registration.conn, batch, close, dialect, write_timeout(&app)))
            }
            frame = socket.recv() => {
                Box::pin(on_frame(&mut socket, &mut session, &registration.conn, frame, mode))
            }
        };
        match step.await {
            Written::Open => {}
            Written::Ended => break None,
            Written::Overflowed { unsent } => break Some(unsent),
        }
    };
    app.streams.unsubscribe_connection(registration.conn.id);
    session.leave_documents();
    drop(registration);
    if let Some(unsent) = overflowed {
        // Off the server's books first: a client that fell behind must not hold its slot
        // while it gets the write timeout to take the rest of the batch and the close frame.
        // Boxed, so its timer is not part of every idle connection's task.
        Box::pin(close_slow_consumer(socket, unsent, write_timeout(&app))).await;
    }
}

async fn close_slow_consumer(mut socket: Box<Socket>, unsent: Vec<u8>, timeout: Duration) {
    if send_close(&mut socket, CloseReason::SLOW_CONSUMER, &unsent, timeout).await {
        linger(&mut socket).await;
    }
}

/// A client that does not accept a batch within this time is a slow consumer.
fn write_timeout(app: &App) -> Duration {
    Duration::from_secs(app.config.write_timeout_secs.max(1))
}

/// Handles one frame from the client, or the end of its stream.
async fn on_frame(
    socket: &mut Socket,
    session: &mut Session,
    conn: &Connection,
    frame: Option<Result<Message, Error>>,
    mode: Mode,
) -> Written {
    let frame = match frame {
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            if let Some(reason) = close_reason_for(&e) {
                send_close(socket, reason, &[], CLOSE_TIMEOUT).await;
            }
            return Written::Ended;
        }
        None => return Written::Ended,
    };
    conn.touch();
    match (frame, mode) {
        (Message::Text(t), Mode::Events(_)) => {
            if session.handle_text(t.as_str()).await == Flow::Flooding {
                conn.outbox.close(CloseReason::RATE_LIMITED);
            }
        }
        (Message::Binary(_), Mode::Events(_)) => session.handle_binary(),
        (Message::Binary(b), Mode::Yjs) => {
            if session.handle_yjs(&b) == Flow::Flooding {
                conn.outbox.close(CloseReason::RATE_LIMITED);
            }
        }
        (Message::Text(_), Mode::Yjs) => {
            conn.outbox.close(CloseReason::PROTOCOL_ERROR);
        }
        (Message::Text(t), Mode::Echo) => {
            conn.send(Outgoing::Raw {
                payload: t.into(),
                text: true,
            });
        }
        (Message::Binary(b), Mode::Echo) => {
            conn.send(Outgoing::Raw {
                payload: b,
                text: false,
            });
        }
        // The library has queued the closing handshake's reply: send it, then read on until
        // the client ends the stream.
        (Message::Close(_), _) => {
            if socket.flush().await.is_err() {
                return Written::Ended;
            }
        }
        (Message::Ping(_) | Message::Pong(_) | Message::Frame(_), _) => {}
    }
    Written::Open
}

enum Written {
    Open,
    Ended,
    /// The outbox overflowed: what is left of the batch goes out before the 4008 close.
    Overflowed {
        unsent: Vec<u8>,
    },
}

/// Writes a drained batch with one flush, then closes the connection if the outbox asked for
/// it (or overflowed while the write was blocked on a client that stopped reading). The batch
/// is taken, so its buffer is freed once written: an idle connection holds none.
async fn write_batch(
    socket: &mut Socket,
    conn: &Connection,
    batch: Vec<Outgoing>,
    mut close: Option<CloseReason>,
    dialect: Dialect,
    write_timeout: Duration,
) -> Written {
    // The whole batch in one buffer, one write (measured: one write per frame cost ~4.5 µs of
    // server CPU per delivered message in fan-out); freed once written.
    let framed = batch.iter().map(|item| frame_of(item, dialect));
    let mut frames = Vec::with_capacity(framed.clone().map(|(_, p)| p.len() + 10).sum());
    for (opcode, payload) in framed {
        frame(&mut frames, opcode, payload);
    }
    drop(batch);
    let mut sent = 0;
    let written = tokio::select! {
        r = tokio::time::timeout(write_timeout, socket.send(&frames, &mut sent)) => r,
        // The queue overflowed while this write was blocked on a client that stopped
        // reading: disconnect it now, not when the write times out.
        () = conn.outbox.overflowed(), if close.is_none() => {
            close = Some(CloseReason::SLOW_CONSUMER);
            Ok(Ok(()))
        }
    };
    match written {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Written::Ended,
        Err(_) => {
            tracing::info!(connection = %conn.id, "closing a client that stopped reading");
            metrics::counter!("herald_slow_consumers_total").increment(1);
            return Written::Ended;
        }
    }
    let Some(reason) = close else {
        return Written::Open;
    };
    if reason == CloseReason::SLOW_CONSUMER {
        tracing::info!(connection = %conn.id, "outbound buffer overflowed; disconnecting");
        metrics::counter!("herald_slow_consumers_total").increment(1);
        // What an overflow interrupted goes first, so the close frame follows whole frames.
        frames.drain(..sent);
        return Written::Overflowed { unsent: frames };
    }
    if send_close(socket, reason, &frames[sent..], CLOSE_TIMEOUT).await {
        linger(socket).await;
    }
    Written::Ended
}

/// The first message: Herald's `connection.established`, seed 001's `welcome`, or seed 004's
/// `connected`.
fn greeting(dialect: Dialect, id: uuid::Uuid) -> Arc<ServerMessage> {
    match dialect {
        Dialect::Herald => {
            ServerMessage::new("connection.established", Some(json!({"connectionId": id})))
        }
        Dialect::Chat => ServerMessage::flat("welcome", json!({"clientId": id}), None),
        Dialect::Rooms => ServerMessage::flat("connected", json!({"clientId": id}), None),
    }
}

/// Protocol violations the library reports as errors get the matching close code.
pub fn close_reason_for(e: &Error) -> Option<CloseReason> {
    match e {
        Error::Capacity(_) => Some(CloseReason::TOO_BIG),
        Error::Utf8(_) => Some(CloseReason::INVALID_UTF8),
        Error::Protocol(_) => Some(CloseReason::PROTOCOL_ERROR),
        // The connection itself failed: nothing more can be sent.
        _ => None,
    }
}

/// Sends the rest of an interrupted batch, then a close frame; true when both were flushed
/// to the socket in time.
async fn send_close(
    socket: &mut Socket,
    reason: CloseReason,
    unsent: &[u8],
    timeout: Duration,
) -> bool {
    let close = async {
        socket.send(unsent, &mut 0).await?;
        socket.close(reason.code, reason.reason).await
    };
    matches!(tokio::time::timeout(timeout, close).await, Ok(Ok(())))
}

/// After the server's close frame, reads (and drops) what the client still sends until its
/// closing reply or the end of the stream. Closing a socket with unread input makes the kernel
/// reset the connection and discard output not yet transmitted, so the client could lose the
/// close frame and the replies just before it (seen with a flooding client and 4029).
pub async fn linger(socket: &mut Socket) {
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(frame)) = socket.recv().await {
            if let Message::Close(_) = frame {
                break;
            }
        }
    })
    .await;
}
