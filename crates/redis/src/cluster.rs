//! The nodes of a cluster and their room presence, through Redis; their volatile signals
//! (typing, cursors, awareness) travel beside it (`signals`), forgotten with their node.
//!
//! Every node announces itself with a key that expires (`{prefix}:node:{id}`, renewed every
//! `HEARTBEAT`, gone `NODE_TTL` after the node stops renewing it — a `kill -9` included) and
//! lists its id in the set `{prefix}:nodes`. Its room presence — for each room and member, how
//! many of its connections are in the room — is a hash `{prefix}:presence:{id}` with the same
//! expiry, so a dead node's members disappear with it.
//!
//! Each change is written to the hash and published on the channel `{prefix}:presence` in one
//! transaction. Every node keeps a mirror of the other nodes' presence, fed by that channel and
//! repaired from the hashes: a node it had not seen before, a node that asked to be re-read
//! (after rewriting its hash), and every node after the subscription reconnects (pub/sub drops
//! what is published while it is down) are read whole; a node whose key expired is dropped.
//! The mirror is what the hub consults (`ClusterPresence`), so joins and presence lists never
//! wait for Redis. One task applies every change to the mirror, in the order it read them, and
//! tells the hub when a member's presence on the other nodes began or ended.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use herald_core::Hub;
use herald_core::presence::ClusterPresence;
use herald_core::room::Member;
use herald_core::signal::{ClusterSignals, SignalReceiver};
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::{AsyncTypedCommands, Client};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::signals::{Link, Signals};
use crate::{MAX_RETRY, RETRY, RedisConfig, connect, unavailable};
use herald_core::log::PublishError;

/// How often a node renews its key and checks which nodes are alive.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a node's key and presence outlive its last heartbeat.
pub const NODE_TTL: Duration = Duration::from_secs(3);

/// What a node's info callback reports about it, stored in its key.
pub type NodeInfo = Arc<dyn Fn() -> Value + Send + Sync>;

struct Keys {
    nodes: String,
    node_prefix: String,
    presence_prefix: String,
    channel: String,
}

impl Keys {
    fn node(&self, id: &str) -> String {
        format!("{}{id}", self.node_prefix)
    }

    fn presence(&self, id: &str) -> String {
        format!("{}{id}", self.presence_prefix)
    }
}

/// One node's connections of one member in one room (0: none).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    room: String,
    member: Member,
    connections: usize,
}

impl Entry {
    /// The entry's field in its node's presence hash.
    fn field(&self) -> String {
        serde_json::to_string(&(&self.room, &self.member.key)).expect("strings serialise")
    }
}

/// A message on the presence channel: a node's changed entry, or (none) "read my hash again".
#[derive(Serialize, Deserialize)]
struct Notice {
    node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    entry: Option<Entry>,
}

/// Member key → (member, node → its connections in the room).
type Members = HashMap<String, (Member, HashMap<String, usize>)>;

/// Room → members: the other nodes' presence.
#[derive(Default)]
struct Mirror {
    rooms: HashMap<String, Members>,
}

/// A member's presence on the other nodes began (`true`) or ended.
type Transition = (String, Member, bool);

impl Mirror {
    /// Sets `node`'s entry; returns the transition it caused, if any.
    fn set(&mut self, node: &str, e: Entry) -> Option<Transition> {
        let members = self.rooms.entry(e.room.clone()).or_default();
        let before = members.contains_key(&e.member.key);
        if e.connections == 0 {
            let (_, nodes) = members.get_mut(&e.member.key)?;
            nodes.remove(node);
            if !nodes.is_empty() {
                return None;
            }
            let (member, _) = members.remove(&e.member.key).expect("just seen");
            if members.is_empty() {
                self.rooms.remove(&e.room);
            }
            return Some((e.room, member, false));
        }
        let (member, nodes) = members
            .entry(e.member.key.clone())
            .or_insert_with(|| (e.member.clone(), HashMap::new()));
        *member = e.member;
        nodes.insert(node.to_owned(), e.connections);
        (!before).then(|| (e.room, member.clone(), true))
    }

    /// Replaces everything mirrored of `node` by `entries`; returns the transitions.
    fn replace(&mut self, node: &str, entries: Vec<Entry>) -> Vec<Transition> {
        let kept: HashSet<(String, String)> = entries
            .iter()
            .map(|e| (e.room.clone(), e.member.key.clone()))
            .collect();
        let gone: Vec<Entry> = self
            .rooms
            .iter()
            .flat_map(|(room, members)| {
                members
                    .values()
                    .filter(|(m, nodes)| {
                        nodes.contains_key(node) && !kept.contains(&(room.clone(), m.key.clone()))
                    })
                    .map(|(m, _)| Entry {
                        room: room.clone(),
                        member: m.clone(),
                        connections: 0,
                    })
            })
            .collect();
        entries
            .into_iter()
            .chain(gone)
            .filter_map(|e| self.set(node, e))
            .collect()
    }

    /// Every node with an entry.
    fn nodes(&self) -> HashSet<String> {
        self.rooms
            .values()
            .flat_map(|members| members.values())
            .flat_map(|(_, nodes)| nodes.keys().cloned())
            .collect()
    }
}

/// The hub's view of the other nodes: reads the mirror, queues this node's changes.
struct Seam {
    mirror: Arc<Mutex<Mirror>>,
    changes: mpsc::UnboundedSender<Change>,
}

enum Change {
    Set(Entry),
    /// Shutting down: remove this node from Redis, then acknowledge.
    Stop(oneshot::Sender<()>),
}

impl ClusterPresence for Seam {
    fn remote(&self, room: &str) -> Vec<(Member, usize)> {
        self.mirror
            .lock()
            .rooms
            .get(room)
            .into_iter()
            .flat_map(|members| members.values())
            .map(|(m, nodes)| (m.clone(), nodes.values().sum()))
            .collect()
    }

    fn local_changed(&self, room: &str, member: &Member, connections: usize) {
        // Unbounded: the hub must never wait; there is one change per join or leave.
        let _ = self.changes.send(Change::Set(Entry {
            room: room.to_owned(),
            member: member.clone(),
            connections,
        }));
    }
}

struct Shared {
    id: String,
    keys: Keys,
    client: Client,
    commands: ConnectionManager,
    info: NodeInfo,
}

/// This node's membership of the cluster: its heartbeat, its presence in Redis, and the mirror
/// of the others' that the hub consults.
pub struct Cluster {
    shared: Arc<Shared>,
    changes: mpsc::UnboundedSender<Change>,
    signals: Arc<Signals>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Cluster {
    /// Joins the cluster as node `id` (unique: a UUID) and makes `hub`'s presence
    /// cluster-wide. `info` is called on every heartbeat; what it returns is stored in the
    /// node's key. The other nodes' signals go to `receiver`; this node's are sent through
    /// `signals()`.
    pub async fn start(
        config: &RedisConfig,
        id: String,
        hub: Arc<Hub>,
        info: NodeInfo,
        receiver: Arc<dyn SignalReceiver>,
    ) -> Result<Self, PublishError> {
        let (client, commands) = connect(config).await?;
        let p = &config.prefix;
        let shared = Arc::new(Shared {
            id,
            keys: Keys {
                nodes: format!("{p}:nodes"),
                node_prefix: format!("{p}:node:"),
                presence_prefix: format!("{p}:presence:"),
                channel: format!("{p}:presence"),
            },
            client,
            commands,
            info,
        });
        let mirror = Arc::new(Mutex::new(Mirror::default()));
        let (changes, changes_rx) = mpsc::unbounded_channel();
        let (alive_tx, alive_rx) = mpsc::channel(4);
        let (live_tx, live_rx) = watch::channel(HashSet::new());
        // The node's key exists before any of its members does, so a node that published
        // presence and has no key is dead (see `mirror_loop`).
        shared
            .heartbeat(&HashMap::new(), false)
            .await
            .map_err(unavailable)?;
        hub.set_cluster_presence(Arc::new(Seam {
            mirror: mirror.clone(),
            changes: changes.clone(),
        }));
        let link = Link {
            id: shared.id.clone(),
            channel: format!("{p}:signals"),
            node_prefix: shared.keys.node_prefix.clone(),
            client: shared.client.clone(),
            commands: shared.commands.clone(),
        };
        let (signals, mut tasks) = Signals::start(link, receiver, live_rx);
        tasks.push(tokio::spawn(announce_loop(
            shared.clone(),
            changes_rx,
            alive_tx,
            live_tx,
        )));
        tasks.push(tokio::spawn(mirror_loop(
            shared.clone(),
            mirror,
            hub,
            alive_rx,
        )));
        Ok(Self {
            shared,
            changes,
            signals,
            tasks: Mutex::new(tasks),
        })
    }

    /// Sends this node's signals to the other nodes.
    pub fn signals(&self) -> Arc<dyn ClusterSignals> {
        self.signals.clone()
    }

    /// This node's id in the cluster.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// What every live node's info callback (this one's included) last reported, as stored
    /// in its key: a node killed with `kill -9` is gone `NODE_TTL` after its last heartbeat.
    pub async fn nodes(&self) -> Result<Vec<Value>, PublishError> {
        let members = self.shared.members().await.map_err(unavailable)?;
        Ok(members
            .into_iter()
            .filter_map(|(_, info)| serde_json::from_str(&info?).ok())
            .collect())
    }

    /// Leaves the cluster at once (rather than after `NODE_TTL`): the others drop this node's
    /// members. Call after the hub's connections are closed, so their leaves are published.
    pub async fn shutdown(&self) {
        self.signals.stop(Duration::from_secs(1)).await;
        let (done, stopped) = oneshot::channel();
        if self.changes.send(Change::Stop(done)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), stopped).await;
        }
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// This node: publish its changes, renew its key, find out which nodes are alive.

async fn announce_loop(
    shared: Arc<Shared>,
    mut changes: mpsc::UnboundedReceiver<Change>,
    alive: mpsc::Sender<HashSet<String>>,
    live: watch::Sender<HashSet<String>>,
) {
    // This node's presence (field → entry): what its hash must hold.
    let mut local: HashMap<String, Entry> = HashMap::new();
    // A write failed: the hash must be rewritten whole.
    let mut dirty = false;
    let mut tick = tokio::time::interval(HEARTBEAT);
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            n = changes.recv_many(&mut batch, 256) => {
                if n == 0 {
                    return;
                }
                let mut entries = Vec::new();
                for change in batch.drain(..) {
                    match change {
                        Change::Set(e) => entries.push(e),
                        Change::Stop(done) => {
                            let _ = shared.publish(&entries).await;
                            let _ = shared.leave().await;
                            let _ = done.send(());
                            return;
                        }
                    }
                }
                for e in &entries {
                    if e.connections == 0 {
                        local.remove(&e.field());
                    } else {
                        local.insert(e.field(), e.clone());
                    }
                }
                if let Err(e) = shared.publish(&entries).await {
                    tracing::warn!(error = %e, "cluster presence: publish failed; will rewrite");
                    dirty = true;
                }
            }
            _ = tick.tick() => match shared.heartbeat(&local, dirty).await {
                Ok(nodes) => {
                    dirty = false;
                    live.send_replace(nodes.clone());
                    let _ = alive.try_send(nodes);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster heartbeat failed");
                    dirty = true;
                }
            },
        }
    }
}

impl Shared {
    /// Writes changed entries to this node's hash and announces them, in one transaction.
    async fn publish(&self, entries: &[Entry]) -> redis::RedisResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let hash = self.keys.presence(&self.id);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for e in entries {
            if e.connections == 0 {
                pipe.hdel(&hash, e.field());
            } else {
                pipe.hset(
                    &hash,
                    e.field(),
                    serde_json::to_string(e).expect("serialises"),
                );
            }
            let notice = Notice {
                node: self.id.clone(),
                entry: Some(e.clone()),
            };
            pipe.publish(
                &self.keys.channel,
                serde_json::to_string(&notice).expect("serialises"),
            );
        }
        pipe.pexpire(&hash, NODE_TTL.as_millis() as i64);
        pipe.exec_async(&mut self.commands.clone()).await
    }

    /// Renews this node's key and presence (rewriting the hash when it was lost or a write
    /// failed), and returns the ids of the live nodes, this one excluded.
    async fn heartbeat(
        &self,
        local: &HashMap<String, Entry>,
        rewrite: bool,
    ) -> redis::RedisResult<HashSet<String>> {
        let mut conn = self.commands.clone();
        let ttl = NODE_TTL.as_millis() as i64;
        let hash = self.keys.presence(&self.id);
        let info = serde_json::to_string(&(self.info)()).expect("serialises");
        let (_, _, renewed): ((), (), bool) = redis::pipe()
            .pset_ex(self.keys.node(&self.id), info, ttl as u64)
            .sadd(&self.keys.nodes, &self.id)
            .pexpire(&hash, ttl)
            .query_async(&mut conn)
            .await?;
        // An expired hash (Redis restarted empty, or this node paused past the TTL) is rebuilt
        // from `local`, and the others are asked to read it again.
        if rewrite || (!renewed && !local.is_empty()) {
            let mut pipe = redis::pipe();
            pipe.atomic().del(&hash);
            for (field, e) in local {
                pipe.hset(&hash, field, serde_json::to_string(e).expect("serialises"));
            }
            let notice = Notice {
                node: self.id.clone(),
                entry: None,
            };
            pipe.pexpire(&hash, ttl).publish(
                &self.keys.channel,
                serde_json::to_string(&notice).expect("serialises"),
            );
            pipe.exec_async(&mut conn).await?;
        }
        let mut alive = HashSet::new();
        for (id, info) in self.members().await? {
            match info {
                Some(_) if id != self.id => {
                    alive.insert(id);
                }
                Some(_) => {}
                None => {
                    conn.srem(&self.keys.nodes, &id).await?;
                }
            }
        }
        Ok(alive)
    }

    /// Every node listed in the set, with its key's value (none: its key expired).
    async fn members(&self) -> redis::RedisResult<Vec<(String, Option<String>)>> {
        let mut conn = self.commands.clone();
        let ids: Vec<String> = conn.smembers(&self.keys.nodes).await?.into_iter().collect();
        // MGET needs at least one key (the set is empty after Redis lost its data).
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.keys.node(id)).collect();
        let found: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        Ok(ids.into_iter().zip(found).collect())
    }

    /// Removes this node from Redis and tells the others.
    async fn leave(&self) -> redis::RedisResult<()> {
        let notice = Notice {
            node: self.id.clone(),
            entry: None,
        };
        redis::pipe()
            .atomic()
            .del(self.keys.presence(&self.id))
            .del(self.keys.node(&self.id))
            .srem(&self.keys.nodes, &self.id)
            .publish(
                &self.keys.channel,
                serde_json::to_string(&notice).expect("serialises"),
            )
            .exec_async(&mut self.commands.clone())
            .await
    }

    async fn alive(&self, id: &str) -> redis::RedisResult<bool> {
        self.commands.clone().exists(self.keys.node(id)).await
    }

    /// Everything a node's hash holds.
    async fn read_node(&self, id: &str) -> redis::RedisResult<Vec<Entry>> {
        let fields = self
            .commands
            .clone()
            .hgetall(self.keys.presence(id))
            .await?;
        Ok(fields
            .into_values()
            .filter_map(|json| serde_json::from_str(&json).ok())
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// The other nodes: mirror their presence.

async fn mirror_loop(
    shared: Arc<Shared>,
    mirror: Arc<Mutex<Mirror>>,
    hub: Arc<Hub>,
    mut alive: mpsc::Receiver<HashSet<String>>,
) {
    let mut pause = RETRY;
    loop {
        match shared.client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&shared.keys.channel).await {
                Ok(()) => {
                    pause = RETRY;
                    let mut messages = pubsub.into_on_message();
                    // Whatever was published while unsubscribed is lost: read every node again.
                    let mut known = HashSet::new();
                    loop {
                        tokio::select! {
                            msg = messages.next() => {
                                let Some(msg) = msg else { break };
                                let notice = msg
                                    .get_payload::<String>()
                                    .ok()
                                    .and_then(|p| serde_json::from_str::<Notice>(&p).ok());
                                match notice {
                                    Some(n) if n.node == shared.id => {}
                                    Some(Notice { node, entry: Some(e) }) => {
                                        let t = mirror.lock().set(&node, e);
                                        tell(&hub, t);
                                    }
                                    Some(Notice { node, entry: None }) => {
                                        refresh(&shared, &mirror, &hub, &node, true).await;
                                    }
                                    None => tracing::warn!("cluster presence: unreadable notice"),
                                }
                            }
                            Some(live) = alive.recv() => {
                                let mirrored = mirror.lock().nodes();
                                for gone in mirrored.difference(&live) {
                                    // `live` may predate a node that started since and whose
                                    // first change is already applied: confirm it is dead.
                                    if !shared.alive(gone).await.unwrap_or(true) {
                                        refresh(&shared, &mirror, &hub, gone, false).await;
                                        known.remove(gone);
                                    }
                                }
                                for new in live.difference(&known).cloned().collect::<Vec<_>>() {
                                    if refresh(&shared, &mirror, &hub, &new, true).await {
                                        known.insert(new);
                                    }
                                }
                            }
                        }
                    }
                    tracing::warn!("cluster presence: subscription lost; reconnecting");
                }
                Err(e) => tracing::warn!(error = %e, "cluster presence: cannot subscribe"),
            },
            Err(e) => tracing::warn!(error = %e, "cluster presence: cannot connect"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_RETRY);
    }
}

/// Replaces what the mirror holds of `node` by its hash (`read`) or by nothing (it is dead);
/// returns false when its hash could not be read.
async fn refresh(
    shared: &Shared,
    mirror: &Mutex<Mirror>,
    hub: &Hub,
    node: &str,
    read: bool,
) -> bool {
    let entries = if read {
        match shared.read_node(node).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error = %e, node, "cluster presence: cannot read a node");
                return false;
            }
        }
    } else {
        Vec::new()
    };
    let transitions = mirror.lock().replace(node, entries);
    for t in transitions {
        tell(hub, Some(t));
    }
    true
}

/// Tells the hub (outside the mirror's lock: the hub consults the mirror under its own).
fn tell(hub: &Hub, transition: Option<Transition>) {
    if let Some((room, member, present)) = transition {
        hub.remote_presence_changed(&room, &member, present);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(room: &str, key: &str, connections: usize) -> Entry {
        Entry {
            room: room.into(),
            member: Member::user(key),
            connections,
        }
    }

    fn changes(t: Vec<Transition>) -> Vec<(String, String, bool)> {
        let mut v: Vec<_> = t.into_iter().map(|(r, m, p)| (r, m.key, p)).collect();
        v.sort();
        v
    }

    #[test]
    fn a_member_arrives_with_its_first_node_and_departs_with_its_last() {
        let mut m = Mirror::default();
        assert!(m.set("a", entry("r", "alice", 1)).unwrap().2);
        assert!(m.set("b", entry("r", "alice", 2)).is_none());
        assert!(m.set("a", entry("r", "alice", 0)).is_none());
        assert!(!m.set("b", entry("r", "alice", 0)).unwrap().2);
        assert!(m.rooms.is_empty());
        assert!(m.set("b", entry("r", "nobody", 0)).is_none());
    }

    #[test]
    fn replacing_a_node_reports_only_what_changed() {
        let mut m = Mirror::default();
        m.set("a", entry("r", "alice", 1));
        m.set("a", entry("r", "bob", 1));
        m.set("b", entry("r", "bob", 1));
        let t = m.replace("a", vec![entry("r", "alice", 1), entry("s", "carol", 1)]);
        assert_eq!(changes(t), [("s".into(), "carol".into(), true)]);
        assert_eq!(m.nodes(), HashSet::from(["a".into(), "b".into()]));
        // A dead node: its members leave unless another node has them.
        let t = m.replace("a", Vec::new());
        assert_eq!(
            changes(t),
            [
                ("r".into(), "alice".into(), false),
                ("s".into(), "carol".into(), false)
            ]
        );
        assert_eq!(m.nodes(), HashSet::from(["b".into()]));
    }
}
