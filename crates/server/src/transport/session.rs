//! One client's command session: parses what it sends and answers through its outbox, so
//! replies and events leave in one ordered stream.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use herald_core::Connection;
use herald_core::protocol::{Command, Dialect, Envelope, ServerMessage, code};
use herald_core::resume::{Recovery, Replay};
use herald_core::{CloseReason, Outgoing, SubscriptionSpec};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::App;
use crate::http::error::AppError;
use crate::http::replies::{Published, created_body, hub_error, parse_spec, stream_error};

mod documents;
mod rooms;
mod yjs;

pub struct Session {
    app: Arc<App>,
    conn: Arc<Connection>,
    dialect: Dialect,
    /// Publishes refused in a row; a client that keeps flooding is disconnected.
    refused: u32,
    /// Created by the first command that needs it: most connections never send one, and the
    /// session lives in the connection's task for as long as it is open.
    limits: Option<Box<Limits>>,
    /// The documents this connection joined.
    documents: Vec<String>,
    /// The Yjs document of a y-websocket connection.
    yjs: Option<String>,
}

struct Limits {
    publish: DefaultDirectRateLimiter,
    typing: DefaultDirectRateLimiter,
    cursor: DefaultDirectRateLimiter,
    /// Resumes and room joins (which queue history first) on one connection replay one at a
    /// time.
    resuming: Arc<tokio::sync::Mutex<()>>,
}

/// Typing notices per second per connection (burst the same): enough for a UI that sends one
/// per keystroke burst, not enough to flood a room.
const TYPING_RATE: u32 = 5;
/// Cursor moves per second per connection (burst the same): smooth enough for a remote
/// cursor, bounded for the document's other participants.
const CURSOR_RATE: u32 = 20;
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
            documents: Vec::new(),
            yjs: None,
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
                cursor: RateLimiter::direct(Quota::per_second(
                    NonZeroU32::new(CURSOR_RATE).expect("nonzero"),
                )),
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
        match Envelope::parse(text) {
            Ok(env) => self.handle(env).await,
            Err(e) => {
                metrics::counter!("herald_errors_total", "code" => e.code).increment(1);
                self.reply(ServerMessage::error(e.message, e.code, e.id));
                Flow::Continue
            }
        }
    }

    /// Runs one command (parsed from JSON text, or mapped from another protocol's packet).
    pub async fn handle(&mut self, env: Envelope) -> Flow {
        // The sweep closes expired sessions every few seconds; nothing is done for one
        // meanwhile.
        if self.conn.expired(chrono::Utc::now().timestamp()) {
            self.conn.outbox.close(CloseReason::TOKEN_EXPIRED);
            return Flow::Continue;
        }
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
            Command::DocumentJoin { document, version } => {
                self.document_join(document, version, id);
            }
            Command::DocumentLeave { document } => self.document_leave(document, id),
            Command::DocumentChange {
                document,
                base_version,
                position,
                length,
                text,
                change_id,
            } => {
                if let Some(flow) = self.over_publish_rate(&id) {
                    return flow;
                }
                let change = herald_core::document::Change::new(position, length, text);
                self.document_change(document, base_version, change, change_id, id);
            }
            Command::DocumentCursor { document, cursor } => {
                self.document_cursor(document, cursor, id);
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
            Err(e) => self.fail(&stream_error(e), id),
        }
    }

    /// Counts a publish against the connection's rate; when over it, answers the refusal and
    /// says whether the client is flooding.
    fn over_publish_rate(&mut self, id: &Option<Value>) -> Option<Flow> {
        let allowed = self.limits().publish.check().is_ok();
        let refused = self.count_refusal(allowed).err()?;
        self.fail(
            &AppError::rate_limited("publish rate limit exceeded; slow down"),
            id.clone(),
        );
        Some(refused)
    }

    /// Counts a rate-limited step towards the flood limit: refused (`!allowed`), what the
    /// transport should do — go on, or disconnect a client refused `MAX_REFUSED` times in a row.
    fn count_refusal(&mut self, allowed: bool) -> Result<(), Flow> {
        if allowed {
            self.refused = 0;
            return Ok(());
        }
        self.refused += 1;
        Err(if self.refused >= MAX_REFUSED {
            Flow::Flooding
        } else {
            Flow::Continue
        })
    }
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
