//! One client's command session: parses what it sends and answers through its outbox, so
//! replies and events leave in one ordered stream.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use herald_core::hub::{Connection, HubError};
use herald_core::protocol::{Command, Envelope, ServerMessage, SubscribeArgs, code};
use herald_core::resume::{Recovery, Replay};
use herald_core::{Outgoing, SubscriptionSpec};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::App;
use crate::error::AppError;

pub struct Session {
    app: Arc<App>,
    conn: Arc<Connection>,
    publish_limit: DefaultDirectRateLimiter,
    /// Publishes refused in a row; a client that keeps flooding is disconnected.
    refused: u32,
    /// Resumes on one connection replay one at a time.
    resuming: Arc<tokio::sync::Mutex<()>>,
}

/// Refusals in a row after which a flooding client is disconnected (close 4029).
const MAX_REFUSED: u32 = 100;

/// What the transport should do after a command.
#[derive(Debug, PartialEq)]
pub enum Flow {
    Continue,
    Flooding,
}

impl Session {
    pub fn new(app: Arc<App>, conn: Arc<Connection>) -> Self {
        let rate = NonZeroU32::new(app.config.publish_rate_per_connection.max(1)).expect("nonzero");
        Self {
            publish_limit: RateLimiter::direct(
                Quota::per_second(rate)
                    .allow_burst(rate.saturating_mul(NonZeroU32::new(2).expect("2"))),
            ),
            app,
            conn,
            refused: 0,
            resuming: Arc::default(),
        }
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
                    self.app.hub.authenticate(&self.conn, identity);
                    self.reply(ServerMessage::reply(
                        "authenticated",
                        Some(json!({"userId": user})),
                        id,
                    ));
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
                if self.publish_limit.check().is_err() {
                    self.refused += 1;
                    self.fail(
                        &AppError::rate_limited("publish rate limit exceeded; slow down"),
                        id,
                    );
                    return if self.refused >= MAX_REFUSED {
                        Flow::Flooding
                    } else {
                        Flow::Continue
                    };
                }
                self.refused = 0;
                // The acknowledgement waits for the commit; the session keeps reading meanwhile.
                let app = self.app.clone();
                let conn = self.conn.clone();
                tokio::spawn(async move {
                    let reply = match app.publish(&identity, args).await {
                        Ok(e) => ServerMessage::reply(
                            "event.published",
                            Some(
                                serde_json::to_value(Published::of(&e.event)).expect("serialises"),
                            ),
                            id,
                        ),
                        Err(e) => e.to_ws(id),
                    };
                    conn.send(Outgoing::Message(reply));
                });
            }
        }
        Flow::Continue
    }
}

impl Session {
    /// `subscribe` with `since`: replays what the client missed, then goes live. Runs beside
    /// the session (the writer keeps draining the outbox while the replay fills it); the reply
    /// `subscription.created` (with `recovered`) precedes the replayed events.
    fn resume(&self, spec: SubscriptionSpec, since: u64, id: Option<Value>) {
        let (app, conn, resuming) = (self.app.clone(), self.conn.clone(), self.resuming.clone());
        tokio::spawn(async move {
            let _one_at_a_time = resuming.lock().await;
            let replay = match Replay::begin(&app.hub, &conn, vec![spec.clone()], since) {
                Ok(r) => r,
                Err(e) => {
                    conn.send(Outgoing::Message(hub_error(e).to_ws(id)));
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
        HubError::TooManySubscriptions(_) => AppError::rate_limited(e.to_string()),
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
