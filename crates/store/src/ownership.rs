//! Who may write to an event store. Two writers that do not share one log number events each on
//! their own: their `seq`s collide, and events one of them acknowledged go missing from history.
//! So a store knows who owns it, and a node that does not match refuses to start, with a message
//! that says why and what to change.
//!
//! - SQLite: the server holds an exclusive lock on the database file (`flock`, apart from
//!   SQLite's own byte-range locks, so the `sqlite3` shell can still read it) from opening to
//!   closing. The OS releases it when the process dies, `kill -9` included.
//! - PostgreSQL: the one-row table `herald_owner` records the owner — a stand-alone node, or the
//!   cluster with a `redis_prefix` and a cluster id — and every node holds an advisory lock on
//!   a connection of its own for as long as it runs: exclusive for a stand-alone node, shared
//!   for a cluster's nodes. The lock says who runs now; the record says whose the database is
//!   while nobody runs. A stand-alone node's claim lasts as long as its lock (a cluster may
//!   take over its database once it stopped); a cluster's stays until released deliberately
//!   (`release`), because a cluster whose nodes are all restarting still owns its database.
//!
//! The lock's key is derived from `herald_owner`'s OID, so schemas of one database (each with
//! its own tables) are owned apart. Each claim by a stand-alone node raises the record's
//! `epoch`, and that node's commits insert only while the record still holds its epoch: should
//! its lock connection drop unnoticed and another node take over, its next commit fails instead
//! of being acknowledged (the claim waits for commits in flight first). A background check
//! (every second, on the lock connection) notices a lost connection, takes the lock again, and
//! reports a takeover, on which the server stops.
//!
//! A cluster's id is kept in the shared log too (Redis: `{prefix}:cluster`, see `ClusterIds`),
//! so that nodes pointing at one database but at different Redis servers with the same prefix
//! are told apart (below, `check_cluster_id`).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::store::StoreError;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use crate::postgres::pg_error;

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another node owns the store: the message names it and says what to change.
    #[error("{0}")]
    Refused(String),
    /// The store could not be read or written while checking.
    #[error(transparent)]
    Store(#[from] StoreError),
}

// ---------------------------------------------------------------------------------------------
// SQLite

/// Takes the exclusive lock on the database file at `path` (creating the file when missing: an
/// empty file is an empty database to SQLite), held as long as the returned file is open.
pub(crate) fn lock_sqlite(path: &Path) -> Result<File, OpenError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| {
            StoreError::Backend(format!("cannot open the database {}: {e}", path.display()))
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::Refused(format!(
            "another Herald server is using the SQLite database {} (it holds the file's lock). \
             Two servers on one file would number events each on its own, and events one of \
             them acknowledged would go missing from history. Stop the other server, or give \
             this one a file of its own (--database PATH); to run several nodes on one \
             history, use PostgreSQL and Redis (--postgres, --redis).",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Backend(format!(
            "cannot lock the database {}: {e}",
            path.display()
        ))
        .into()),
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: what a node claims, and where a cluster's id is kept beside its shared log.

/// What a node starting on a PostgreSQL database claims.
pub enum Claim {
    /// One node without a shared log: the database is its alone while it runs.
    Standalone,
    /// A node of the cluster whose shared log lives under `prefix`.
    Cluster {
        /// The cluster's Redis key prefix (`redis_prefix`).
        prefix: String,
        /// Reads the cluster's id and its live nodes.
        ids: Arc<dyn ClusterIds>,
    },
}

/// Where a cluster's shared log keeps the cluster's id (Redis: `{prefix}:cluster`). A database
/// records the id of the cluster that owns it; a node whose shared log records another one, or
/// none while nodes of the owner run, uses another shared log than they do.
#[async_trait]
pub trait ClusterIds: Send + Sync {
    /// The shared log, for messages ("the Redis at redis://cache:6379").
    fn describe(&self) -> String;
    /// The id the shared log records, if any.
    async fn get(&self) -> Result<Option<String>, String>;
    /// Records `id`, replacing any other.
    async fn set(&self, id: &str) -> Result<(), String>;
    /// Records `id` unless the shared log records one already; returns the one it records now.
    async fn set_if_absent(&self, id: &str) -> Result<String, String>;
    /// How many nodes are alive in the shared log (heartbeats), whatever their database.
    async fn live_nodes(&self) -> Result<usize, String>;
}

/// The owner `herald_owner` records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The cluster's `redis_prefix` and id; None for a stand-alone node.
    pub cluster: Option<(String, String)>,
    /// Raised by every claim that changes hands (and by each start of a stand-alone node).
    pub epoch: i64,
    /// When it was claimed (UTC, for messages).
    pub claimed_at: String,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cluster {
            Some((prefix, id)) => write!(
                f,
                "the Herald cluster with redis_prefix \"{prefix}\" (cluster id {id}, since {})",
                self.claimed_at
            ),
            None => write!(f, "a stand-alone Herald node (since {})", self.claimed_at),
        }
    }
}

/// The lock key's high half ("Hera"); the low half is `herald_owner`'s OID.
const KEY_HIGH: i64 = 0x4865_7261;
/// How long a start-up keeps trying to take the lock before it refuses: a node killed a moment
/// ago may still hold it until its PostgreSQL session notices the closed socket.
const LOCK_PATIENCE: Duration = Duration::from_secs(2);
/// How long a starting cluster node waits for the running ones to restore the cluster's id in
/// a shared log that lost it (they check every `CHECK_EVERY`).
const ID_PATIENCE: Duration = Duration::from_secs(3);
/// How often a running node checks its lock connection and the ownership record.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// A check that takes longer counts as a lost connection.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a claim waits for the table locks it needs (commits in flight, other claims).
const CLAIM_LOCK_TIMEOUT: &str = "10s";

const READ_OWNER: &str = "SELECT redis_prefix, cluster_id, epoch,
        to_char(claimed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS \"UTC\"')
    FROM herald_owner";

/// The lock holders other than this session: `(pid, exclusive, client address)`.
const HOLDERS: &str = "SELECT l.pid, l.mode = 'ExclusiveLock', host(a.client_addr)
    FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory'
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 1
      AND l.granted AND l.pid <> pg_backend_pid()
    ORDER BY l.pid";

/// A connection of its own, on which a node holds its lock.
struct Session {
    client: Client,
    connection: JoinHandle<()>,
}

impl Session {
    async fn open(config: &tokio_postgres::Config) -> Result<Self, StoreError> {
        let (client, connection) = config.connect(NoTls).await.map_err(pg_error)?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        // The server notices a node that vanished without closing its socket (its machine
        // down, the network cut) within about 25 s and drops the lock, instead of after the
        // system's TCP timeout (hours).
        client
            .batch_execute(
                "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5;
                 SET tcp_keepalives_count = 3",
            )
            .await
            .map_err(pg_error)?;
        Ok(Self { client, connection })
    }

    /// Ends the session, which releases its lock.
    async fn close(self) {
        drop(self.client);
        let _ = self.connection.await;
    }

    async fn lock_key(&self) -> Result<LockKey, StoreError> {
        let oid: i64 = self
            .client
            .query_one("SELECT 'herald_owner'::regclass::oid::bigint", &[])
            .await
            .map_err(pg_error)?
            .get(0);
        Ok(LockKey { low: oid })
    }

    async fn try_lock(&self, key: LockKey, exclusive: bool) -> Result<bool, StoreError> {
        let sql = if exclusive {
            "SELECT pg_try_advisory_lock($1)"
        } else {
            "SELECT pg_try_advisory_lock_shared($1)"
        };
        Ok(self
            .client
            .query_one(sql, &[&key.value()])
            .await
            .map_err(pg_error)?
            .get(0))
    }

    /// Takes the lock, trying for `LOCK_PATIENCE`.
    async fn lock(&self, key: LockKey, exclusive: bool) -> Result<bool, StoreError> {
        let deadline = tokio::time::Instant::now() + LOCK_PATIENCE;
        loop {
            if self.try_lock(key, exclusive).await? {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn holders(&self, key: LockKey) -> Result<Vec<Holder>, StoreError> {
        let rows = self
            .client
            .query(HOLDERS, &[&KEY_HIGH, &key.low])
            .await
            .map_err(pg_error)?;
        Ok(rows
            .iter()
            .map(|r| Holder {
                pid: r.get(0),
                exclusive: r.get(1),
                client: r.get(2),
            })
            .collect())
    }

    async fn owner(&self) -> Result<Option<Owner>, StoreError> {
        read_owner(&self.client).await
    }
}

async fn read_owner(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Option<Owner>, StoreError> {
    let row = client.query_opt(READ_OWNER, &[]).await.map_err(pg_error)?;
    Ok(row.map(|r| Owner {
        cluster: match (r.get::<_, Option<String>>(0), r.get::<_, Option<String>>(1)) {
            (Some(prefix), Some(id)) => Some((prefix, id)),
            _ => None,
        },
        epoch: r.get(2),
        claimed_at: r.get(3),
    }))
}

#[derive(Clone, Copy)]
struct LockKey {
    low: i64,
}

impl LockKey {
    fn value(self) -> i64 {
        (KEY_HIGH << 32) | self.low
    }
}

/// A PostgreSQL session holding the lock.
struct Holder {
    pid: i32,
    exclusive: bool,
    client: Option<String>,
}

impl Holder {
    fn describe(&self) -> String {
        match &self.client {
            Some(addr) => format!("PostgreSQL backend pid {}, client {addr}", self.pid),
            None => format!("PostgreSQL backend pid {}", self.pid),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The messages

/// The end of every message about a cluster that owns the database and is not this node's.
fn release_hint() -> &'static str {
    "if that cluster is gone for good, release the database with `herald release-store` (given \
     this node's --postgres) and start again"
}

fn standalone_running(db: &str, holder: &Holder, as_cluster: bool) -> String {
    let (who, fix) = if as_cluster {
        (
            "a cluster node cannot share it with a stand-alone node, which numbers events on its \
             own",
            "Stop that node first: its database then becomes the cluster's, history and seq \
             included",
        )
    } else {
        (
            "two stand-alone nodes on one database would number events each on its own, and \
             events one of them acknowledged would go missing from history",
            "Stop that node first, give this one a database of its own, or run both as one \
             cluster (--redis, with the same --redis-prefix)",
        )
    };
    format!(
        "a stand-alone Herald node is running on the PostgreSQL database {db} ({}): {who}. \
         {fix}. If that node is gone and its session lingers, end it with \
         `SELECT pg_terminate_backend({})`.",
        holder.describe(),
        holder.pid
    )
}

fn cluster_owns(db: &str, owner: Option<&Owner>, running: usize) -> String {
    let (whose, prefix) = match owner.and_then(|o| o.cluster.as_ref().map(|c| (o, &c.0))) {
        Some((o, prefix)) => (o.to_string(), prefix.as_str()),
        None => ("a Herald cluster".to_owned(), "PREFIX"),
    };
    let now = match running {
        0 => String::new(),
        1 => ", 1 node running now".to_owned(),
        n => format!(", {n} nodes running now"),
    };
    format!(
        "the PostgreSQL database {db} belongs to {whose}{now}: a stand-alone node would number \
         events on its own beside the cluster's. Join the cluster (--redis URL --redis-prefix \
         {prefix}), or use another database; {}.",
        release_hint()
    )
}

fn other_prefix(db: &str, owner: &Owner, prefix: &str) -> String {
    let theirs = owner.cluster.as_ref().map_or("", |c| c.0.as_str());
    format!(
        "the PostgreSQL database {db} belongs to {owner}, not to redis_prefix \"{prefix}\": two \
         clusters on one database would number events each on its own, and events one of them \
         acknowledged would go missing from history. Start this node with --redis-prefix \
         {theirs} to join that cluster (and the same Redis), or give the cluster \"{prefix}\" \
         a database of its own; {}.",
        release_hint()
    )
}

// ---------------------------------------------------------------------------------------------
// Claiming

/// A node's hold on a PostgreSQL database, for as long as the store is open.
pub(crate) struct Ownership {
    /// A stand-alone node's epoch, which its commits check; None for a cluster's nodes.
    pub(crate) epoch: Option<i64>,
    /// Set, with the reason, when the node lost the database.
    pub(crate) lost: Arc<watch::Sender<Option<String>>>,
    stop: Option<oneshot::Sender<()>>,
    guard: Option<JoinHandle<Option<Session>>>,
}

impl Ownership {
    /// Stops checking and ends the lock's session.
    pub(crate) async fn release(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(guard) = self.guard.take()
            && let Ok(Some(session)) = guard.await
        {
            session.close().await;
        }
    }
}

impl Drop for Ownership {
    /// A store dropped without being closed: the check stops, and its session ends with it.
    fn drop(&mut self) {
        if let Some(guard) = &self.guard {
            guard.abort();
        }
    }
}

/// What the running node holds: what its check compares the record with.
enum Held {
    Standalone {
        epoch: i64,
    },
    Cluster {
        prefix: String,
        id: String,
        ids: Arc<dyn ClusterIds>,
    },
}

/// Claims the database (already migrated) for `claim`, or refuses. `db` names it in messages.
pub(crate) async fn claim(
    config: &tokio_postgres::Config,
    db: &str,
    claim: Claim,
) -> Result<Ownership, OpenError> {
    let mut session = Session::open(config).await?;
    let key = session.lock_key().await?;
    let exclusive = matches!(claim, Claim::Standalone);
    let mut locked = session.lock(key, exclusive).await?;
    let mut holders = Vec::new();
    if !locked {
        holders = session.holders(key).await?;
        // Released between the two: try once more.
        if holders.is_empty() {
            locked = session.try_lock(key, exclusive).await?;
        }
    }
    if !locked {
        let message = match holders.iter().find(|h| h.exclusive) {
            Some(h) => standalone_running(db, h, !exclusive),
            None => cluster_owns(db, session.owner().await?.as_ref(), holders.len()),
        };
        session.close().await;
        return Err(OpenError::Refused(message));
    }
    let held = match claim_record(&mut session, key, db, claim).await {
        Ok(held) => held,
        Err(e) => {
            session.close().await;
            return Err(e);
        }
    };
    let (lost, _) = watch::channel(None);
    let lost = Arc::new(lost);
    let (stop, stopped) = oneshot::channel();
    let epoch = match &held {
        Held::Standalone { epoch } => Some(*epoch),
        Held::Cluster { .. } => None,
    };
    let guard = tokio::spawn(guard(
        config.clone(),
        key,
        held,
        session,
        lost.clone(),
        stopped,
    ));
    Ok(Ownership {
        epoch,
        lost,
        stop: Some(stop),
        guard: Some(guard),
    })
}

/// Reads and writes `herald_owner` in one transaction, claims serialised by a lock on the
/// table.
async fn claim_record(
    session: &mut Session,
    key: LockKey,
    db: &str,
    claim: Claim,
) -> Result<Held, OpenError> {
    let others = session.holders(key).await?.len();
    let tx = session.client.transaction().await.map_err(pg_error)?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{CLAIM_LOCK_TIMEOUT}';
         LOCK TABLE herald_owner IN EXCLUSIVE MODE"
    ))
    .await
    .map_err(pg_error)?;
    let owner = read_owner(&tx).await?;
    // A claim that changes the epoch first waits for the commits in flight (they hold
    // herald_events in ROW EXCLUSIVE mode); later ones see the new epoch.
    let fence = "LOCK TABLE herald_events IN SHARE MODE";
    let held = match (claim, owner) {
        (Claim::Standalone, Some(owner)) if owner.cluster.is_some() => {
            return Err(OpenError::Refused(cluster_owns(db, Some(&owner), 0)));
        }
        (Claim::Standalone, owner) => {
            tx.batch_execute(fence).await.map_err(pg_error)?;
            let epoch = owner.map_or(1, |o| o.epoch + 1);
            tx.execute(
                "INSERT INTO herald_owner (redis_prefix, cluster_id, epoch) VALUES (NULL, NULL, $1)
                 ON CONFLICT (only_row) DO UPDATE SET redis_prefix = NULL, cluster_id = NULL,
                     epoch = EXCLUDED.epoch, claimed_at = now()",
                &[&epoch],
            )
            .await
            .map_err(pg_error)?;
            Held::Standalone { epoch }
        }
        (Claim::Cluster { prefix, ids }, Some(owner)) if owner.cluster.is_some() => {
            let (theirs, id) = owner.cluster.clone().expect("matched");
            if theirs != prefix {
                return Err(OpenError::Refused(other_prefix(db, &owner, &prefix)));
            }
            match check_cluster_id(db, &owner, &*ids, others).await? {
                IdCheck::Same => Held::Cluster { prefix, id, ids },
                IdCheck::Lost => {
                    // The shared log lost the id and no node of the cluster runs: a new id,
                    // so that a shared log still holding the old one (another Redis) is told
                    // apart from now on.
                    tx.batch_execute(fence).await.map_err(pg_error)?;
                    let id = new_cluster_id(&tx).await?;
                    tx.execute(
                        "UPDATE herald_owner SET cluster_id = $1, epoch = epoch + 1",
                        &[&id],
                    )
                    .await
                    .map_err(pg_error)?;
                    record_cluster_id(db, &*ids, &prefix, &id).await?;
                    tracing::info!(prefix, id, "recorded a new cluster id in the shared log");
                    Held::Cluster { prefix, id, ids }
                }
            }
        }
        (Claim::Cluster { prefix, ids }, owner) => {
            // A new database, or a stand-alone node's (stopped: this node holds the shared
            // lock) becoming the cluster's. The prefix must not be a running cluster's that
            // keeps its events elsewhere.
            if ids.get().await.map_err(log_unavailable)?.is_some() {
                let live = ids.live_nodes().await.map_err(log_unavailable)?;
                if live > 0 {
                    return Err(OpenError::Refused(format!(
                        "redis_prefix \"{prefix}\" on {} is in use by a running Herald cluster \
                         ({live} node(s)) whose database is not the PostgreSQL database {db}: \
                         the nodes of a cluster must share one database, or the events each \
                         commits would be missing from the others' history. Give this node the \
                         cluster's --postgres, or give this cluster another --redis-prefix.",
                        ids.describe()
                    )));
                }
            }
            tx.batch_execute(fence).await.map_err(pg_error)?;
            let id = new_cluster_id(&tx).await?;
            let epoch = owner.as_ref().map_or(1, |o| o.epoch + 1);
            tx.execute(
                "INSERT INTO herald_owner (redis_prefix, cluster_id, epoch) VALUES ($1, $2, $3)
                 ON CONFLICT (only_row) DO UPDATE SET redis_prefix = EXCLUDED.redis_prefix,
                     cluster_id = EXCLUDED.cluster_id, epoch = EXCLUDED.epoch,
                     claimed_at = now()",
                &[&prefix, &id, &epoch],
            )
            .await
            .map_err(pg_error)?;
            ids.set(&id).await.map_err(log_unavailable)?;
            match owner {
                Some(_) => tracing::warn!(
                    prefix,
                    "the database was a stand-alone node's: it is this cluster's from now on"
                ),
                None => tracing::info!(prefix, "the database is this cluster's from now on"),
            }
            Held::Cluster { prefix, id, ids }
        }
    };
    tx.commit().await.map_err(pg_error)?;
    Ok(held)
}

fn log_unavailable(e: String) -> OpenError {
    OpenError::Store(StoreError::Unavailable(format!("the shared log: {e}")))
}

async fn new_cluster_id(tx: &tokio_postgres::Transaction<'_>) -> Result<String, StoreError> {
    Ok(tx
        .query_one("SELECT gen_random_uuid()::text", &[])
        .await
        .map_err(pg_error)?
        .get(0))
}

async fn record_cluster_id(
    db: &str,
    ids: &dyn ClusterIds,
    prefix: &str,
    id: &str,
) -> Result<(), OpenError> {
    let held = ids.set_if_absent(id).await.map_err(log_unavailable)?;
    if held == id {
        Ok(())
    } else {
        Err(OpenError::Refused(other_log(db, ids, prefix, id, &held)))
    }
}

fn other_log(db: &str, ids: &dyn ClusterIds, prefix: &str, ours: &str, theirs: &str) -> String {
    format!(
        "{} records another Herald cluster under redis_prefix \"{prefix}\" (cluster id \
         {theirs}) than the one that owns the PostgreSQL database {db} (cluster id {ours}): \
         the nodes of one cluster must share one Redis and one database, or the events each \
         commits would be missing from the others' history. Check --redis and --postgres; \
         two clusters that share a Redis need different --redis-prefix values.",
        ids.describe()
    )
}

enum IdCheck {
    /// The shared log records the database's cluster id.
    Same,
    /// It records none, and no node of the cluster runs.
    Lost,
}

/// A cluster node joining the cluster that owns the database: its shared log must record that
/// cluster's id. `others` is how many other nodes hold the lock.
async fn check_cluster_id(
    db: &str,
    owner: &Owner,
    ids: &dyn ClusterIds,
    others: usize,
) -> Result<IdCheck, OpenError> {
    let (prefix, id) = owner.cluster.as_ref().expect("a cluster's record");
    let deadline = tokio::time::Instant::now() + ID_PATIENCE;
    loop {
        match ids.get().await.map_err(log_unavailable)? {
            Some(held) if held == *id => return Ok(IdCheck::Same),
            Some(held) => {
                return Err(OpenError::Refused(other_log(db, ids, prefix, id, &held)));
            }
            None if others == 0 => return Ok(IdCheck::Lost),
            // Nodes of the cluster run: if their shared log is this one and lost its data,
            // they write the id again within a second.
            None if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None => {
                return Err(OpenError::Refused(format!(
                    "{others} node(s) of {owner}, which owns the PostgreSQL database {db}, are \
                     running, but {} has no record of that cluster: they use another Redis. \
                     The nodes of one cluster must share one Redis, or the events each commits \
                     would be missing from the others' history: check --redis.",
                    ids.describe()
                )));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// While the node runs

/// Every `CHECK_EVERY`: the lock's session is alive and the record still names this node's
/// claim; a cluster's id is (again) in its shared log. A lost session is opened again and the
/// lock taken again; a record that changed hands stops the check and reports it in `lost`.
/// Returns the session when stopped.
async fn guard(
    config: tokio_postgres::Config,
    key: LockKey,
    held: Held,
    session: Session,
    lost: Arc<watch::Sender<Option<String>>>,
    mut stopped: oneshot::Receiver<()>,
) -> Option<Session> {
    let exclusive = matches!(held, Held::Standalone { .. });
    let mut session = Some(session);
    let mut locked = true;
    // Said once per outage, not every second.
    let mut warned = false;
    loop {
        tokio::select! {
            _ = &mut stopped => return session,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        if session.as_ref().is_some_and(|s| s.connection.is_finished()) {
            session = None;
        }
        if session.is_none() {
            locked = false;
            match tokio::time::timeout(CHECK_TIMEOUT, Session::open(&config)).await {
                Ok(Ok(s)) => session = Some(s),
                Ok(Err(e)) => {
                    warn_once(&mut warned, &format!("cannot reconnect to PostgreSQL: {e}"));
                    continue;
                }
                Err(_) => {
                    warn_once(&mut warned, "reconnecting to PostgreSQL timed out");
                    continue;
                }
            }
        }
        let s = session.as_ref().expect("opened above");
        let checked = tokio::time::timeout(CHECK_TIMEOUT, async {
            if !locked {
                locked = s.try_lock(key, exclusive).await?;
                if locked {
                    tracing::info!("ownership: holding the database's lock again");
                }
            }
            s.owner().await
        })
        .await;
        let owner = match checked {
            Ok(Ok(owner)) => owner,
            Ok(Err(e)) => {
                warn_once(
                    &mut warned,
                    &format!("lost the lock's connection ({e}); reconnecting"),
                );
                session = None;
                continue;
            }
            Err(_) => {
                warn_once(
                    &mut warned,
                    "the lock's connection stopped answering; reconnecting",
                );
                session = None;
                continue;
            }
        };
        if let Some(reason) = changed_hands(&held, owner.as_ref()) {
            lost.send_replace(Some(reason));
            return session;
        }
        if locked {
            warned = false;
        } else {
            warn_once(
                &mut warned,
                "another session holds the database's lock; this node's commits stay fenced by \
                 the ownership record",
            );
        }
        if let Held::Cluster { prefix, id, ids } = &held {
            match ids.set_if_absent(id).await {
                Ok(recorded) if recorded == *id => {}
                Ok(recorded) => {
                    lost.send_replace(Some(format!(
                        "{} now records another cluster under redis_prefix \"{prefix}\" \
                         (cluster id {recorded}, this node's is {id})",
                        ids.describe()
                    )));
                    return session;
                }
                // The log reports its own outages.
                Err(e) => tracing::debug!(error = %e, "ownership: the shared log is unavailable"),
            }
        }
    }
}

/// Logs `message` as a warning the first time since `warned` was cleared, then at debug level.
fn warn_once(warned: &mut bool, message: &str) {
    if std::mem::replace(warned, true) {
        tracing::debug!("ownership: {message}");
    } else {
        tracing::warn!("ownership: {message}");
    }
}

/// Why the record no longer names what the node holds, if it does not.
fn changed_hands(held: &Held, owner: Option<&Owner>) -> Option<String> {
    let Some(owner) = owner else {
        return Some("the database's ownership record was removed".into());
    };
    let same = match (held, &owner.cluster) {
        (Held::Standalone { epoch }, None) => owner.epoch == *epoch,
        (Held::Cluster { prefix, id, .. }, Some((p, i))) => p == prefix && i == id,
        _ => false,
    };
    (!same).then(|| format!("the database now belongs to {owner}"))
}

// ---------------------------------------------------------------------------------------------
// Releasing

/// Removes the ownership record of the (migrated) database, so that another cluster, or a
/// stand-alone node, may claim it; refused while any node runs on it. Returns the record
/// removed, if there was one.
pub(crate) async fn release(
    config: &tokio_postgres::Config,
    db: &str,
) -> Result<Option<Owner>, OpenError> {
    let session = Session::open(config).await?;
    let key = session.lock_key().await?;
    if !session.try_lock(key, true).await? {
        let holders = session.holders(key).await?;
        let owner = session.owner().await?;
        session.close().await;
        let who: Vec<String> = holders.iter().map(Holder::describe).collect();
        return Err(OpenError::Refused(format!(
            "Herald nodes are running on the PostgreSQL database {db} ({}; {}): stop them \
             before releasing it.",
            owner.map_or_else(|| "no ownership record".to_owned(), |o| o.to_string()),
            who.join("; ")
        )));
    }
    let removed = read_owner(&session.client).await;
    let deleted = session
        .client
        .execute("DELETE FROM herald_owner", &[])
        .await
        .map_err(pg_error);
    session.close().await;
    deleted?;
    Ok(removed?)
}
