//! Consuming the Redis channels that backends `PUBLISH` to (seed 001's message queue, seed
//! 004's pattern subscriptions), so that any service that can reach Redis can reach clients.
//!
//! Pub/sub hands every message to every subscriber, and each message must become one event,
//! not one per node: only the node holding the lock `{prefix}:consumer` (taken and renewed like
//! the writer lock) subscribes. When it dies, another takes over once the lock expires; what is
//! published meanwhile is lost, as pub/sub loses whatever is published with no subscriber.

use std::sync::Arc;

use futures_util::StreamExt;
use redis::Client;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::{BLOCK, RedisConfig, connect, hold_lock, release_lock};
use herald_core::log::PublishError;

/// Messages read and not yet handled; beyond this, new ones are dropped with a warning
/// (pub/sub has no backpressure: a subscriber that falls behind is disconnected by Redis).
pub const QUEUE: usize = 4096;

/// A message read from a subscribed channel.
#[derive(Debug)]
pub struct Received {
    /// The channel it was published on.
    pub channel: String,
    /// The pattern it matched, for pattern subscriptions.
    pub pattern: Option<String>,
    /// The message as published.
    pub payload: Vec<u8>,
}

/// What to subscribe to.
#[derive(Debug, Clone, Default)]
pub struct Subscriptions {
    /// Channels by exact name (`SUBSCRIBE`).
    pub channels: Vec<String>,
    /// Glob patterns such as `room:*` (`PSUBSCRIBE`).
    pub patterns: Vec<String>,
}

struct Shared {
    client: Client,
    commands: ConnectionManager,
    lock: String,
    node: String,
    subscriptions: Subscriptions,
}

/// This node's candidacy as the consumer of the configured channels.
pub struct Consumer {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Consumer {
    /// Starts competing for the consumer lock; while this node holds it, every message on
    /// `subscriptions` is sent to `out`.
    pub async fn start(
        config: &RedisConfig,
        subscriptions: Subscriptions,
        out: mpsc::Sender<Received>,
    ) -> Result<Self, PublishError> {
        let (client, commands) = connect(config).await?;
        let shared = Arc::new(Shared {
            client,
            commands,
            lock: format!("{}:consumer", config.prefix),
            node: Uuid::new_v4().to_string(),
            subscriptions,
        });
        let task = tokio::spawn(consume_loop(shared.clone(), out));
        Ok(Self { shared, task })
    }

    /// Stops consuming and hands the role over at once.
    pub async fn shutdown(&self) {
        self.task.abort();
        let s = &self.shared;
        release_lock(&s.commands, &s.lock, &s.node).await;
    }
}

async fn consume_loop(shared: Arc<Shared>, out: mpsc::Sender<Received>) {
    loop {
        match hold_lock(&shared.commands, &shared.lock, &shared.node).await {
            Ok(true) => {
                if let Err(e) = consume(&shared, &out).await {
                    tracing::warn!(error = %e, "Redis channels: subscription lost");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "Redis channels: cannot take the consumer lock"),
        }
        tokio::time::sleep(BLOCK).await;
    }
}

/// Subscribes and forwards messages for as long as this node keeps the lock.
async fn consume(shared: &Shared, out: &mpsc::Sender<Received>) -> redis::RedisResult<()> {
    let mut pubsub = shared.client.get_async_pubsub().await?;
    let subs = &shared.subscriptions;
    if !subs.channels.is_empty() {
        pubsub.subscribe(&subs.channels).await?;
    }
    if !subs.patterns.is_empty() {
        pubsub.psubscribe(&subs.patterns).await?;
    }
    tracing::info!(channels = ?subs.channels, patterns = ?subs.patterns, "consuming Redis channels");
    let mut messages = pubsub.into_on_message();
    let mut renew = tokio::time::interval(BLOCK);
    loop {
        tokio::select! {
            msg = messages.next() => {
                let Some(msg) = msg else {
                    return Ok(());
                };
                let received = Received {
                    channel: msg.get_channel_name().to_owned(),
                    pattern: msg.from_pattern().then(|| msg.get_pattern().ok()).flatten(),
                    payload: msg.get_payload_bytes().to_vec(),
                };
                if out.try_send(received).is_err() {
                    tracing::warn!(
                        queue = QUEUE,
                        "Redis channels: too many messages waiting; one dropped"
                    );
                }
            }
            _ = renew.tick() => {
                if !hold_lock(&shared.commands, &shared.lock, &shared.node).await? {
                    // Another node took over (this one paused past the lock's expiry).
                    return Ok(());
                }
            }
        }
    }
}
