//! Redis channels as a source of events (`[[redis_channels]]`, seed 001's message queue and
//! seed 004's pattern subscriptions): a backend `PUBLISH`es a JSON message to a configured
//! channel, and one node of the cluster (`herald_redis::channels`) turns it into an event
//! published through the log like any other — with a `seq`, stored, resumable.
//!
//! A message is `{"type"?, "data"?, "userId"?, "roomId"?, "metadata"?}`; the channel's
//! configuration says who receives it (`Route`) and may fix the type. A message that cannot
//! become an event is logged and counted (`herald_redis_channel_messages_total{result}`), never
//! more.

use std::sync::Arc;

use anyhow::bail;
use herald_core::access::PERSONAL_PREFIX;
use herald_core::pattern::validate_type;
use herald_core::protocol::PublishArgs;
use herald_core::room::validate_room;
use herald_core::{Identity, Role};
use herald_redis::RedisConfig;
use herald_redis::channels::{Consumer, QUEUE, Received, Subscriptions};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::auth::SERVICE_USER;
use crate::config::{RedisChannelConfig, Route};

/// The configured channels being consumed (on whichever node holds the consumer role).
pub struct Bridge {
    consumer: Consumer,
    task: JoinHandle<()>,
}

impl Bridge {
    /// Starts consuming when channels are configured. A channel table that is invalid, or
    /// channels without `redis`, stop start-up with the reason.
    pub async fn start(app: &Arc<App>) -> anyhow::Result<Option<Self>> {
        let rules = &app.config.redis_channels;
        if rules.is_empty() {
            return Ok(None);
        }
        let Some(url) = &app.config.redis else {
            bail!("redis_channels needs redis: the channels are Redis channels");
        };
        let mut subscriptions = Subscriptions::default();
        for rule in rules {
            if let Some(kind) = &rule.kind {
                validate_type(kind).map_err(|e| anyhow::anyhow!("[[redis_channels]] type: {e}"))?;
            }
            match (&rule.channel, &rule.pattern) {
                (Some(c), None) if !c.is_empty() => subscriptions.channels.push(c.clone()),
                (None, Some(p)) if !p.is_empty() => subscriptions.patterns.push(p.clone()),
                _ => bail!("each [[redis_channels]] table needs a channel or a pattern, not both"),
            }
        }
        let redis = RedisConfig {
            url: url.clone(),
            prefix: app.config.redis_prefix.clone(),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let consumer = Consumer::start(&redis, subscriptions, tx).await?;
        let task = tokio::spawn(run(app.clone(), rx));
        Ok(Some(Self { consumer, task }))
    }

    pub async fn shutdown(&self) {
        self.consumer.shutdown().await;
        self.task.abort();
    }
}

/// Publishes the messages in the order they were read, one at a time, so that a channel's
/// events keep its order.
async fn run(app: Arc<App>, mut messages: mpsc::Receiver<Received>) {
    let publisher = Identity::with_role(SERVICE_USER, Role::Service);
    while let Some(msg) = messages.recv().await {
        let result = match to_event(&app.config.redis_channels, &msg) {
            Ok(args) => app.publish(&publisher, args).await.map_err(|e| {
                let result = if e.status.is_client_error() {
                    "invalid"
                } else {
                    "failed"
                };
                (result, e.message)
            }),
            Err(reason) => Err(("invalid", reason)),
        };
        let result = match result {
            Ok(_) => "published",
            Err((result, reason)) => {
                tracing::warn!(
                    channel = msg.channel,
                    result,
                    reason,
                    "Redis channel message not published"
                );
                result
            }
        };
        metrics::counter!("herald_redis_channel_messages_total", "result" => result).increment(1);
    }
}

/// A message as backends publish it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChannelMessage {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    room_id: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

/// The event a message becomes, or why it cannot become one.
fn to_event(rules: &[RedisChannelConfig], msg: &Received) -> Result<PublishArgs, String> {
    let rule = rules
        .iter()
        .find(|r| match &msg.pattern {
            Some(p) => r.pattern.as_ref() == Some(p),
            None => r.channel.as_ref() == Some(&msg.channel),
        })
        .ok_or("no [[redis_channels]] table for this channel")?;
    let m: ChannelMessage = serde_json::from_slice(&msg.payload)
        .map_err(|e| format!("not a JSON message object: {e}"))?;
    let kind = rule
        .kind
        .clone()
        .or(m.kind)
        .ok_or("no `type`, and the channel's configuration sets none")?;
    let (user_id, room_id) = match rule.route {
        Route::User => {
            let user = m
                .user_id
                .ok_or("`userId` is required: the channel routes to users")?;
            let personal = format!("{PERSONAL_PREFIX}{user}");
            (Some(user), Some(personal))
        }
        Route::Room => {
            let room = m
                .room_id
                .or_else(|| matched_room(rule, &msg.channel))
                .ok_or("`roomId` is required: the channel routes to rooms")?;
            validate_room(&room)?;
            (m.user_id, Some(room))
        }
        Route::All => (m.user_id, None),
    };
    Ok(PublishArgs {
        kind,
        data: m.data,
        room_id,
        user_id,
        metadata: m.metadata,
    })
}

/// The room a pattern's trailing `*` matched: `room:*` and `room:lobby` give `lobby`.
fn matched_room(rule: &RedisChannelConfig, channel: &str) -> Option<String> {
    let prefix = rule.pattern.as_deref()?.strip_suffix('*')?;
    channel
        .strip_prefix(prefix)
        .filter(|room| !room.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(
        channel: Option<&str>,
        pattern: Option<&str>,
        route: Route,
        kind: Option<&str>,
    ) -> RedisChannelConfig {
        RedisChannelConfig {
            channel: channel.map(Into::into),
            pattern: pattern.map(Into::into),
            route,
            kind: kind.map(Into::into),
        }
    }

    /// A message as read from Redis; `payload` is a JSON value or any text.
    fn received(channel: &str, pattern: Option<&str>, payload: impl ToString) -> Received {
        Received {
            channel: channel.into(),
            pattern: pattern.map(Into::into),
            payload: payload.to_string().into_bytes(),
        }
    }

    #[test]
    fn messages_are_routed_by_their_channels_configuration() {
        let rules = [
            rule(
                Some("user.notifications"),
                None,
                Route::User,
                Some("notification"),
            ),
            rule(None, Some("room:*"), Route::Room, None),
            rule(
                Some("system.events"),
                None,
                Route::All,
                Some("system_event"),
            ),
        ];
        let to_user = to_event(
            &rules,
            &received(
                "user.notifications",
                None,
                json!({"userId": "alice", "data": {"n": 1}}),
            ),
        )
        .unwrap();
        assert_eq!(to_user.kind, "notification");
        assert_eq!(
            (to_user.user_id.as_deref(), to_user.room_id.as_deref()),
            (Some("alice"), Some("user:alice"))
        );
        let to_room = to_event(
            &rules,
            &received(
                "room:lobby",
                Some("room:*"),
                json!({"type": "message", "data": "hi"}),
            ),
        )
        .unwrap();
        assert_eq!(
            (to_room.kind.as_str(), to_room.room_id.as_deref()),
            ("message", Some("lobby"))
        );
        let named = to_event(
            &rules,
            &received(
                "room:x",
                Some("room:*"),
                json!({"type": "m", "roomId": "other"}),
            ),
        )
        .unwrap();
        assert_eq!(named.room_id.as_deref(), Some("other"));
        let to_all = to_event(
            &rules,
            &received("system.events", None, json!({"type": "ignored"})),
        )
        .unwrap();
        assert_eq!(
            (to_all.kind.as_str(), to_all.room_id),
            ("system_event", None)
        );
    }

    #[test]
    fn invalid_messages_say_why() {
        let rules = [
            rule(Some("user.notifications"), None, Route::User, None),
            rule(None, Some("room:*"), Route::Room, Some("message")),
        ];
        let why = |channel: &str, pattern: Option<&str>, payload: &str| {
            to_event(&rules, &received(channel, pattern, payload)).unwrap_err()
        };
        assert!(why("user.notifications", None, "not json").contains("JSON"));
        assert!(why("user.notifications", None, "[1]").contains("JSON"));
        assert!(why("user.notifications", None, r#"{"userId":"a"}"#).contains("type"));
        assert!(why("user.notifications", None, r#"{"type":"t"}"#).contains("userId"));
        assert!(why("room:", Some("room:*"), "{}").contains("roomId"));
        assert!(why("elsewhere", None, "{}").contains("no [[redis_channels]]"));
    }
}
