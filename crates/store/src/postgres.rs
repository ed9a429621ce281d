//! The scaled-out event store: PostgreSQL through `tokio-postgres` and a `deadpool` pool.
//! Several Herald nodes may share one database. The schema is created and upgraded at start-up
//! by the migrations below.
//!
//! Each batch the log hands over is one statement — the rows arrive as arrays and are
//! `UNNEST`ed, and the same statement raises the `seq` high-water mark — so a group commit
//! costs one round trip and is atomic without an explicit transaction. The high-water row
//! exists because retention deletes rows: `last_seq` must still report the highest `seq` ever
//! committed, so that no `seq` is handed out twice. It is a row updated in the committing
//! statement rather than a PostgreSQL sequence because sequences are not transactional: a
//! batch that failed would still have advanced one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use herald_core::event::{EncodedEvent, Event};
use herald_core::store::{EventStore, HistoryQuery, StoreError, StoreSummary};
use tokio_postgres::NoTls;
use tokio_postgres::config::Host;
use tokio_postgres::types::{ToSql, Type};

use tokio::sync::watch;

use crate::history::{Arg, select_bodies};
use crate::ownership::{self, Claim, OpenError, Owner, Ownership};
use crate::{parse_body, record_commit};

/// The schema, one entry per version; applied in order, each at most once (`herald_migrations`
/// records which). Never edit a released entry: append a new one.
///
/// Text columns that history queries compare by range (`type` for `user.*`-style patterns,
/// `room_id` for personal rooms `user:{id}`) use the "C" collation: byte order, the order
/// SQLite uses, whatever the database's locale (a linguistic collation may sort '.' and '/'
/// differently, and `type >= 'user.' AND type < 'user/'` would then miss rows). `ts` is Unix
/// milliseconds, as in SQLite, so both stores compare times identically.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE herald_events (
    seq     BIGINT PRIMARY KEY,
    type    TEXT COLLATE \"C\" NOT NULL,
    user_id TEXT,
    room_id TEXT COLLATE \"C\",
    ts      BIGINT NOT NULL,
    body    TEXT NOT NULL
);
CREATE INDEX herald_events_type ON herald_events (type, seq);
CREATE INDEX herald_events_user ON herald_events (user_id, seq) WHERE user_id IS NOT NULL;
CREATE INDEX herald_events_room ON herald_events (room_id, seq) WHERE room_id IS NOT NULL;
CREATE INDEX herald_events_ts ON herald_events (ts);
CREATE TABLE herald_high_water (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    seq      BIGINT NOT NULL
);
INSERT INTO herald_high_water (seq) VALUES (0);
",
    "
CREATE TABLE herald_owner (
    only_row     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    redis_prefix TEXT,
    cluster_id   TEXT,
    epoch        BIGINT NOT NULL,
    claimed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((redis_prefix IS NULL) = (cluster_id IS NULL))
);
",
    "
CREATE TABLE herald_sessions (
    key     TEXT PRIMARY KEY,
    state   TEXT NOT NULL,
    expires BIGINT NOT NULL
);
",
    "
CREATE TABLE herald_snapshots (
    key  TEXT COLLATE \"C\" PRIMARY KEY,
    seq  BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE herald_retained (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    from_seq BIGINT NOT NULL
);
INSERT INTO herald_retained (from_seq) VALUES (0);
",
];

/// Serialises migrations between nodes starting at the same moment (an arbitrary constant:
/// "herald" in ASCII).
const MIGRATION_LOCK: i64 = 0x6865_7261_6c64;

/// `$7`, when not NULL, is the stand-alone node's epoch: the rows are inserted only while
/// `herald_owner` still records it (`ownership`), and the statement then updates nothing.
const APPEND: &str = "
WITH inserted AS (
    INSERT INTO herald_events (seq, type, user_id, room_id, ts, body)
    SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::TEXT[])
    WHERE $7::BIGINT IS NULL OR $7 = (SELECT epoch FROM herald_owner)
    RETURNING seq
)
UPDATE herald_high_water SET seq = GREATEST(seq, (SELECT max(seq) FROM inserted))
WHERE EXISTS (SELECT FROM inserted)";

/// Connections per node: history readers run beside the single writer.
const POOL_SIZE: usize = 16;
/// How long a connection attempt or a wait for a pooled connection may take before the store
/// reports itself unavailable (a publish then fails with 503 instead of hanging).
const TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL event store: every node of a cluster shares it; commits are batched.
pub struct PgStore {
    pool: Pool,
    /// With `open`: this node's hold on the database (`ownership`).
    ownership: tokio::sync::Mutex<Option<Ownership>>,
    /// The stand-alone node's epoch its commits check.
    epoch: Option<i64>,
    lost: Option<Arc<watch::Sender<Option<String>>>>,
}

/// Errors where the server could not be reached or is refusing work are `Unavailable`; the
/// rest (a statement the server rejected) are `Backend`.
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    let unavailable = match e.code().map(|c| c.code()) {
        // 08: connection exception; 53: insufficient resources; 57P: shutting down, starting.
        Some(c) => c.starts_with("08") || c.starts_with("53") || c.starts_with("57P"),
        // No SQL state: the server never answered (connection refused, lost, timed out).
        None => true,
    };
    if unavailable {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        e => StoreError::Unavailable(e.to_string()),
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`, or the key=value
    /// form), applies pending migrations and returns the store. It claims nothing: for tools
    /// and tests. A server opens its store with `open`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let config = parse_url(url)?;
        let store = Self::unclaimed(&config)?;
        store.migrate().await?;
        Ok(store)
    }

    /// Like `connect`, then claims the database for this node, or refuses when another owns
    /// it (`ownership`): a stand-alone node holds it alone while it runs, a cluster's nodes
    /// share it with the nodes of their cluster only.
    pub async fn open(url: &str, claim: Claim) -> Result<Self, OpenError> {
        let config = parse_url(url)?;
        let mut store = Self::unclaimed(&config)?;
        store.migrate().await?;
        let ownership = ownership::claim(&config, &display_url(url), claim).await?;
        store.epoch = ownership.epoch;
        store.lost = Some(ownership.lost.clone());
        store.ownership = tokio::sync::Mutex::new(Some(ownership));
        Ok(store)
    }

    /// Resolves, with the reason, when this node lost its claim on the database (another node
    /// took it over); never for a store from `connect`.
    pub fn lost(&self) -> impl Future<Output = String> + Send + 'static {
        let lost = self.lost.as_ref().map(|l| l.subscribe());
        async move {
            if let Some(mut lost) = lost
                && let Ok(reason) = lost.wait_for(Option::is_some).await
            {
                return reason.clone().unwrap_or_default();
            }
            std::future::pending().await
        }
    }

    fn unclaimed(config: &tokio_postgres::Config) -> Result<Self, StoreError> {
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(TIMEOUT))
            .create_timeout(Some(TIMEOUT))
            .build()
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(Self {
            pool,
            ownership: tokio::sync::Mutex::new(None),
            epoch: None,
            lost: None,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        // Taken before the table exists, so that concurrent `CREATE TABLE IF NOT EXISTS` do
        // not race; released at commit.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg_error)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS herald_migrations (
                version    INTEGER PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(pg_error)?;
        let applied: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM herald_migrations",
                &[],
            )
            .await
            .map_err(pg_error)?
            .get(0);
        for (version, sql) in (1..).zip(MIGRATIONS).skip(applied.max(0) as usize) {
            tx.batch_execute(sql).await.map_err(pg_error)?;
            tx.execute(
                "INSERT INTO herald_migrations (version) VALUES ($1)",
                &[&version],
            )
            .await
            .map_err(pg_error)?;
            tracing::info!(version, "applied PostgreSQL migration");
        }
        tx.commit().await.map_err(pg_error)
    }
}

fn parse_url(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(TIMEOUT);
    }
    config.application_name("herald");
    Ok(config)
}

/// Removes the ownership record of the database at `url`, so that another cluster or a
/// stand-alone node may use it; refused while any node runs on it. Returns the owner it
/// recorded, if any.
pub async fn release(url: &str) -> Result<Option<Owner>, OpenError> {
    let config = parse_url(url)?;
    let store = PgStore::unclaimed(&config)?;
    store.migrate().await?;
    store.pool.close();
    ownership::release(&config, &display_url(url)).await
}

/// `url` without its password, for logs and the start-up banner.
pub fn display_url(url: &str) -> String {
    let Ok(config) = url.parse::<tokio_postgres::Config>() else {
        return "postgres (unparsable URL)".into();
    };
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or_default(),
        config.get_dbname().unwrap_or_default()
    )
}

#[async_trait]
impl EventStore for PgStore {
    async fn append(&self, batch: Vec<Arc<EncodedEvent>>) -> Result<(), StoreError> {
        let started = Instant::now();
        let mut seqs = Vec::with_capacity(batch.len());
        let mut types = Vec::with_capacity(batch.len());
        let mut users = Vec::with_capacity(batch.len());
        let mut rooms = Vec::with_capacity(batch.len());
        let mut times = Vec::with_capacity(batch.len());
        let mut bodies = Vec::with_capacity(batch.len());
        for e in &batch {
            let ev = &e.event;
            seqs.push(ev.seq as i64);
            types.push(ev.kind.as_str());
            users.push(ev.user_id.as_deref());
            rooms.push(ev.room_id.as_deref());
            times.push(ev.timestamp.timestamp_millis());
            bodies.push(std::str::from_utf8(e.json()).expect("serde_json writes UTF-8"));
        }
        if batch.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        let statement = client.prepare_cached(APPEND).await.map_err(pg_error)?;
        let updated = client
            .execute(
                &statement,
                &[&seqs, &types, &users, &rooms, &times, &bodies, &self.epoch],
            )
            .await
            .map_err(pg_error)?;
        if updated == 0 {
            let reason = "this node no longer owns the PostgreSQL database: another node took \
                          it over";
            if let Some(lost) = &self.lost {
                lost.send_if_modified(|l| {
                    let first = l.is_none();
                    if first {
                        *l = Some(reason.into());
                    }
                    first
                });
            }
            return Err(StoreError::Unavailable(reason.into()));
        }
        record_commit(started, batch.len());
        Ok(())
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT seq FROM herald_high_water", &[])
            .await
            .map_err(pg_error)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn query(&self, q: HistoryQuery) -> Result<Vec<Event>, StoreError> {
        let (sql, args) = select_bodies("herald_events", &q, |n| format!("${n}"));
        let params: Vec<(&(dyn ToSql + Sync), Type)> = args
            .iter()
            .map(|a| match a {
                Arg::Text(t) => (t as &(dyn ToSql + Sync), Type::TEXT),
                Arg::Int(i) => (i as &(dyn ToSql + Sync), Type::INT8),
            })
            .collect();
        // Typed parameters: one round trip, and no prepared statement per query shape.
        let rows = self
            .client()
            .await?
            .query_typed(&sql, &params)
            .await
            .map_err(pg_error)?;
        rows.iter().map(|r| parse_body(r.get(0))).collect()
    }

    async fn count_since(&self, since: DateTime<Utc>) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM herald_events WHERE ts >= $1",
                &[&since.timestamp_millis()],
            )
            .await
            .map_err(pg_error)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn summary(&self) -> Result<StoreSummary, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(*), min(seq), max(seq) FROM herald_events",
                &[],
            )
            .await
            .map_err(pg_error)?;
        let types = client
            .query(
                "SELECT DISTINCT type FROM
                    (SELECT type FROM herald_events ORDER BY seq DESC LIMIT 1000) recent
                 ORDER BY type",
                &[],
            )
            .await
            .map_err(pg_error)?;
        Ok(StoreSummary {
            events: row.get::<_, i64>(0) as u64,
            oldest_seq: row.get::<_, Option<i64>>(1).map(|s| s as u64),
            newest_seq: row.get::<_, Option<i64>>(2).map(|s| s as u64),
            recent_types: types.iter().map(|r| r.get(0)).collect(),
        })
    }

    async fn oldest_seq(&self) -> Result<Option<u64>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT min(seq) FROM herald_events
                 WHERE seq >= (SELECT from_seq FROM herald_retained)",
                &[],
            )
            .await
            .map_err(pg_error)?;
        Ok(row.get::<_, Option<i64>>(0).map(|s| s as u64))
    }

    async fn delete_before(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let client = self.client().await?;
        // Keeps the document changes no snapshot covers yet; history is whole from past the
        // highest `seq` deleted on (`oldest_seq`), whatever older document changes are kept.
        let row = client
            .query_one(
                "WITH deleted AS (
                    DELETE FROM herald_events e WHERE ts < $1
                    AND NOT (type IN ('document.change', 'yjs.update')
                             AND seq > coalesce((SELECT s.seq FROM herald_snapshots s
                                                 WHERE s.key = e.room_id), 0))
                    RETURNING seq
                 ), raised AS (
                    UPDATE herald_retained
                    SET from_seq = GREATEST(from_seq, (SELECT max(seq) + 1 FROM deleted))
                 )
                 SELECT count(*) FROM deleted",
                &[&cutoff.timestamp_millis()],
            )
            .await
            .map_err(pg_error)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn save_session(
        &self,
        key: &str,
        state: &str,
        expires: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO herald_sessions (key, state, expires) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET state = EXCLUDED.state, expires = EXCLUDED.expires",
                &[&key, &state, &expires.timestamp_millis()],
            )
            .await
            .map_err(pg_error)?;
        client
            .execute(
                "DELETE FROM herald_sessions WHERE expires < $1",
                &[&Utc::now().timestamp_millis()],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    async fn load_session(&self, key: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT state FROM herald_sessions WHERE key = $1 AND expires >= $2",
                &[&key, &Utc::now().timestamp_millis()],
            )
            .await
            .map_err(pg_error)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn save_snapshot(
        &self,
        key: &str,
        seq: u64,
        body: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO herald_snapshots (key, seq, body) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET seq = EXCLUDED.seq, body = EXCLUDED.body
                 WHERE EXCLUDED.seq > herald_snapshots.seq",
                &[&key, &(seq as i64), &body.to_string()],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    async fn load_snapshot(
        &self,
        key: &str,
    ) -> Result<Option<(u64, serde_json::Value)>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT seq, body FROM herald_snapshots WHERE key = $1",
                &[&key],
            )
            .await
            .map_err(pg_error)?;
        row.map(|r| {
            serde_json::from_str(r.get::<_, &str>(1))
                .map(|b| (r.get::<_, i64>(0) as u64, b))
                .map_err(|e| StoreError::Backend(format!("unreadable snapshot: {e}")))
        })
        .transpose()
    }

    async fn close(&self) -> Result<(), StoreError> {
        // Every append has returned by now (the log shut down first); closing drops idle
        // connections and makes later calls fail as unavailable. Then the claim's session
        // ends, which releases the lock.
        self.pool.close();
        if let Some(mut ownership) = self.ownership.lock().await.take() {
            ownership.release().await;
        }
        Ok(())
    }
}
