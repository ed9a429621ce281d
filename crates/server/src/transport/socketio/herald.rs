//! Herald over Socket.IO: seed 004's `/chat` namespace and Herald's event protocol in the main
//! namespace `/`, both mapped onto the command session every WebSocket client has
//! (`transport::session`): the same room, chat, publish and subscription operations, the same
//! access decision and limits. This module only translates: Socket.IO events in, the hub's
//! events and messages out as Socket.IO packets.
//!
//! Routing out of the one hub connection: chat messages and room notices go to `/chat` when
//! it is connected; other events and messages to `/` when it is connected, else to `/chat`
//! (seed 004's `sendToUser`: an event published to `user:{id}` is emitted under its type).
//! A reply to an acknowledged event is the acknowledgement, in the namespace that asked.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use herald_core::Connection;
use herald_core::access::PERSONAL_PREFIX;
use herald_core::event::{CHAT_MESSAGE, CHAT_PRIVATE, EncodedEvent, Event};
use herald_core::protocol::{Command, Dialect, Envelope, JoinArgs, ServerMessage, code};
use herald_core::room::Member;
use herald_core::wire::history_entry;
use herald_core::{CloseReason, HistoryQuery, Order, Outgoing};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::engine::Session;
use super::packet::{BadPacket, Kind, decode, encode};
use crate::app::App;
use crate::transport::session::{Flow, Session as Commands};

pub(super) const CHAT: &str = "/chat";
pub(super) const MAIN: &str = "/";

/// Which namespaces are connected, read by the writer to route what the hub queues.
#[derive(Default)]
pub struct Routes {
    chat: AtomicBool,
    main: AtomicBool,
}

/// The Herald namespaces of one Engine.IO session.
pub struct Namespaces {
    app: Arc<App>,
    commands: Commands,
    /// The name the handshake's `auth.name` asked to be shown with in rooms.
    profile: Option<Value>,
    /// `/chat`'s private session id, under which its state is saved for recovery.
    pid: Option<String>,
    pub connected_once: bool,
}

/// What a `/chat` pid stands for, saved in the event store at every join and leave so that
/// any node, this one restarted included, can resume the socket.
#[derive(Serialize, Deserialize)]
struct Saved {
    user: Option<String>,
    rooms: Vec<String>,
    profile: Option<Value>,
}

/// A resumed `/chat` socket: the events it missed (ascending), and the position up to which
/// they were read while its live events were held.
struct Recovered {
    pid: String,
    events: Vec<Event>,
    head: u64,
    /// Live events are held (the socket rejoined rooms) until `end_replay`.
    holding: bool,
}

/// Missed events one recovery replays at most, per room; beyond, the socket starts afresh.
const MAX_RECOVERED: usize = 1000;

impl Namespaces {
    pub fn new(app: Arc<App>, conn: Arc<Connection>) -> Self {
        Self {
            commands: Commands::new(app.clone(), conn, Dialect::Rooms),
            app,
            profile: None,
            pid: None,
            connected_once: false,
        }
    }

    pub async fn on_packet(&mut self, session: &Session, text: &str) -> Result<(), BadPacket> {
        let p = decode(text)?;
        if p.attachments > 0 {
            return Err(BadPacket("binary attachments are not supported; send JSON"));
        }
        let namespace = match p.namespace {
            CHAT => CHAT,
            MAIN => MAIN,
            other => {
                if p.kind == Kind::Connect {
                    let error = json!({"message": "Invalid namespace"}).to_string();
                    session.send_text(encode(Kind::ConnectError, other, None, 0, Some(&error)));
                }
                return Ok(());
            }
        };
        let data = p.data.unwrap_or(Value::Null);
        match p.kind {
            Kind::Connect => self.connect(session, namespace, &data).await,
            Kind::Disconnect => session.routes.set(namespace, false),
            Kind::Event if session.routes.has(namespace) => {
                let Value::Array(mut args) = data else {
                    return Err(BadPacket("event payload must be an array"));
                };
                let name = match args.remove(0) {
                    Value::String(s) => s,
                    _ => return Err(BadPacket("event name must be a string")),
                };
                let id = p.id.map(|ack| json!({"nsp": namespace, "ack": ack}));
                let arg = args.into_iter().next().unwrap_or(Value::Null);
                let command = match namespace {
                    CHAT => chat_command(&name, arg, self.profile.clone()),
                    _ => main_command(&name, arg),
                };
                match command {
                    Ok(command) => {
                        let moved = matches!(command, Command::Join(_) | Command::Leave { .. });
                        if self.commands.handle(Envelope { id, command }).await == Flow::Flooding {
                            session.conn.outbox.close(CloseReason::RATE_LIMITED);
                        }
                        if moved && namespace == CHAT {
                            self.save(session).await;
                        }
                    }
                    Err(message) => {
                        let error = ServerMessage::error(message, code::INVALID_MESSAGE, id);
                        session.conn.send(Outgoing::Message(error));
                    }
                }
            }
            Kind::Event | Kind::Ack => {}
            Kind::ConnectError | Kind::BinaryEvent | Kind::BinaryAck => {
                return Err(BadPacket("unexpected packet type"));
            }
        }
        Ok(())
    }

    /// CONNECT: `auth.token` (a JWT or API key) authenticates the hub connection; `/chat`
    /// requires one. A bad token is `connect_error` "Authentication failed". On `/chat`, a
    /// `pid` and `offset` (socket.io-client's connection-state recovery) resume the socket:
    /// its rooms rejoined, the events it missed sent, the same pid in the reply.
    async fn connect(&mut self, session: &Session, namespace: &str, auth: &Value) {
        let refuse = |message: &str| {
            let error = json!({ "message": message }).to_string();
            session.send_text(encode(Kind::ConnectError, namespace, None, 0, Some(&error)));
        };
        let app = self.app.clone();
        match auth.get("token").and_then(Value::as_str) {
            Some(token) => {
                let Ok(identity) = app.auth.verify(token) else {
                    return refuse("Authentication failed");
                };
                if app.hub.authenticate(&session.conn, identity).is_err() {
                    return refuse("Authentication failed");
                }
            }
            None if namespace == CHAT || auth.get("token").is_some() => {
                return refuse("Authentication failed");
            }
            None => {}
        }
        if let Some(name) = auth.get("name") {
            match crate::app::chat::profile(Some(json!({ "name": name }))) {
                Ok(profile) => self.profile = profile,
                Err(e) => return refuse(&e.message),
            }
        }
        let sid = uuid::Uuid::new_v4().simple().to_string();
        if namespace != CHAT {
            let reply = json!({ "sid": sid }).to_string();
            session.send_text(encode(Kind::Connect, namespace, None, 0, Some(&reply)));
            session.routes.set(namespace, true);
            self.connected_once = true;
            return;
        }
        let asked = auth.get("pid").and_then(Value::as_str);
        let offset = auth
            .get("offset")
            .and_then(Value::as_str)
            .and_then(|o| o.parse::<u64>().ok());
        let recovered = match (asked, offset) {
            (Some(pid), Some(offset)) => self.recover(session, pid, offset).await,
            _ => None,
        };
        let pid = match &recovered {
            Some(r) => r.pid.clone(),
            None => uuid::Uuid::new_v4().simple().to_string(),
        };
        let reply = json!({ "sid": sid, "pid": pid }).to_string();
        session.send_text(encode(Kind::Connect, CHAT, None, 0, Some(&reply)));
        session.routes.set(CHAT, true);
        self.connected_once = true;
        self.pid = Some(pid);
        match recovered {
            Some(r) => {
                let recovered = if r.events.is_empty() {
                    "empty"
                } else {
                    "replayed"
                };
                metrics::counter!("herald_resumes_total", "transport" => "socketio", "recovered" => recovered).increment(1);
                for e in r.events {
                    session.conn.send(Outgoing::Event(EncodedEvent::new(e)));
                }
                if r.holding {
                    app.hub.end_replay(&session.conn, r.head);
                }
            }
            None => self.save(session).await,
        }
    }

    /// Resumes the socket `pid` stood for, if it was this user's, is still saved, and the
    /// events after `offset` are all still stored.
    async fn recover(&mut self, session: &Session, pid: &str, offset: u64) -> Option<Recovered> {
        let app = self.app.clone();
        let conn = &session.conn;
        let saved = app.store.load_session(pid).await.ok()??;
        let saved: Saved = serde_json::from_str(&saved).ok()?;
        if saved.user != conn.user_id() || offset > app.store.last_seq().await.ok()? {
            return None;
        }
        let oldest = app.store.oldest_seq().await.ok()?;
        if oldest.unwrap_or(app.hub.head() + 1) > offset + 1 {
            return None;
        }
        self.profile = saved.profile.clone();
        // Rejoined as the rooms' access decides now; the first join holds live events until
        // the missed ones are queued.
        let identity = conn.identity();
        let mut head = None;
        for room in &saved.rooms {
            if app.check_room_access(identity.as_ref(), room).is_err() {
                continue;
            }
            let member = Member::of(conn, saved.profile.clone());
            if let Ok((_, h)) = app.hub.join_room(conn, room, member, head.is_none()) {
                head = Some(h);
            }
        }
        let holding = head.is_some();
        let head = head.unwrap_or_else(|| app.hub.head());
        let personal = conn.user_id().map(|u| format!("{PERSONAL_PREFIX}{u}"));
        let scope = app.access().read_scope(identity.as_ref());
        let mut events = Vec::new();
        for room in app.hub.rooms_of(conn.id).iter().chain(personal.iter()) {
            let page = app
                .store
                .query(HistoryQuery {
                    room_id: Some(room.clone()),
                    after_seq: Some(offset),
                    until_seq: Some(head),
                    order: Order::OldestFirst,
                    limit: MAX_RECOVERED,
                    access: scope.clone(),
                    ..Default::default()
                })
                .await;
            match page {
                Ok(page) if page.len() < MAX_RECOVERED => events.extend(page),
                _ => {
                    if holding {
                        app.hub.end_replay(conn, head);
                    }
                    return None;
                }
            }
        }
        events.sort_by_key(|e| e.seq);
        events.dedup_by_key(|e| e.seq);
        Some(Recovered {
            pid: pid.to_owned(),
            events,
            head,
            holding,
        })
    }

    /// Saves what the pid stands for: the user, the rooms joined, the profile shown there.
    async fn save(&self, session: &Session) {
        let Some(pid) = &self.pid else {
            return;
        };
        let saved = Saved {
            user: session.conn.user_id(),
            rooms: self.app.hub.rooms_of(session.conn.id),
            profile: self.profile.clone(),
        };
        let state = serde_json::to_string(&saved).expect("serialises");
        let hours = self.app.config.retention_hours.max(1) as i64;
        let expires = Utc::now() + chrono::Duration::hours(hours);
        if let Err(e) = self.app.store.save_session(pid, &state, expires).await {
            tracing::warn!(error = %e, "could not save a Socket.IO session for recovery");
        }
    }
}

impl Routes {
    fn set(&self, namespace: &str, on: bool) {
        match namespace {
            CHAT => self.chat.store(on, Ordering::Release),
            _ => self.main.store(on, Ordering::Release),
        }
    }

    fn has(&self, namespace: &str) -> bool {
        match namespace {
            CHAT => self.chat.load(Ordering::Acquire),
            _ => self.main.load(Ordering::Acquire),
        }
    }

    /// The namespace of an item that is not a reply: chat to `/chat` if connected, the rest
    /// to `/` if connected, else `/chat`.
    fn route(&self, chat: bool) -> Option<&'static str> {
        let (c, m) = (self.has(CHAT), self.has(MAIN));
        match (chat, c, m) {
            (true, true, _) | (false, true, false) => Some(CHAT),
            (_, _, true) => Some(MAIN),
            _ => None,
        }
    }

    /// An item of the hub as the Engine.IO packet that carries it: `(payload, text)`.
    pub fn render(&self, item: &Outgoing) -> Option<(Bytes, bool)> {
        match item {
            Outgoing::Raw { payload, text } => Some((payload.clone(), *text)),
            Outgoing::Event(e) => self.render_event(e).map(|b| (b, true)),
            Outgoing::Message(m) => self.render_message(m).map(|s| (Bytes::from(s), true)),
            // Engine.IO has its own heartbeat.
            Outgoing::Ping => None,
        }
    }

    /// Encoded once per event and namespace, shared by every Socket.IO recipient.
    fn render_event(&self, e: &EncodedEvent) -> Option<Bytes> {
        let chat = matches!(e.event.kind.as_str(), CHAT_MESSAGE | CHAT_PRIVATE);
        let frame = match self.route(chat)? {
            CHAT => e.edge_frame(0, |ev| Bytes::from(emit(CHAT, &chat_event(ev)))),
            _ => e.edge_frame(1, |_| {
                let mut out = Vec::with_capacity(e.json().len() + 12);
                out.extend_from_slice(br#"42["event","#);
                out.extend_from_slice(e.json());
                out.extend_from_slice(b"]");
                Bytes::from(out)
            }),
        };
        Some(frame.clone())
    }

    fn render_message(&self, m: &ServerMessage) -> Option<String> {
        let fields = m.fields.clone().unwrap_or_default();
        let ack = m.reply_to.as_ref().and_then(|r| {
            let nsp = r.get("nsp")?.as_str()?;
            Some((
                if nsp == CHAT { CHAT } else { MAIN },
                r.get("ack")?.as_u64()?,
            ))
        });
        if let Some((MAIN, ack)) = ack {
            let body = m.data.clone().unwrap_or(Value::Object(fields));
            let data = Value::Array(vec![body]).to_string();
            return Some(encode(Kind::Ack, MAIN, Some(ack), 0, Some(&data)));
        }
        let room_notice = matches!(
            m.kind.as_ref(),
            "room_joined" | "room_left" | "room_history" | "user_joined" | "user_left" | "typing"
        );
        let namespace = match ack {
            Some((nsp, _)) => nsp,
            None => self.route(room_notice)?,
        };
        if namespace == MAIN {
            let body = m.data.clone().unwrap_or(Value::Object(fields));
            return Some(emit(MAIN, &json!([m.kind.as_ref(), body])));
        }
        let (name, body) = chat_message(m, fields);
        // `/chat`'s errors are seed 004's `error` event, acknowledged or not.
        if let Some((_, ack)) = ack.filter(|_| name != "error") {
            let data = Value::Array(vec![body]).to_string();
            return Some(encode(Kind::Ack, CHAT, Some(ack), 0, Some(&data)));
        }
        Some(emit(CHAT, &json!([name, body])))
    }
}

fn emit(namespace: &str, args: &Value) -> String {
    encode(Kind::Event, namespace, None, 0, Some(&args.to_string()))
}

/// A hub message as seed 004's Socket.IO server would emit it in `/chat`.
fn chat_message(m: &ServerMessage, fields: Map<String, Value>) -> (&str, Value) {
    let member = || {
        json!({
            "userId": fields.get("userId").cloned().unwrap_or(Value::Null),
            "userName": name_of(fields.get("user"), fields.get("userId")),
            "roomId": fields.get("room").cloned().unwrap_or(Value::Null),
        })
    };
    match m.kind.as_ref() {
        "user_joined" | "user_left" => (m.kind.as_ref(), member()),
        "typing" if fields.get("isTyping") == Some(&Value::Bool(true)) => ("user_typing", member()),
        "typing" => ("user_stopped_typing", member()),
        "room_history" => {
            let messages: Vec<Value> = fields
                .get("messages")
                .and_then(Value::as_array)
                .map(|list| list.iter().map(message_of).collect())
                .unwrap_or_default();
            let room = fields.get("roomId").cloned().unwrap_or(Value::Null);
            (
                "room_history",
                json!({"roomId": room, "messages": messages}),
            )
        }
        "error" => {
            let data = m.data.clone().unwrap_or(Value::Null);
            let code = data.get("code").and_then(Value::as_str).unwrap_or("");
            let message = match code {
                code::ACCESS_DENIED | code::FORBIDDEN => "Access denied".into(),
                _ => data.get("error").cloned().unwrap_or(Value::Null),
            };
            ("error", json!({"message": message, "code": code}))
        }
        kind => (kind, m.data.clone().unwrap_or(Value::Object(fields))),
    }
}

/// A chat event as `/chat` emits it: `message` (or `private_message`) with seed 004's
/// message; any other event under its own type, with its data. The last argument is the
/// recovery offset, `seq` as a string, as Socket.IO's own recovery appends it.
fn chat_event(e: &Event) -> Value {
    let offset = e.seq.to_string();
    match e.kind.as_str() {
        CHAT_MESSAGE => json!([
            "message",
            message_of(&history_entry(e, Dialect::Rooms)),
            offset
        ]),
        CHAT_PRIVATE => json!([
            "private_message",
            message_of(&history_entry(e, Dialect::Rooms)),
            offset
        ]),
        kind => json!([kind, e.data, offset]),
    }
}

/// Seed 004's message `{id, roomId, userId, userName, content, timestamp}` (and `seq`) from a
/// chat message in the rooms dialect.
fn message_of(flat: &Value) -> Value {
    let timestamp = flat
        .get("timestamp")
        .and_then(Value::as_i64)
        .and_then(DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true));
    json!({
        "id": flat.get("id"),
        "seq": flat.get("seq"),
        "roomId": flat.get("roomId"),
        "userId": flat.get("userId"),
        "userName": name_of(flat.get("from"), flat.get("userId")),
        "content": flat.get("content"),
        "timestamp": timestamp,
    })
}

/// A member's shown name: the profile's name, else the user id.
fn name_of(profile: Option<&Value>, user_id: Option<&Value>) -> Value {
    match profile {
        Some(Value::String(s)) => s.as_str().into(),
        Some(Value::Object(m)) if m.contains_key("name") => m["name"].clone(),
        _ => user_id.cloned().unwrap_or(Value::Null),
    }
}

/// The room argument of a `/chat` event: a room id, or an object with `roomId`.
fn room_arg(arg: &Value) -> Result<String, String> {
    match arg {
        Value::String(s) => Ok(s.clone()),
        Value::Object(m) => m
            .get("roomId")
            .or_else(|| m.get("room"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| "roomId is required".into()),
        _ => Err("roomId is required".into()),
    }
}

/// Seed 004's `/chat` events as commands of the session.
fn chat_command(name: &str, arg: Value, profile: Option<Value>) -> Result<Command, String> {
    Ok(match name {
        "join_room" => Command::Join(JoinArgs {
            room: room_arg(&arg)?,
            user: profile,
        }),
        "leave_room" => Command::Leave {
            room: Some(room_arg(&arg)?),
        },
        "message" => Command::Chat {
            room: Some(room_arg(&arg)?),
            text: text_arg(&arg)?,
            to_others: false,
        },
        "typing_start" | "typing_stop" => Command::Typing {
            room: Some(room_arg(&arg)?),
            typing: name == "typing_start",
        },
        "private_message" => Command::PrivateMessage {
            target: arg
                .get("to")
                .or_else(|| arg.get("userId"))
                .and_then(Value::as_str)
                .ok_or("to is required")?
                .to_owned(),
            text: text_arg(&arg)?,
        },
        other => return Err(format!("unknown event {other:?} in /chat")),
    })
}

fn text_arg(arg: &Value) -> Result<String, String> {
    arg.get("content")
        .or_else(|| arg.get("text"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| "content must be a string".into())
}

/// Herald's commands in the main namespace: the event name is the command's `type`, its
/// argument the command's `data` (`subscribe`, `unsubscribe`, `publish`, `join`, ...).
fn main_command(name: &str, arg: Value) -> Result<Command, String> {
    let text = json!({"type": name, "data": arg}).to_string();
    Envelope::parse(&text)
        .map(|env| env.command)
        .map_err(|e| e.message)
}
