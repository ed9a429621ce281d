//! One client's command session: parses what it sends and answers through its outbox, so
//! replies and events leave in one ordered stream.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use herald_core::hub::{Connection, HubError};
use herald_core::protocol::{Command, Envelope, ServerMessage, SubscribeArgs, code};
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
            Command::Subscribe(args) => match subscribe(&self.app, &self.conn, args) {
                Ok(created) => self.reply(ServerMessage::reply(
                    "subscription.created",
                    Some(created),
                    id,
                )),
                Err(e) => self.fail(&e, id),
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

/// Adds a subscription to a connection; the body of `subscription.created`.
pub fn subscribe(
    app: &App,
    conn: &Arc<Connection>,
    args: SubscribeArgs,
) -> Result<Value, AppError> {
    let filters = args.filters.unwrap_or_default();
    crate::app::check_id("filters.userId", filters.user_id.as_deref())?;
    crate::app::check_id("filters.roomId", filters.room_id.as_deref())?;
    let spec =
        SubscriptionSpec::parse(&args.event_types, filters).map_err(AppError::bad_request)?;
    let event_types = spec.event_types();
    let filters = serde_json::to_value(&spec.filters).expect("filters serialise");
    let sid = app.hub.subscribe(conn, spec).map_err(|e| match e {
        HubError::TooManySubscriptions(_) => AppError::rate_limited(e.to_string()),
        other => AppError::not_found(other.to_string()),
    })?;
    Ok(json!({"subscriptionId": sid, "eventTypes": event_types, "filters": filters}))
}
