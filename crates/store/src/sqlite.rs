//! The embedded event store: SQLite in WAL mode. One writer thread owns the write connection
//! and commits each batch the log hands it in a single transaction (group commit); history
//! queries run on a small pool of read connections, concurrently with writes; a checkpointer
//! thread copies the WAL into the database file in the background.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use herald_core::event::{EncodedEvent, Event};
use herald_core::store::{EventStore, HistoryQuery, StoreError, StoreSummary};
use parking_lot::Mutex;
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, params_from_iter, types::Value as SqlValue,
};
use tokio::sync::oneshot;

use crate::history::{Arg, select_bodies};
use crate::ownership::{self, OpenError};
use crate::{parse_body, record_commit};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq     INTEGER PRIMARY KEY,
    type    TEXT NOT NULL,
    user_id TEXT,
    room_id TEXT,
    ts      INTEGER NOT NULL,
    body    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_type ON events(type, seq);
CREATE INDEX IF NOT EXISTS events_user ON events(user_id, seq) WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_room ON events(room_id, seq) WHERE room_id IS NOT NULL;
DROP INDEX IF EXISTS events_ts;
CREATE TABLE IF NOT EXISTS high_water (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    key     TEXT PRIMARY KEY,
    state   TEXT NOT NULL,
    expires INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS retained (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    from_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    key  TEXT PRIMARY KEY,
    seq  INTEGER NOT NULL,
    body TEXT NOT NULL
);
";

/// Raises `high_water` to `seq` (an SQL expression): the highest `seq` ever committed, kept
/// apart from `events` so that retention cannot make it go back. Written only when events are
/// deleted, not by every commit as `AUTOINCREMENT`'s `sqlite_sequence` would be.
fn raise_high_water(conn: &Connection, seq: &str) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "INSERT OR REPLACE INTO high_water (id, seq) VALUES (1, max(
             coalesce((SELECT seq FROM high_water WHERE id = 1), 0), coalesce(({seq}), 0)))"
    ))
}

/// Read connections kept open for history queries, and the most queries that run at once.
const READERS: usize = 4;
/// How often the checkpointer copies committed WAL frames into the database file. Each
/// checkpoint pays an `fsync` (about one per checkpoint, measured) whatever it copies; every 50 ms
/// cost ~10 % less CPU per message than every 10 ms at 1 000 msgs/s with the same p99 (1.2
/// against 1.4 ms, medians of interleaved runs); 250 ms had a worse tail, and a checkpoint
/// signalled by each commit landed inside fan-outs (docs/performance.md).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);
/// WAL pages after which a commit checkpoints by itself (SQLite's auto-checkpoint), in case the
/// checkpointer cannot keep up: bounds the WAL at ~40 MB.
const WAL_LIMIT_PAGES: u32 = 10_000;

enum Write {
    Append(
        Vec<Arc<EncodedEvent>>,
        oneshot::Sender<Result<(), StoreError>>,
    ),
    DeleteBefore(i64, oneshot::Sender<Result<u64, StoreError>>),
    SaveSession {
        key: String,
        state: String,
        expires: i64,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    SaveSnapshot {
        key: String,
        seq: i64,
        body: String,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// The embedded event store: one SQLite file in WAL mode, one writer thread, a few readers.
pub struct SqliteStore {
    path: PathBuf,
    /// The database file, locked while the store is open (`ownership`).
    lock: Mutex<Option<std::fs::File>>,
    writer: Mutex<Option<std_mpsc::Sender<Write>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpointer: Mutex<Option<(std_mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    readers: Mutex<Vec<Connection>>,
    /// One permit per read connection: queries beyond `READERS` wait here, as tasks, instead
    /// of each taking a thread of Tokio's blocking pool (up to 512) and opening a connection
    /// of its own. A query holds its permit until its thread is done, even if its caller has
    /// gone.
    reading: Arc<tokio::sync::Semaphore>,
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn closed() -> StoreError {
    StoreError::Unavailable("the event store is closed".into())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and starts the writer thread; refused
    /// while another store has it open, in this process or another (`ownership`).
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let lock = ownership::lock_sqlite(path)?;
        let conn = Connection::open(path).map_err(backend)?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA busy_timeout = 5000;
             PRAGMA wal_autocheckpoint = {WAL_LIMIT_PAGES};"
        ))
        .map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        // Stores created with `AUTOINCREMENT` kept the high-water mark in `sqlite_sequence`.
        let legacy: bool = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_sequence'",
                [],
                |r| r.get::<_, i64>(0).map(|n| n > 0),
            )
            .map_err(backend)?;
        if legacy {
            raise_high_water(
                &conn,
                "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
            )
            .map_err(backend)?;
        }
        let checkpointing = Connection::open(path).map_err(backend)?;
        let (tx, rx) = std_mpsc::channel();
        let committed = Arc::new(AtomicBool::new(false));
        let committing = committed.clone();
        let thread = std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || write_loop(conn, rx, &committing))
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let (stop, stopped) = std_mpsc::channel();
        let checkpointer = std::thread::Builder::new()
            .name("herald-sqlite-checkpointer".into())
            .spawn(move || checkpoint_loop(checkpointing, stopped, &committed))
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(Self {
            path: path.to_owned(),
            lock: Mutex::new(Some(lock)),
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(thread)),
            checkpointer: Mutex::new(Some((stop, checkpointer))),
            readers: Mutex::new(Vec::new()),
            reading: Arc::new(tokio::sync::Semaphore::new(READERS)),
        })
    }

    async fn write<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Write,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        {
            let writer = self.writer.lock();
            writer
                .as_ref()
                .ok_or_else(closed)?
                .send(make(tx))
                .map_err(|_| closed())?;
        }
        rx.await.map_err(|_| closed())?
    }

    /// Runs `f` on a pooled read connection in the blocking thread pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let permit = self.reading.clone().acquire_owned().await;
        let permit = permit.map_err(|_| closed())?;
        let pooled = self.readers.lock().pop();
        let path = self.path.clone();
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = match pooled {
                Some(c) => c,
                None => Connection::open_with_flags(
                    &path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?,
            };
            let result = f(&conn);
            Ok::<_, rusqlite::Error>((conn, result))
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
        .map_err(backend)?;
        let mut readers = self.readers.lock();
        if readers.len() < READERS {
            readers.push(conn);
        }
        result.map_err(backend)
    }
}

/// `committed` tells the checkpointer there is something to copy.
fn write_loop(mut conn: Connection, rx: std_mpsc::Receiver<Write>, committed: &AtomicBool) {
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Write::Append(batch, done) => {
                let started = std::time::Instant::now();
                let result = append(&mut conn, &batch).map_err(backend);
                record_commit(started, batch.len());
                let _ = done.send(result);
                committed.store(true, Ordering::Release);
            }
            Write::DeleteBefore(ts, done) => {
                let _ = done.send(delete_before(&mut conn, ts).map_err(backend));
            }
            Write::SaveSession {
                key,
                state,
                expires,
                done,
            } => {
                let saved = conn
                    .execute(
                        "INSERT OR REPLACE INTO sessions (key, state, expires) VALUES (?1, ?2, ?3)",
                        rusqlite::params![key, state, expires],
                    )
                    .and_then(|_| {
                        conn.execute(
                            "DELETE FROM sessions WHERE expires < ?1",
                            [Utc::now().timestamp_millis()],
                        )
                    });
                let _ = done.send(saved.map(drop).map_err(backend));
            }
            Write::SaveSnapshot {
                key,
                seq,
                body,
                done,
            } => {
                let saved = conn.execute(
                    "INSERT INTO snapshots (key, seq, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET seq = excluded.seq, body = excluded.body
                     WHERE excluded.seq > snapshots.seq",
                    rusqlite::params![key, seq, body],
                );
                let _ = done.send(saved.map(drop).map_err(backend));
            }
        }
    }
    // Fold the WAL back into the database so the next start opens a compact file.
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
}

/// Until the store closes: a passive checkpoint every `CHECKPOINT_EVERY` after commits, off
/// the commit path. Each copies the frames committed since the last one. Under a steady
/// stream of commits it never ends with every frame copied (new ones arrive while it copies),
/// so the WAL is not started over; but when the writer's own auto-checkpoint comes at
/// `WAL_LIMIT_PAGES`, almost nothing is left to copy, and that stall in the commit path stays
/// short (without the checkpointer: p99 31–38 ms at 1 000 msgs/s).
fn checkpoint_loop(conn: Connection, stop: std_mpsc::Receiver<()>, committed: &AtomicBool) {
    while let Err(std_mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        // An idle store is left alone.
        if !committed.swap(false, Ordering::AcqRel) {
            continue;
        }
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "SQLite checkpoint failed");
        }
    }
}

/// Keeps the document changes no snapshot covers yet (`EventStore::delete_before`): tested
/// only on the rows within the time bound.
const UNCOVERED: &str = "type IN ('document.change', 'yjs.update')
    AND seq > coalesce((SELECT seq FROM snapshots WHERE key = events.room_id), 0)";

/// Deletes the events stamped before `ts` (Unix milliseconds): every `seq` below the first
/// one stamped at or after it, but the uncovered document changes.
fn delete_before(conn: &mut Connection, ts: i64) -> rusqlite::Result<u64> {
    let tx = conn.transaction()?;
    raise_high_water(&tx, "SELECT max(seq) FROM events")?;
    let bound = match first_seq_stamped_from(&tx, ts)? {
        Some(seq) => seq,
        None => tx.query_row("SELECT coalesce(max(seq), 0) + 1 FROM events", [], |r| {
            r.get(0)
        })?,
    };
    // History is whole from `bound` on: where resume may start (`oldest_seq`), whatever
    // older document changes are kept.
    tx.execute(
        "INSERT INTO retained (id, from_seq) VALUES (1, ?1)
         ON CONFLICT (id) DO UPDATE SET from_seq = max(from_seq, excluded.from_seq)",
        [bound],
    )?;
    let deleted = tx.execute(
        &format!("DELETE FROM events WHERE seq < ?1 AND NOT ({UNCOVERED})"),
        [bound],
    )?;
    tx.commit()?;
    Ok(deleted as u64)
}

/// The lowest `seq` stamped at or after `ts` (Unix milliseconds), if any. Timestamps do not
/// decrease along `seq` (the log stamps each batch no earlier than the one before), so the
/// boundary is found by bisecting the table's `seq` order: some thirty point lookups instead
/// of an index on `ts`, which every commit would write one more WAL page for (measured: ~5 %
/// more server CPU per delivered message at 1 000 msgs/s, docs/performance.md).
fn first_seq_stamped_from(conn: &Connection, ts: i64) -> rusqlite::Result<Option<i64>> {
    let mut first_from =
        conn.prepare_cached("SELECT seq, ts FROM events WHERE seq >= ?1 ORDER BY seq LIMIT 1")?;
    let mut row_from = |seq: i64| {
        first_from
            .query_row([seq], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .optional()
    };
    let Some((oldest, oldest_ts)) = row_from(i64::MIN)? else {
        return Ok(None);
    };
    if oldest_ts >= ts {
        return Ok(Some(oldest));
    }
    let newest: i64 = conn.query_row("SELECT max(seq) FROM events", [], |r| r.get(0))?;
    // `before` is a row stamped before `ts`; every row from `from` on is stamped at or after.
    let (mut before, mut from) = (oldest, newest.saturating_add(1));
    while from - before > 1 {
        let mid = before + (from - before) / 2;
        match row_from(mid)? {
            Some((seq, stamped)) if seq < from && stamped < ts => before = seq,
            // The first row from `mid` is stamped at or after `ts`, or there is none before
            // `from`: either way every row from `mid` on is.
            _ => from = mid,
        }
    }
    Ok(row_from(from)?.map(|(seq, _)| seq))
}

fn append(conn: &mut Connection, batch: &[Arc<EncodedEvent>]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO events (seq, type, user_id, room_id, ts, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for e in batch {
            let ev = &e.event;
            let body = std::str::from_utf8(e.json()).expect("serde_json writes UTF-8");
            insert.execute((
                ev.seq as i64,
                &ev.kind,
                &ev.user_id,
                &ev.room_id,
                ev.timestamp.timestamp_millis(),
                body,
            ))?;
        }
    }
    tx.commit()
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(&self, batch: Vec<Arc<EncodedEvent>>) -> Result<(), StoreError> {
        self.write(|done| Write::Append(batch, done)).await
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT max(coalesce((SELECT seq FROM high_water WHERE id = 1), 0),
                            coalesce((SELECT max(seq) FROM events), 0))",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .await
        .map(|s| s as u64)
    }

    async fn query(&self, mut q: HistoryQuery) -> Result<Vec<Event>, StoreError> {
        let bodies = self
            .read(move |c| {
                // A time bound becomes a `seq` bound: events after `since_time` are those from
                // the first one stamped in the next millisecond.
                if let Some(since) = q.since_time.take() {
                    let Some(first) = first_seq_stamped_from(c, since.timestamp_millis() + 1)?
                    else {
                        return Ok(Vec::new());
                    };
                    let after = (first - 1).max(0) as u64;
                    q.after_seq = Some(q.after_seq.map_or(after, |a| a.max(after)));
                }
                let (sql, args) = select_bodies("events", &q, |_| "?".to_owned());
                let args = args.into_iter().map(|a| match a {
                    Arg::Text(t) => SqlValue::Text(t),
                    Arg::Int(i) => SqlValue::Integer(i),
                });
                let mut stmt = c.prepare_cached(&sql)?;
                let rows = stmt.query_map(params_from_iter(args), |r| r.get::<_, String>(0))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        bodies.iter().map(|b| parse_body(b)).collect()
    }

    async fn count_since(&self, since: DateTime<Utc>) -> Result<u64, StoreError> {
        let ts = since.timestamp_millis();
        self.read(move |c| match first_seq_stamped_from(c, ts)? {
            Some(seq) => c.query_row("SELECT count(*) FROM events WHERE seq >= ?1", [seq], |r| {
                r.get::<_, i64>(0)
            }),
            None => Ok(0),
        })
        .await
        .map(|n| n as u64)
    }

    async fn summary(&self) -> Result<StoreSummary, StoreError> {
        self.read(|c| {
            let (events, oldest, newest) = c.query_row(
                "SELECT count(*), min(seq), max(seq) FROM events",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?, r.get::<_, Option<i64>>(2)?)),
            )?;
            let mut stmt = c.prepare_cached(
                "SELECT DISTINCT type FROM (SELECT type FROM events ORDER BY seq DESC LIMIT 1000) ORDER BY type",
            )?;
            let recent_types = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
            Ok(StoreSummary {
                events: events as u64,
                oldest_seq: oldest.map(|s| s as u64),
                newest_seq: newest.map(|s| s as u64),
                recent_types,
            })
        })
        .await
    }

    async fn oldest_seq(&self) -> Result<Option<u64>, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT min(seq) FROM events
                 WHERE seq >= coalesce((SELECT from_seq FROM retained WHERE id = 1), 0)",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )
        })
        .await
        .map(|s| s.map(|s| s as u64))
    }

    async fn delete_before(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let ts = cutoff.timestamp_millis();
        self.write(|done| Write::DeleteBefore(ts, done)).await
    }

    async fn save_session(
        &self,
        key: &str,
        state: &str,
        expires: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (key, state) = (key.to_owned(), state.to_owned());
        let expires = expires.timestamp_millis();
        self.write(|done| Write::SaveSession {
            key,
            state,
            expires,
            done,
        })
        .await
    }

    async fn load_session(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_owned();
        self.read(move |c| {
            c.query_row(
                "SELECT state FROM sessions WHERE key = ?1 AND expires >= ?2",
                rusqlite::params![key, Utc::now().timestamp_millis()],
                |r| r.get::<_, String>(0),
            )
            .optional()
        })
        .await
    }

    async fn save_snapshot(
        &self,
        key: &str,
        seq: u64,
        body: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let (key, body) = (key.to_owned(), body.to_string());
        let seq = seq as i64;
        self.write(|done| Write::SaveSnapshot {
            key,
            seq,
            body,
            done,
        })
        .await
    }

    async fn load_snapshot(
        &self,
        key: &str,
    ) -> Result<Option<(u64, serde_json::Value)>, StoreError> {
        let key = key.to_owned();
        let row = self
            .read(move |c| {
                c.query_row(
                    "SELECT seq, body FROM snapshots WHERE key = ?1",
                    [key],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
                )
                .optional()
            })
            .await?;
        row.map(|(seq, body)| {
            serde_json::from_str(&body)
                .map(|b| (seq as u64, b))
                .map_err(|e| StoreError::Backend(format!("unreadable snapshot: {e}")))
        })
        .transpose()
    }

    async fn close(&self) -> Result<(), StoreError> {
        let checkpointer = self.checkpointer.lock().take();
        if let Some((stop, thread)) = checkpointer {
            drop(stop);
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|e| StoreError::Backend(e.to_string()))?
                .map_err(|_| StoreError::Backend("checkpointer thread panicked".into()))?;
        }
        self.writer.lock().take();
        let thread = self.writer_thread.lock().take();
        if let Some(t) = thread {
            tokio::task::spawn_blocking(move || t.join())
                .await
                .map_err(|e| StoreError::Backend(e.to_string()))?
                .map_err(|_| StoreError::Backend("writer thread panicked".into()))?;
        }
        self.readers.lock().clear();
        // Every connection is closed: another store may open the file now.
        self.lock.lock().take();
        Ok(())
    }
}
