//! Volatile signals between the nodes of a cluster (typing, document cursors and participants,
//! Yjs awareness), through Redis pub/sub on the channel `{prefix}:signals`.
//!
//! Pub/sub, not a stream: a signal is worth nothing once late, and losing some is repaired by
//! restating state rather than by replaying. One task publishes this node's signals in the order
//! they were sent (a bounded queue: when it is full, or a publish fails, the signals are dropped
//! and the node's whole state is restated once Redis takes writes again). Another task listens:
//! each time its subscription starts it says `hello` and restates this node's state; a node that
//! hears `hello` restates its own, and a restatement replaces all its node said before. A node
//! that stopped is forgotten when it says so (`gone`, on shutdown) or when its key expires
//! (`kill -9`).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use herald_core::signal::{ClusterSignals, SignalReceiver};
use redis::aio::ConnectionManager;
use redis::{AsyncTypedCommands, Client};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::{MAX_RETRY, RETRY};

/// Signals waiting to be published; beyond this they are dropped (and the state restated).
const QUEUE: usize = 8192;
/// Signals published in one round trip.
const BATCH: usize = 256;

/// A message on the signals channel.
#[derive(Serialize, Deserialize)]
struct Message {
    node: String,
    #[serde(flatten)]
    what: What,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum What {
    /// One signal about a room.
    Signal { room: String, body: Value },
    /// The sender's whole state, replacing what it said before.
    State { signals: Vec<(String, Value)> },
    /// The sender (re)joined, or may have missed signals: everyone restates.
    Hello,
    /// The sender is stopping: forget it.
    Gone,
}

enum Out {
    Signal(String, Value),
    Hello,
    /// Restate this node's state (computed when it is sent).
    State,
    Gone(tokio::sync::oneshot::Sender<()>),
}

/// Where the signals go and come from: the channel, this node, the Redis connections.
pub(crate) struct Link {
    pub(crate) id: String,
    pub(crate) channel: String,
    pub(crate) node_prefix: String,
    pub(crate) client: Client,
    pub(crate) commands: ConnectionManager,
}

/// This node's signals: the sending half the hub and the documents hold.
pub(crate) struct Signals {
    queue: mpsc::Sender<Out>,
    /// A signal was dropped: the state must be restated.
    lost: Arc<AtomicBool>,
}

impl ClusterSignals for Signals {
    fn send(&self, room: &str, body: Value) {
        if self
            .queue
            .try_send(Out::Signal(room.to_owned(), body))
            .is_err()
        {
            self.lost.store(true, Ordering::Relaxed);
        }
    }
}

impl Signals {
    /// Starts the publisher and the listener; `alive` is the cluster's view of the live nodes
    /// (this one excluded), renewed on every heartbeat.
    pub(crate) fn start(
        link: Link,
        receiver: Arc<dyn SignalReceiver>,
        alive: watch::Receiver<HashSet<String>>,
    ) -> (Arc<Self>, Vec<JoinHandle<()>>) {
        let link = Arc::new(link);
        let (queue, rx) = mpsc::channel(QUEUE);
        let lost = Arc::new(AtomicBool::new(false));
        let tasks = vec![
            tokio::spawn(publish_loop(
                link.clone(),
                rx,
                receiver.clone(),
                lost.clone(),
            )),
            tokio::spawn(listen_loop(link, receiver, queue.clone(), alive)),
        ];
        (Arc::new(Self { queue, lost }), tasks)
    }

    /// Tells the others this node is gone (after its connections closed), waiting at most
    /// `wait` for the message to leave.
    pub(crate) async fn stop(&self, wait: std::time::Duration) {
        let (done, sent) = tokio::sync::oneshot::channel();
        if self.queue.send(Out::Gone(done)).await.is_ok() {
            let _ = tokio::time::timeout(wait, sent).await;
        }
    }
}

async fn publish_loop(
    link: Arc<Link>,
    mut queue: mpsc::Receiver<Out>,
    receiver: Arc<dyn SignalReceiver>,
    lost: Arc<AtomicBool>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        let mut pipe = redis::pipe();
        let mut acks = Vec::new();
        // What was dropped is restated first; the signals after it apply on top.
        if lost.swap(false, Ordering::Relaxed) {
            publish(&mut pipe, &link, state(&*receiver));
        }
        for out in batch.drain(..) {
            let what = match out {
                Out::Signal(room, body) => What::Signal { room, body },
                Out::Hello => What::Hello,
                Out::State => state(&*receiver),
                Out::Gone(ack) => {
                    acks.push(ack);
                    What::Gone
                }
            };
            publish(&mut pipe, &link, what);
        }
        if let Err(e) = pipe.exec_async(&mut link.commands.clone()).await {
            tracing::warn!(error = %e, "cluster signals: publish failed; will restate");
            lost.store(true, Ordering::Relaxed);
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

fn state(receiver: &dyn SignalReceiver) -> What {
    What::State {
        signals: receiver.state(),
    }
}

fn publish(pipe: &mut redis::Pipeline, link: &Link, what: What) {
    let message = Message {
        node: link.id.clone(),
        what,
    };
    pipe.publish(
        &link.channel,
        serde_json::to_string(&message).expect("serialises"),
    )
    .ignore();
}

async fn listen_loop(
    link: Arc<Link>,
    receiver: Arc<dyn SignalReceiver>,
    queue: mpsc::Sender<Out>,
    mut alive: watch::Receiver<HashSet<String>>,
) {
    let mut pause = RETRY;
    // The nodes whose signals this node holds.
    let mut heard: HashSet<String> = HashSet::new();
    loop {
        let subscribed = match link.client.get_async_pubsub().await {
            Ok(mut pubsub) => pubsub.subscribe(&link.channel).await.map(|()| pubsub),
            Err(e) => Err(e),
        };
        match subscribed {
            Ok(pubsub) => {
                pause = RETRY;
                // Whatever was sent while unsubscribed is lost: everyone restates, this node
                // included (the others may have lost this node's signals too).
                let _ = queue.send(Out::Hello).await;
                let _ = queue.send(Out::State).await;
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        msg = messages.next() => {
                            let Some(msg) = msg else { break };
                            let message = msg
                                .get_payload::<String>()
                                .ok()
                                .and_then(|p| serde_json::from_str::<Message>(&p).ok());
                            match message {
                                Some(m) if m.node == link.id => {}
                                Some(m) => {
                                    hear(&*receiver, &queue, &mut heard, m).await;
                                }
                                None => tracing::warn!("cluster signals: unreadable message"),
                            }
                        }
                        Ok(()) = alive.changed() => {
                            let live = alive.borrow_and_update().clone();
                            for gone in heard.difference(&live).cloned().collect::<Vec<_>>() {
                                // `live` may predate a node that started since: confirm.
                                let key = format!("{}{gone}", link.node_prefix);
                                let exists = link.commands.clone().exists(&key).await;
                                if !exists.unwrap_or(true) {
                                    receiver.restate(&gone, Vec::new());
                                    heard.remove(&gone);
                                }
                            }
                        }
                    }
                }
                tracing::warn!("cluster signals: subscription lost; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "cluster signals: cannot subscribe"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_RETRY);
    }
}

async fn hear(
    receiver: &dyn SignalReceiver,
    queue: &mpsc::Sender<Out>,
    heard: &mut HashSet<String>,
    message: Message,
) {
    let node = message.node;
    match message.what {
        What::Signal { room, body } => {
            receiver.received(&node, &room, body);
            heard.insert(node);
        }
        What::State { signals } => {
            receiver.restate(&node, signals);
            heard.insert(node);
        }
        // Its state follows (a restarted node is a new node: it has no past to forget).
        What::Hello => {
            let _ = queue.send(Out::State).await;
        }
        What::Gone => {
            receiver.restate(&node, Vec::new());
            heard.remove(&node);
        }
    }
}
