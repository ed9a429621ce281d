//! The scaled-out log: several Herald nodes share one sequence through Redis (or Valkey) and
//! one PostgreSQL event store.
//!
//! A publish runs one Lua script that atomically assigns the global `seq` (`INCRBY`; a batch
//! gets consecutive ones) and appends each event to a bounded stream whose entry id is the
//! `seq` (`XADD MAXLEN ~`). Nothing is delivered yet: the events are not durable.
//!
//! One node at a time — the one holding the writer lock, a key with an expiry that it renews —
//! reads the stream in order and commits what it finds to the store in batches (group commit),
//! then appends the highest committed `seq` to a second stream of commit marks. One writer keeps
//! the store's commits in `seq` order, which the resume seam relies on (every event up to the
//! fan-out head is in the store); if each node committed its own publishes, a later `seq` could
//! commit before an earlier one. When the writer dies, its lock expires and another node takes
//! over from the store's `last_seq`.
//!
//! Every node reads both streams with one blocking `XREAD` — rather than Redis pub/sub, because
//! a stream keeps its order and can be re-read from a position after a reconnect — keeps the
//! events until a commit mark covers them, then fans them out to its own clients in `seq` order
//! and acknowledges its own publishers. An event that was committed but is missing from the
//! stream (trimmed, or Redis restarted) is read back from the store, so a node never skips one.
//!
//! While Redis is unreachable, publishes fail at once (503); one already sent waits at most
//! `COMMIT_TIMEOUT` for its commit mark, then fails too — it was not acknowledged, though the
//! writer may still commit it. A Redis that lost its data is re-seeded from the store's
//! `last_seq`, so `seq` never goes back.

#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use herald_core::event::{EncodedEvent, Event, NewEvent};
use herald_core::fanout::Fanout;
use herald_core::log::{Log, MAX_BATCH, PublishError};
use herald_core::store::{EventStore, HistoryQuery, Order, StoreError};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncConnectionConfig, AsyncTypedCommands, Client, Script};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub mod channels;
pub mod cluster;
pub mod identity;
mod signals;
#[cfg(feature = "test-support")]
pub mod testing;

/// Assigns the next `seq`s and appends the events (ARGV[2..]) under them, in order, as one
/// atomic step. Fails with `NOSEQ` when the counter is missing (a new or emptied Redis): the
/// caller seeds it from the store and retries.
const APPEND: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOSEQ sequence not initialised')
end
local n = #ARGV - 1
local first = redis.call('INCRBY', KEYS[1], n) - n
for i = 1, n do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], (first + i) .. '-0', 'e', ARGV[i + 1])
end
return first + n
";

/// Creates the counter, or raises it to at least the store's `last_seq` (never lowers it).
const SEED: &str = r"
local current = redis.call('GET', KEYS[1])
if not current or tonumber(current) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
";

/// Takes or renews a lock (the writer's, the channel consumer's); returns 1 when this node
/// holds it.
const LOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
";

/// Releases a lock if this node holds it.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Events kept in the stream: enough for the writer and every node to read them after a
/// pause; older ones are read from the store.
const STREAM_LEN: usize = 100_000;
/// Commit marks kept: a node (re)starting reads them all to learn the latest.
const COMMITS_LEN: usize = 1_000;
/// The writer lock's lifetime: how long commits stall when the writer dies.
const LOCK_TTL: Duration = Duration::from_secs(5);
/// How long a blocking read waits for entries before it renews the lock or retries.
const BLOCK: Duration = Duration::from_secs(1);
/// How long a publisher waits for its event to be committed and delivered.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connection attempts and non-blocking commands give up after this long.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The pause before retrying after Redis or the store failed, doubled on each further failure
/// up to `MAX_RETRY`.
const RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Where the log lives in Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key, so that several clusters can share one Redis.
    pub prefix: String,
}

struct Keys {
    seq: String,
    events: String,
    commits: String,
    writer: String,
}

/// A local publish waiting for its commit: the connection that must not receive it back, and
/// its publisher.
struct Pending {
    skip: Option<Uuid>,
    ack: oneshot::Sender<Arc<EncodedEvent>>,
}

struct Shared {
    client: Client,
    keys: Keys,
    commands: ConnectionManager,
    /// The append script, hashed once (`EVALSHA`, falling back to `EVAL` after a restart).
    append_script: Script,
    store: Arc<dyn EventStore>,
    fanout: Arc<dyn Fanout>,
    /// Local publishes by event id: registered before the script runs, so that the commit
    /// cannot overtake the registration.
    pending: Mutex<HashMap<Uuid, Pending>>,
    /// This node's value of the writer lock.
    node: String,
    closing: AtomicBool,
}

/// The log shared through Redis: every node publishes through one Lua script that assigns the
/// global `seq`; one node at a time (the writer) commits to the event store.
pub struct RedisLog {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

fn unavailable(e: redis::RedisError) -> PublishError {
    PublishError::Unavailable(format!("Redis: {e}"))
}

/// Takes or renews the lock `key` for `node` (it expires `LOCK_TTL` after the last renewal);
/// true when `node` holds it.
async fn hold_lock(
    commands: &ConnectionManager,
    key: &str,
    node: &str,
) -> redis::RedisResult<bool> {
    let held: i64 = Script::new(LOCK)
        .key(key)
        .arg(node)
        .arg(LOCK_TTL.as_millis() as u64)
        .invoke_async(&mut commands.clone())
        .await?;
    Ok(held == 1)
}

/// Releases the lock `key` if `node` holds it, so another node can take it at once.
async fn release_lock(commands: &ConnectionManager, key: &str, node: &str) {
    let _ = Script::new(UNLOCK)
        .key(key)
        .arg(node)
        .invoke_async::<i64>(&mut commands.clone())
        .await;
}

/// The client, and a shared connection for non-blocking commands that reconnects by itself.
async fn connect(config: &RedisConfig) -> Result<(Client, ConnectionManager), PublishError> {
    let client = Client::open(config.url.as_str()).map_err(unavailable)?;
    let commands = ConnectionManager::new_with_config(
        client.clone(),
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1),
    )
    .await
    .map_err(unavailable)?;
    Ok((client, commands))
}

impl RedisLog {
    /// Connects, makes sure the shared counter is past the store's `last_seq`, and starts this
    /// node's stream reader and writer candidate. `delivered` is the `seq` up to which this
    /// node's hub has seen events (the store's `last_seq` when the node started).
    pub async fn start(
        config: &RedisConfig,
        store: Arc<dyn EventStore>,
        fanout: Arc<dyn Fanout>,
        delivered: u64,
    ) -> Result<Self, PublishError> {
        let (client, commands) = connect(config).await?;
        let p = &config.prefix;
        let shared = Arc::new(Shared {
            client,
            keys: Keys {
                seq: format!("{p}:seq"),
                events: format!("{p}:events"),
                commits: format!("{p}:commits"),
                writer: format!("{p}:writer"),
            },
            commands,
            append_script: Script::new(APPEND),
            store,
            fanout,
            pending: Mutex::new(HashMap::new()),
            node: Uuid::new_v4().to_string(),
            closing: AtomicBool::new(false),
        });
        shared.seed().await?;
        let tasks = vec![
            tokio::spawn(read_loop(shared.clone(), delivered)),
            tokio::spawn(write_loop(shared.clone())),
        ];
        Ok(Self {
            shared,
            tasks: Mutex::new(tasks),
        })
    }
}

impl Shared {
    /// Raises the shared counter to the store's `last_seq`.
    async fn seed(&self) -> Result<u64, PublishError> {
        let last = self.store.last_seq().await?;
        Script::new(SEED)
            .key(&self.keys.seq)
            .arg(last)
            .invoke_async::<i64>(&mut self.commands.clone())
            .await
            .map_err(unavailable)?;
        Ok(last)
    }

    /// Runs the append script (which assigns the `seq`s; the reader learns them from the
    /// entries).
    async fn append(&self, jsons: &[String]) -> Result<(), PublishError> {
        let mut invocation = self.append_script.key(&self.keys.seq);
        invocation.key(&self.keys.events).arg(STREAM_LEN);
        for json in jsons {
            invocation.arg(json);
        }
        let mut conn = self.commands.clone();
        let result = match invocation.invoke_async::<u64>(&mut conn).await {
            Err(e) if e.code() == Some("NOSEQ") => {
                self.seed().await?;
                invocation.invoke_async::<u64>(&mut conn).await
            }
            r => r,
        };
        result.map(drop).map_err(unavailable)
    }

    /// A connection for one blocking reader (a blocking `XREAD` would hold up every other
    /// command on a shared connection).
    async fn blocking_connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        self.client
            .get_multiplexed_async_connection_with_config(
                &AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(TIMEOUT))
                    .set_response_timeout(Some(BLOCK + TIMEOUT)),
            )
            .await
    }
}

#[async_trait]
impl Log for RedisLog {
    async fn publish_all(
        &self,
        events: Vec<NewEvent>,
        skip: Option<Uuid>,
    ) -> Result<Vec<Arc<EncodedEvent>>, PublishError> {
        let shared = &self.shared;
        if shared.closing.load(Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        // The `seq`s are Redis's to assign; each stream entry's id carries its own.
        let now = Utc::now();
        let events: Vec<Event> = events.into_iter().map(|e| e.commit(0, now)).collect();
        let jsons: Vec<String> = events
            .iter()
            .map(|e| serde_json::to_string(e).expect("events serialise"))
            .collect();
        let mut commits = Vec::with_capacity(events.len());
        {
            let mut pending = shared.pending.lock();
            for event in &events {
                let (ack, committed) = oneshot::channel();
                pending.insert(event.id, Pending { skip, ack });
                commits.push(committed);
            }
        }
        let forget = || {
            let mut pending = shared.pending.lock();
            for event in &events {
                pending.remove(&event.id);
            }
        };
        if let Err(e) = shared.append(&jsons).await {
            forget();
            return Err(e);
        }
        let deadline = tokio::time::Instant::now() + COMMIT_TIMEOUT;
        let mut committed = Vec::with_capacity(commits.len());
        for commit in commits {
            match tokio::time::timeout_at(deadline, commit).await {
                Ok(Ok(event)) => committed.push(event),
                Ok(Err(_)) => return Err(PublishError::Closed),
                Err(_) => {
                    forget();
                    return Err(PublishError::Unavailable(format!(
                        "the events were not committed within {COMMIT_TIMEOUT:?}"
                    )));
                }
            }
        }
        Ok(committed)
    }

    async fn shutdown(&self) {
        let shared = &self.shared;
        shared.closing.store(true, Ordering::Release);
        // Accepted publishes are in Redis: wait (bounded) until they are committed and
        // acknowledged, as the embedded log does.
        let deadline = tokio::time::Instant::now() + COMMIT_TIMEOUT;
        while !shared.pending.lock().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        // Hand the writer role over at once rather than after the lock expires.
        release_lock(&shared.commands, &shared.keys.writer, &shared.node).await;
    }
}

/// The `seq` of a stream entry id (`{seq}-0`).
fn seq_of(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

/// The event of a stream entry, with its `seq`.
fn event_of(entry: &redis::streams::StreamId) -> Option<Event> {
    let seq = seq_of(&entry.id)?;
    let json: String = entry.get("e")?;
    let mut event: Event = serde_json::from_str(&json).ok()?;
    event.seq = seq;
    Some(event)
}

// ---------------------------------------------------------------------------------------------
// Every node: read events and commit marks, deliver what is committed.

struct Reader {
    shared: Arc<Shared>,
    /// The highest `seq` fanned out on this node.
    delivered: u64,
    /// The highest `seq` known to be committed.
    committed: u64,
    /// Events read from the stream and not yet delivered.
    buffer: BTreeMap<u64, Event>,
    /// Stream positions to read after.
    events_id: String,
    commits_id: String,
}

async fn read_loop(shared: Arc<Shared>, delivered: u64) {
    let mut reader = Reader {
        shared,
        delivered,
        committed: delivered,
        buffer: BTreeMap::new(),
        events_id: String::new(),
        commits_id: String::new(),
    };
    let mut pause = RETRY;
    loop {
        reader.restart();
        match reader.shared.blocking_connection().await {
            Ok(conn) => {
                pause = RETRY;
                if let Err(e) = reader.run(conn).await {
                    tracing::warn!(error = %e, "Redis log reader: reconnecting");
                }
            }
            Err(e) => tracing::warn!(error = %e, "Redis log reader: cannot connect"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_RETRY);
    }
}

impl Reader {
    /// After a (re)connect: the stream may have been lost or rewritten, so read it again from
    /// what was delivered, and every commit mark still kept.
    fn restart(&mut self) {
        self.buffer.clear();
        self.events_id = format!("{}-0", self.delivered);
        self.commits_id = "0".into();
    }

    async fn run(&mut self, mut conn: MultiplexedConnection) -> Result<(), String> {
        let options = StreamReadOptions::default()
            .block(BLOCK.as_millis() as usize)
            .count(MAX_BATCH);
        let keys = [
            self.shared.keys.events.clone(),
            self.shared.keys.commits.clone(),
        ];
        loop {
            let reply: Option<StreamReadReply> = conn
                .xread_options(&keys, &[&self.events_id, &self.commits_id], &options)
                .await
                .map_err(|e| e.to_string())?;
            for stream in reply.map(|r| r.keys).unwrap_or_default() {
                let is_events = stream.key == keys[0];
                for entry in &stream.ids {
                    if is_events {
                        // Bounded: an event left out is read from the store once committed.
                        if let Some(event) = event_of(entry)
                            && event.seq > self.delivered
                            && self.buffer.len() < STREAM_LEN
                        {
                            self.buffer.insert(event.seq, event);
                        }
                        self.events_id.clone_from(&entry.id);
                    } else {
                        let mark = entry.get::<u64>("s").unwrap_or(0);
                        self.committed = self.committed.max(mark);
                        self.commits_id.clone_from(&entry.id);
                    }
                }
            }
            self.deliver().await.map_err(|e| e.to_string())?;
        }
    }

    /// Fans out everything committed and not yet delivered, in `seq` order: from the buffer
    /// while it holds the next `seq`, else from the store.
    async fn deliver(&mut self) -> Result<(), StoreError> {
        while self.committed > self.delivered {
            let next = self.delivered + 1;
            let batch: Vec<Event> = if self.buffer.first_key_value().map(|(s, _)| *s) == Some(next)
            {
                let mut batch = Vec::new();
                let mut expected = next;
                while expected <= self.committed && batch.len() < MAX_BATCH {
                    match self.buffer.remove(&expected) {
                        Some(e) => batch.push(e),
                        None => break,
                    }
                    expected += 1;
                }
                batch
            } else {
                let batch = self
                    .shared
                    .store
                    .query(HistoryQuery {
                        after_seq: Some(self.delivered),
                        until_seq: Some(self.committed),
                        order: Order::OldestFirst,
                        limit: MAX_BATCH,
                        ..Default::default()
                    })
                    .await?;
                let upto = batch.last().map_or(self.committed, |e| e.seq);
                self.buffer.retain(|seq, _| *seq > upto);
                if batch.is_empty() {
                    // Assigned but never committed (lost with Redis before the writer read
                    // them): nothing to deliver below the mark.
                    self.delivered = self.committed;
                    continue;
                }
                batch
            };
            self.fan_out(batch);
        }
        Ok(())
    }

    fn fan_out(&mut self, batch: Vec<Event>) {
        let mut acks = Vec::new();
        let encoded: Vec<Arc<EncodedEvent>> = {
            let mut pending = self.shared.pending.lock();
            batch
                .into_iter()
                .map(|event| {
                    let mine = pending.remove(&event.id);
                    let encoded = EncodedEvent::skipping(event, mine.as_ref().and_then(|p| p.skip));
                    if let Some(p) = mine {
                        acks.push((p.ack, encoded.clone()));
                    }
                    encoded
                })
                .collect()
        };
        if let Some(last) = encoded.last() {
            self.delivered = last.event.seq;
        }
        self.shared.fanout.deliver(&encoded);
        for (ack, event) in acks {
            let _ = ack.send(event);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The writer: whichever node holds the lock commits the stream to the store.

async fn write_loop(shared: Arc<Shared>) {
    // The highest `seq` this node committed while it has held the lock; None when it does not
    // hold it (or lost track after an error): then it starts again from the store.
    let mut committed: Option<u64> = None;
    let mut conn: Option<MultiplexedConnection> = None;
    let mut pause = RETRY;
    loop {
        match write_step(&shared, &mut committed, &mut conn).await {
            Ok(()) => pause = RETRY,
            Err(e) => {
                tracing::warn!(error = %e, "Redis log writer: retrying");
                committed = None;
                conn = None;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY);
            }
        }
    }
}

async fn write_step(
    shared: &Shared,
    committed: &mut Option<u64>,
    conn: &mut Option<MultiplexedConnection>,
) -> Result<(), String> {
    let held = hold_lock(&shared.commands, &shared.keys.writer, &shared.node)
        .await
        .map_err(|e| e.to_string())?;
    if !held {
        *committed = None;
        tokio::time::sleep(BLOCK).await;
        return Ok(());
    }
    let from = match *committed {
        Some(c) => c,
        None => {
            // Newly the writer: the store says what is committed; the counter must be past
            // it, and every node must know it.
            let last = shared.seed().await.map_err(|e| e.to_string())?;
            mark_committed(shared, last).await?;
            *committed = Some(last);
            last
        }
    };
    if conn.is_none() {
        *conn = Some(
            shared
                .blocking_connection()
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let options = StreamReadOptions::default()
        .block(BLOCK.as_millis() as usize)
        .count(MAX_BATCH);
    let reply: Option<StreamReadReply> = conn
        .as_mut()
        .expect("connected above")
        .xread_options(&[&shared.keys.events], &[format!("{from}-0")], &options)
        .await
        .map_err(|e| e.to_string())?;
    let batch: Vec<Arc<EncodedEvent>> = reply
        .into_iter()
        .flat_map(|r| r.keys)
        .flat_map(|k| k.ids)
        .filter_map(|entry| event_of(&entry))
        .map(EncodedEvent::new)
        .collect();
    let Some(last) = batch.last().map(|e| e.event.seq) else {
        return Ok(());
    };
    if batch[0].event.seq != from + 1 {
        tracing::warn!(
            from = from + 1,
            to = batch[0].event.seq - 1,
            "Redis log writer: events missing from the stream were never committed"
        );
    }
    shared
        .store
        .append(batch)
        .await
        .map_err(|e| e.to_string())?;
    *committed = Some(last);
    mark_committed(shared, last).await
}

/// Tells every node that everything up to `seq` is in the store.
async fn mark_committed(shared: &Shared, seq: u64) -> Result<(), String> {
    redis::cmd("XADD")
        .arg(&shared.keys.commits)
        .arg("MAXLEN")
        .arg("~")
        .arg(COMMITS_LEN)
        .arg("*")
        .arg("s")
        .arg(seq)
        .exec_async(&mut shared.commands.clone())
        .await
        .map_err(|e| e.to_string())
}
