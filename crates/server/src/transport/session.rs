//! One client's command session: parses what it sends and answers through its outbox, so
//! replies and events leave in one ordered stream.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use herald_core::event::{CHAT_MESSAGE, CHAT_PRIVATE};
use herald_core::hub::{Connection, HubError};
use herald_core::protocol::{
    Command, Dialect, Envelope, JoinArgs, PublishArgs, ServerMessage, SubscribeArgs, code,
};
use herald_core::resume::{Recovery, Replay};
use herald_core::room::{self, Member, validate_room};
use herald_core::{CloseReason, HistoryQuery, Outgoing, SubscriptionSpec};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::{App, Publisher};
use crate::chat;
use crate::error::AppError;

pub struct Session {
    app: Arc<App>,
    conn: Arc<Connection>,
    dialect: Dialect,
    /// Publishes refused in a row; a client that keeps flooding is disconnected.
    refused: u32,
    /// Created by the first command that needs it: most connections never send one, and the
    /// session lives in the connection's task for as long as it is open.
    limits: Option<Box<Limits>>,
}

struct Limits {
    publish: DefaultDirectRateLimiter,
    typing: DefaultDirectRateLimiter,
    /// Resumes and room joins (which queue history first) on one connection replay one at a
    /// time.
    resuming: Arc<tokio::sync::Mutex<()>>,
}

/// Typing notices per second per connection (burst the same): enough for a UI that sends one
/// per keystroke burst, not enough to flood a room.
const TYPING_RATE: u32 = 5;
/// Messages in `room_history`, sent on join.
pub const ROOM_HISTORY: usize = 50;

/// Refusals in a row after which a flooding client is disconnected (close 4029).
const MAX_REFUSED: u32 = 100;

/// What the transport should do after a command.
#[derive(Debug, PartialEq)]
pub enum Flow {
    Continue,
    Flooding,
}

impl Session {
    pub fn new(app: Arc<App>, conn: Arc<Connection>, dialect: Dialect) -> Self {
        Self {
            app,
            conn,
            dialect,
            refused: 0,
            limits: None,
        }
    }

    fn limits(&mut self) -> &mut Limits {
        let config = &self.app.config;
        self.limits.get_or_insert_with(|| {
            let rate = NonZeroU32::new(config.publish_rate_per_connection.max(1)).expect("nonzero");
            let typing = NonZeroU32::new(TYPING_RATE).expect("nonzero");
            Box::new(Limits {
                publish: RateLimiter::direct(
                    Quota::per_second(rate)
                        .allow_burst(rate.saturating_mul(NonZeroU32::new(2).expect("2"))),
                ),
                typing: RateLimiter::direct(Quota::per_second(typing)),
                resuming: Arc::default(),
            })
        })
    }

    fn reply(&self, msg: Arc<ServerMessage>) {
        self.conn.send(Outgoing::Message(msg));
    }

    fn fail(&self, e: &AppError, id: Option<Value>) {
        metrics::counter!("herald_errors_total", "code" => e.code).increment(1);
        self.reply(e.to_ws(id));
    }

    pub fn handle_binary(&self) {
        self.fail(
            &AppError::new(
                axum::http::StatusCode::BAD_REQUEST,
                code::INVALID_MESSAGE,
                "binary frames are not supported; send JSON text",
            ),
            None,
        );
    }

    pub async fn handle_text(&mut self, text: &str) -> Flow {
        // The sweep closes expired sessions every few seconds; nothing is done for one
        // meanwhile.
        if self.conn.expired(chrono::Utc::now().timestamp()) {
            self.conn.outbox.close(CloseReason::TOKEN_EXPIRED);
            return Flow::Continue;
        }
        let env = match Envelope::parse(text) {
            Ok(env) => env,
            Err(e) => {
                metrics::counter!("herald_errors_total", "code" => e.code).increment(1);
                self.reply(ServerMessage::error(e.message, e.code, e.id));
                return Flow::Continue;
            }
        };
        let id = env.id;
        match env.command {
            Command::Ping => self.reply(ServerMessage::reply("pong", None, id)),
            Command::Authenticate { token } => match self.app.auth.verify(&token) {
                Ok(identity) => {
                    let user = identity.user_id.clone();
                    match self.app.hub.authenticate(&self.conn, identity) {
                        Ok(()) => self.reply(ServerMessage::reply(
                            "authenticated",
                            Some(json!({"userId": user})),
                            id,
                        )),
                        Err(e) => self.fail(&hub_error(e), id),
                    }
                }
                Err(e) => self.fail(
                    &AppError::new(
                        axum::http::StatusCode::UNAUTHORIZED,
                        code::AUTH_FAILED,
                        format!("authentication failed: {}", e),
                    ),
                    id,
                ),
            },
            Command::Subscribe(args) => match (args.since, parse_spec(&args)) {
                (_, Err(e)) => self.fail(&e, id),
                (Some(since), Ok(spec)) => self.resume(spec, since, id),
                (None, Ok(spec)) => match self.app.hub.subscribe(&self.conn, spec.clone()) {
                    Ok(sid) => self.reply(ServerMessage::reply(
                        "subscription.created",
                        Some(created_body(sid, &spec)),
                        id,
                    )),
                    Err(e) => self.fail(&hub_error(e), id),
                },
            },
            Command::Unsubscribe { subscription_id } => {
                let removed = Uuid::parse_str(&subscription_id)
                    .ok()
                    .and_then(|sid| self.app.hub.unsubscribe(&self.conn, sid).ok());
                match removed {
                    Some(()) => self.reply(ServerMessage::reply(
                        "subscription.removed",
                        Some(json!({"subscriptionId": subscription_id})),
                        id,
                    )),
                    None => self.fail(
                        &AppError::not_found(format!(
                            "no subscription {subscription_id} on this connection"
                        )),
                        id,
                    ),
                }
            }
            Command::Publish(args) => {
                let Some(identity) = self.conn.identity() else {
                    self.fail(
                        &AppError::unauthorized("authentication required to publish events"),
                        id,
                    );
                    return Flow::Continue;
                };
                if let Some(flow) = self.over_publish_rate(&id) {
                    return flow;
                }
                // The acknowledgement waits for the commit; the session keeps reading meanwhile.
                let app = self.app.clone();
                let conn = self.conn.clone();
                tokio::spawn(async move {
                    let reply = match app.publish(&identity, args).await {
                        Ok(e) => published(&e.event, id),
                        Err(e) => e.to_ws(id),
                    };
                    conn.send(Outgoing::Message(reply));
                });
            }
            Command::Join(args) => self.join(args, id),
            Command::Leave { room } => self.leave(room, id),
            Command::Chat {
                room,
                text,
                to_others,
            } => {
                if let Some(flow) = self.over_publish_rate(&id) {
                    return flow;
                }
                self.chat(room, &text, to_others, id);
            }
            Command::Typing { room, typing } => self.typing(room, typing, id),
            Command::StreamSubscribe { stream, last_id } => {
                self.stream_subscribe(&stream, last_id.as_deref(), id);
            }
            Command::StreamUnsubscribe { stream } => {
                let removed = self
                    .app
                    .streams
                    .get(&stream)
                    .is_some_and(|s| s.unsubscribe(self.conn.id));
                if removed {
                    self.reply(ServerMessage::reply(
                        "stream.unsubscribed",
                        Some(json!({"stream": stream})),
                        id,
                    ));
                } else {
                    self.fail(
                        &AppError::not_found(format!("not subscribed to stream {stream}")),
                        id,
                    );
                }
            }
            Command::PrivateMessage { target, text } => {
                if let Some(flow) = self.over_publish_rate(&id) {
                    return flow;
                }
                self.private_message(target, &text, id);
            }
        }
        Flow::Continue
    }

    /// Queues the stream's snapshot, then `stream.subscribed` (so the snapshot comes first and
    /// nothing published meanwhile is missed).
    fn stream_subscribe(&self, name: &str, last_id: Option<&str>, id: Option<Value>) {
        let Some(stream) = self.app.streams.get(name) else {
            return self.fail(&AppError::not_found(format!("no stream {name}")), id);
        };
        match stream.subscribe(&self.conn, last_id) {
            Ok(snapshot) => self.reply(ServerMessage::reply(
                "stream.subscribed",
                Some(json!({"stream": name, "snapshot": snapshot})),
                id,
            )),
            Err(e) => self.fail(&crate::api::streams::stream_error(e), id),
        }
    }

    /// Counts a publish against the connection's rate; when over it, answers the refusal and
    /// says whether the client is flooding.
    fn over_publish_rate(&mut self, id: &Option<Value>) -> Option<Flow> {
        if self.limits().publish.check().is_ok() {
            self.refused = 0;
            return None;
        }
        self.refused += 1;
        self.fail(
            &AppError::rate_limited("publish rate limit exceeded; slow down"),
            id.clone(),
        );
        Some(if self.refused >= MAX_REFUSED {
            Flow::Flooding
        } else {
            Flow::Continue
        })
    }
}

/// Rooms and chat (seeds 001 and 004).
impl Session {
    /// The room a command names, or seed 001's "current room": the one joined last that the
    /// connection is still in.
    fn room_or_current(&self, room: Option<String>) -> Result<String, AppError> {
        match room {
            Some(r) => {
                validate_room(&r).map_err(AppError::bad_request)?;
                Ok(r)
            }
            None => self
                .app
                .hub
                .rooms_of(self.conn.id)
                .pop()
                .ok_or_else(not_in_room),
        }
    }

    fn check_room_access(&self, room: &str) -> Result<(), AppError> {
        self.app
            .check_room_access(self.conn.identity().as_ref(), room)
    }

    /// Joins now (so the next command already sees the room), then queues `room_joined` and
    /// `room_history` before any live event of the room.
    fn join(&mut self, args: JoinArgs, id: Option<Value>) {
        let member = validate_room(&args.room)
            .map_err(AppError::bad_request)
            .and_then(|()| self.check_room_access(&args.room))
            .and_then(|()| chat::profile(args.user))
            .map(|profile| Member::of(&self.conn, profile));
        let member = match member {
            Ok(m) => m,
            Err(e) => return self.fail(&e, id),
        };
        let (app, conn, resuming, dialect) = (
            self.app.clone(),
            self.conn.clone(),
            self.limits().resuming.clone(),
            self.dialect,
        );
        let room = args.room;
        // A resume in progress holds live events itself; wait for it before holding again.
        let joined = match resuming.clone().try_lock_owned() {
            Ok(guard) => app
                .hub
                .join_room(&conn, &room, member, true)
                .map(|j| (j, Some(guard))),
            Err(_) => app
                .hub
                .join_room(&conn, &room, member, false)
                .map(|j| (j, None)),
        };
        let ((joined, head), guard) = match joined {
            Ok(j) => j,
            Err(e) => return self.fail(&hub_error(e), id),
        };
        let holding = guard.is_some();
        tokio::spawn(async move {
            let _one_at_a_time = match guard {
                Some(g) => g,
                None => resuming.lock_owned().await,
            };
            conn.send(Outgoing::Message(ServerMessage::flat(
                "room_joined",
                json!({"room": room, "users": joined.users}),
                id,
            )));
            let history = app
                .store
                .query(HistoryQuery {
                    types: vec![CHAT_MESSAGE.to_owned()],
                    room_id: Some(room.clone()),
                    until_seq: Some(head),
                    limit: ROOM_HISTORY,
                    access: app.access().read_scope(conn.identity().as_ref()),
                    ..Default::default()
                })
                .await;
            match history {
                Ok(mut events) => {
                    events.reverse();
                    let messages: Vec<Value> = events
                        .into_iter()
                        .map(|e| e.history_entry(dialect))
                        .collect();
                    conn.send(Outgoing::Message(ServerMessage::flat(
                        "room_history",
                        json!({"room": room, "roomId": room, "messages": messages}),
                        None,
                    )));
                }
                Err(e) => {
                    conn.send(Outgoing::Message(AppError::from(e).to_ws(None)));
                }
            }
            if holding {
                app.hub.end_replay(&conn, head);
            }
        });
    }

    /// Leaves one room, or every room when none is named (seed 001's `leave`).
    fn leave(&self, room: Option<String>, id: Option<Value>) {
        let rooms = match room {
            Some(r) => vec![r],
            None => self.app.hub.rooms_of(self.conn.id),
        };
        let left: Vec<String> = rooms
            .into_iter()
            .filter_map(|r| self.app.hub.leave_room(self.conn.id, &r).map(|l| l.room))
            .collect();
        if left.is_empty() {
            return self.fail(&not_in_room(), id);
        }
        for room in left {
            self.reply(ServerMessage::flat(
                "room_left",
                json!({"room": room}),
                id.clone(),
            ));
        }
    }

    /// A chat message, stored as a `chat.message` event of the room. Members get it; so does
    /// the sender, except for seed 004's `message` (`to_others`). Sending needs access to the
    /// room, not membership (seed 004's publishers need not join); a member is shown with the
    /// profile it joined with.
    fn chat(&self, room: Option<String>, text: &str, to_others: bool, id: Option<Value>) {
        let room = match self.room_or_current(room) {
            Ok(r) => r,
            Err(e) => return self.fail(&e, id),
        };
        let profile = self
            .app
            .hub
            .member_in(self.conn.id, &room)
            .map(|m| m.profile);
        let message = chat_args(CHAT_MESSAGE, text, room);
        self.commit(message, profile, to_others.then_some(self.conn.id), id);
    }

    /// A direct message to every connection of `target`, through its personal room.
    fn private_message(&self, target: String, text: &str, id: Option<Value>) {
        if self.conn.identity().is_none() {
            return self.fail(
                &AppError::unauthorized("authenticate to send private messages"),
                id,
            );
        }
        if let Err(e) = crate::app::check_id("target", Some(&target)) {
            return self.fail(&e, id);
        }
        let room = format!("{}{target}", room::PERSONAL_PREFIX);
        self.commit(chat_args(CHAT_PRIVATE, text, room), None, None, id);
    }

    /// Publishes a chat event as this connection; the sender hears back only about failures,
    /// or with `event.published` when its command carried an `id`.
    fn commit(
        &self,
        args: PublishArgs,
        profile: Option<Value>,
        skip: Option<Uuid>,
        id: Option<Value>,
    ) {
        let (app, conn) = (self.app.clone(), self.conn.clone());
        tokio::spawn(async move {
            let identity = conn.identity();
            let from = Publisher {
                identity: identity.as_ref(),
                profile: profile.as_ref(),
                skip,
            };
            let reply = match app.publish_as(from, args).await {
                Ok(e) => id.is_some().then(|| published(&e.event, id)),
                Err(e) => Some(e.to_ws(id)),
            };
            if let Some(reply) = reply {
                conn.send(Outgoing::Message(reply));
            }
        });
    }

    /// Typing indicators are volatile: relayed to the room's other connections, never stored.
    fn typing(&mut self, room: Option<String>, typing: bool, id: Option<Value>) {
        let result = self.room_or_current(room).and_then(|room| {
            if self.limits().typing.check().is_err() {
                return Err(AppError::rate_limited(
                    "typing notices are limited; slow down",
                ));
            }
            self.app
                .hub
                .set_typing(self.conn.id, &room, typing)
                .map_err(hub_error)
        });
        if let Err(e) = result {
            self.fail(&e, id);
        }
    }
}

/// A chat command as the event it publishes (`App::publish_as` sanitises and signs it).
fn chat_args(kind: &str, text: &str, room: String) -> PublishArgs {
    PublishArgs {
        kind: kind.into(),
        data: json!({ "text": text }),
        room_id: Some(room),
        user_id: None,
        metadata: None,
    }
}

fn not_in_room() -> AppError {
    AppError::new(
        axum::http::StatusCode::BAD_REQUEST,
        code::NOT_IN_ROOM,
        "not in a room; join one first",
    )
}

fn published(e: &herald_core::Event, id: Option<Value>) -> Arc<ServerMessage> {
    ServerMessage::reply(
        "event.published",
        Some(serde_json::to_value(Published::of(e)).expect("serialises")),
        id,
    )
}

impl Session {
    /// `subscribe` with `since`: replays what the client missed, then goes live. Runs beside
    /// the session (the writer keeps draining the outbox while the replay fills it); the reply
    /// `subscription.created` (with `recovered`) precedes the replayed events.
    fn resume(&mut self, spec: SubscriptionSpec, since: u64, id: Option<Value>) {
        let resuming = self.limits().resuming.clone();
        let (app, conn) = (self.app.clone(), self.conn.clone());
        tokio::spawn(async move {
            let _one_at_a_time = resuming.lock().await;
            let replay = match Replay::begin(&app.hub, &conn, vec![spec.clone()], since) {
                Ok(r) => r,
                Err(e) => {
                    let e = hub_error(e);
                    metrics::counter!("herald_errors_total", "code" => e.code).increment(1);
                    conn.send(Outgoing::Message(e.to_ws(id)));
                    return;
                }
            };
            let sid = replay.ids()[0];
            let replied = replay.run(&*app.store, |started| {
                let reply = match started {
                    Ok(r) => {
                        count_resume("websocket", &r);
                        let mut body = created_body(sid, &spec);
                        add_recovery(&mut body, &r);
                        ServerMessage::reply("subscription.created", Some(body), id)
                    }
                    Err(e) => AppError::unavailable(e.to_string()).to_ws(id),
                };
                conn.send(Outgoing::Message(reply));
            });
            if let Err(e) = replied.await {
                tracing::warn!(connection = %conn.id, error = %e, "resume failed; connection closed");
            }
        });
    }
}

/// `recovered` (and `oldestSeq` when history was lost) on a resumed subscription's reply.
pub fn add_recovery(body: &mut Value, r: &Recovery) {
    let obj = body.as_object_mut().expect("an object");
    obj.insert("recovered".into(), r.recovered.into());
    if let Some(oldest) = r.oldest_seq {
        obj.insert("oldestSeq".into(), oldest.into());
    }
}

pub fn count_resume(transport: &'static str, r: &Recovery) {
    let recovered = if r.recovered { "true" } else { "false" };
    metrics::counter!("herald_resumes_total", "transport" => transport, "recovered" => recovered)
        .increment(1);
}

/// The acknowledgement shared by WebSocket `event.published` and HTTP 201.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Published {
    pub success: bool,
    pub id: Uuid,
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(serialize_with = "herald_core::event::iso_millis")]
    pub timestamp: chrono::DateTime<chrono::Utc>,
}

impl Published {
    pub fn of(e: &herald_core::Event) -> Self {
        Self {
            success: true,
            id: e.id,
            seq: e.seq,
            kind: e.kind.clone(),
            timestamp: e.timestamp,
        }
    }
}

/// Validates a subscription request (patterns, filter lengths).
pub fn parse_spec(args: &SubscribeArgs) -> Result<SubscriptionSpec, AppError> {
    let filters = args.filters.clone().unwrap_or_default();
    crate::app::check_id("filters.userId", filters.user_id.as_deref())?;
    crate::app::check_id("filters.roomId", filters.room_id.as_deref())?;
    SubscriptionSpec::parse(&args.event_types, filters).map_err(AppError::bad_request)
}

/// The body of `subscription.created`.
pub fn created_body(sid: Uuid, spec: &SubscriptionSpec) -> Value {
    let filters = serde_json::to_value(&spec.filters).expect("filters serialise");
    json!({"subscriptionId": sid, "eventTypes": spec.event_types(), "filters": filters})
}

pub fn hub_error(e: HubError) -> AppError {
    match e {
        HubError::TooManySubscriptions(_)
        | HubError::TooManyRooms(_)
        | HubError::SubscriptionsTooLarge(_)
        | HubError::TooManyReplays => AppError::rate_limited(e.to_string()),
        HubError::OtherUser(_) => AppError::new(
            axum::http::StatusCode::CONFLICT,
            code::CONFLICT,
            e.to_string(),
        ),
        HubError::NotInRoom => AppError::new(
            axum::http::StatusCode::BAD_REQUEST,
            code::NOT_IN_ROOM,
            e.to_string(),
        ),
        other => AppError::not_found(other.to_string()),
    }
}

/// Adds a (live) subscription to a connection; the body of `subscription.created`.
pub fn subscribe(
    app: &App,
    conn: &Arc<Connection>,
    args: SubscribeArgs,
) -> Result<Value, AppError> {
    let spec = parse_spec(&args)?;
    let sid = app.hub.subscribe(conn, spec.clone()).map_err(hub_error)?;
    Ok(created_body(sid, &spec))
}
