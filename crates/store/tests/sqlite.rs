//! The SQLite store against real database files: the shared behaviour (`behaviour/`).

mod behaviour;

use behaviour::Backend;
use herald_core::store::EventStore;
use herald_store::SqliteStore;

/// A database file in its own temporary directory.
struct Sqlite(tempfile::TempDir);

impl Backend for Sqlite {
    async fn open(&self) -> Box<dyn EventStore> {
        Box::new(SqliteStore::open(&self.0.path().join("herald.db")).unwrap())
    }
}

behaviour_tests!(async { Sqlite(tempfile::tempdir().unwrap()) });

/// An event of `kind` whose data is `{"n": n}`.
fn numbered(kind: &str, n: u64) -> herald_core::NewEvent {
    herald_core::NewEvent {
        kind: kind.into(),
        data: serde_json::json!({ "n": n }),
        user_id: None,
        room_id: None,
        metadata: None,
    }
}

/// The fan-out of the logs in these tests: each committed batch goes to `deliver`; the pacing
/// is `woken`'s (none: the log never waits for writers).
struct Sink<F> {
    deliver: F,
    woken: Option<std::sync::Arc<herald_core::outbox::WokenWriters>>,
}

impl<F> herald_core::Fanout for Sink<F>
where
    F: Fn(&[std::sync::Arc<herald_core::EncodedEvent>]) + Send + Sync + 'static,
{
    fn deliver(&self, batch: &[std::sync::Arc<herald_core::EncodedEvent>]) -> usize {
        (self.deliver)(batch);
        batch.len()
    }

    fn woken(&self) -> herald_core::outbox::WokenTotals {
        self.woken.as_ref().map(|w| w.totals()).unwrap_or_default()
    }

    fn settle(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        match &self.woken {
            Some(woken) => Box::pin(woken.settle()),
            None => Box::pin(std::future::ready(())),
        }
    }
}

/// A fan-out that hands each committed batch to `deliver`.
fn sink(
    deliver: impl Fn(&[std::sync::Arc<herald_core::EncodedEvent>]) + Send + Sync + 'static,
) -> std::sync::Arc<dyn herald_core::Fanout> {
    std::sync::Arc::new(Sink {
        deliver,
        woken: None,
    })
}

/// A `LocalLog` over `store` whose commits go to `fanout`.
async fn local_log(
    store: SqliteStore,
    fanout: std::sync::Arc<dyn herald_core::Fanout>,
) -> std::sync::Arc<herald_core::LocalLog> {
    let log = herald_core::LocalLog::start(std::sync::Arc::new(store), fanout);
    std::sync::Arc::new(log.await.unwrap())
}

/// Publishes event `n` of `kind` in a task of its own.
fn spawn_publish(
    log: &std::sync::Arc<herald_core::LocalLog>,
    kind: &'static str,
    n: u64,
) -> tokio::task::JoinHandle<
    Result<std::sync::Arc<herald_core::EncodedEvent>, herald_core::log::PublishError>,
> {
    use herald_core::Log;
    let log = log.clone();
    tokio::spawn(async move { log.publish(numbered(kind, n)).await })
}

/// Another connection to the database at `path`, holding its write lock until it commits.
fn hold_write_lock(path: &std::path::Path) -> rusqlite::Connection {
    let blocker = rusqlite::Connection::open(path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    blocker
}

/// Committed events reach the database file itself in the background, while the server runs:
/// a copy of the file alone (without its `-wal`) already holds them.
#[tokio::test(flavor = "multi_thread")]
async fn the_checkpointer_copies_commits_into_the_database_file() {
    use std::sync::Arc;

    use herald_core::event::EncodedEvent;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let store = SqliteStore::open(&path).unwrap();
    for seq in 1..=50 {
        let event = numbered("checkpoint.test", seq);
        let event = EncodedEvent::new(event.commit(seq, chrono::Utc::now()));
        store.append(vec![Arc::clone(&event)]).await.unwrap();
    }
    let copy = dir.path().join("copy.db");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let in_file = loop {
        std::fs::copy(&path, &copy).unwrap();
        // Until the first checkpoint, even the table exists only in the WAL.
        let n: i64 = rusqlite::Connection::open(&copy)
            .unwrap()
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap_or(0);
        if n == 50 || std::time::Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(in_file, 50, "the database file holds every committed event");
    store.close().await.unwrap();
}

/// Under load, publishes that arrive together are committed together: the first of a burst
/// wakes the sequencer before the others are handed over (here: it is already queued to run
/// when they are spawned), and it still makes one transaction of all of them, so one fan-out
/// round.
#[tokio::test]
async fn a_burst_of_publishes_is_committed_in_one_transaction() {
    use std::sync::{Arc, Mutex};

    use herald_core::Log;

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("herald.db")).unwrap();
    let batches = Arc::new(Mutex::new(Vec::new()));
    let fanout = {
        let batches = batches.clone();
        sink(move |batch| batches.lock().unwrap().push(batch.len()))
    };
    let log = local_log(store, fanout).await;
    let publish = |n: u64| {
        let log = log.clone();
        async move {
            log.publish(numbered("burst.test", n))
                .await
                .unwrap()
                .event
                .seq
        }
    };

    // Load: two publishes handed over before the sequencer runs are one transaction.
    let load = [tokio::spawn(publish(0)), tokio::spawn(publish(0))];
    for p in load {
        p.await.unwrap();
    }
    // Then a burst: its first publish is handed over (which wakes the sequencer) and waits
    // for its commit; the rest are spawned behind the sequencer's turn.
    let mut first = std::pin::pin!(publish(0));
    tokio::select! {
        biased;
        _ = &mut first => panic!("committed before the sequencer ran"),
        () = std::future::ready(()) => {}
    }
    let rest: Vec<_> = (1..10).map(|n| tokio::spawn(publish(n))).collect();
    let mut seqs = vec![first.await];
    for r in rest {
        seqs.push(r.await.unwrap());
    }
    assert_eq!(seqs, (3..=12).collect::<Vec<u64>>());
    assert_eq!(
        *batches.lock().unwrap(),
        vec![2, 10],
        "the burst in one transaction"
    );
    log.shutdown().await;
}

/// A `LocalLog` over a SQLite file whose fan-out queues event `i` of each batch on subscriber
/// `i % n`, with the writers of those subscribers counted in `woken` (no slack, a 60 s bound).
struct Pacing {
    _dir: tempfile::TempDir,
    log: std::sync::Arc<herald_core::LocalLog>,
    woken: std::sync::Arc<herald_core::outbox::WokenWriters>,
    subscribers: Vec<std::sync::Arc<herald_core::Outbox>>,
    batches: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
}

impl Pacing {
    async fn start(n: usize) -> Self {
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        use herald_core::outbox::WokenWriters;
        use herald_core::{LocalLog, Outbox, OutboxLimits, Outgoing};

        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("herald.db")).unwrap();
        let woken = Arc::new(WokenWriters::new(0, Duration::from_secs(60)));
        let subscribers: Vec<_> = (0..n)
            .map(|_| Arc::new(Outbox::new(OutboxLimits::default(), woken.clone())))
            .collect();
        for s in &subscribers {
            assert!(!run_writer(s), "the writer waits for frames");
        }
        let batches = Arc::new(Mutex::new(Vec::new()));
        let fanout = {
            let (batches, subscribers) = (batches.clone(), subscribers.clone());
            Arc::new(Sink {
                deliver: move |batch: &[Arc<herald_core::EncodedEvent>]| {
                    batches.lock().unwrap().push(batch.len());
                    for (i, e) in batch.iter().enumerate() {
                        assert!(subscribers[i % n].push(Outgoing::Event(e.clone())));
                    }
                },
                woken: Some(woken.clone()),
            })
        };
        let log = LocalLog::start(Arc::new(store), fanout).await.unwrap();
        Self {
            _dir: dir,
            log: Arc::new(log),
            woken,
            subscribers,
            batches,
        }
    }

    fn publish(
        &self,
        n: u64,
    ) -> tokio::task::JoinHandle<std::sync::Arc<herald_core::EncodedEvent>> {
        use herald_core::Log;
        let log = self.log.clone();
        tokio::spawn(async move { log.publish(numbered("pacing.test", n)).await.unwrap() })
    }

    /// Two publishes in one round, as under load.
    async fn load(&self) {
        let load = [self.publish(0), self.publish(1)];
        for p in load {
            p.await.unwrap();
        }
    }

    fn batches(&self) -> Vec<usize> {
        self.batches.lock().unwrap().clone()
    }
}

/// Polls a subscriber's writer once, as its task would: true when it took a batch.
fn run_writer(subscriber: &herald_core::Outbox) -> bool {
    use std::future::Future;
    use std::task::{Context, Waker};

    let mut cx = Context::from_waker(Waker::noop());
    std::pin::pin!(subscriber.next_batch())
        .poll(&mut cx)
        .is_ready()
}

/// Under load, the sequencer commits the next batch only once the writers the previous round
/// woke have taken their frames (or after the bound): what their clients send back meanwhile
/// joins that batch.
#[tokio::test]
async fn under_load_the_next_batch_waits_for_the_writers_the_last_round_woke() {
    use herald_core::Log;

    let p = Pacing::start(1).await;
    p.load().await;
    assert_eq!(p.woken.count(), 1, "the writer woken with two frames");
    let next = p.publish(2);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!next.is_finished(), "committed before the woken writer ran");
    assert_eq!(p.batches(), vec![2]);

    assert!(run_writer(&p.subscribers[0]));
    assert_eq!(next.await.unwrap().event.seq, 3);
    assert_eq!(p.batches(), vec![2, 1]);
    p.log.shutdown().await;
}

/// A round that gives each writer it woke about one frame (many small rooms) does not hold the
/// next batch back: a bigger batch would only wake more writers, one frame each.
#[tokio::test]
async fn a_round_of_one_frame_per_writer_does_not_hold_the_next_batch() {
    use herald_core::Log;

    let p = Pacing::start(2).await;
    p.load().await;
    assert_eq!(p.woken.count(), 2, "each writer woken with one frame");
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), p.publish(2)).await;
    assert_eq!(next.expect("not held back").unwrap().event.seq, 3);
    assert_eq!(p.batches(), vec![2, 1]);
    p.log.shutdown().await;
}

/// What queued while a batch was committing is handed to the store before that batch is
/// fanned out, so the store commits it while the runtime sends: here the fan-out of the first
/// publish finds the second already in the database. The first commit is held back by another
/// connection's write lock until the second publish has queued behind it.
#[tokio::test]
async fn the_next_batch_commits_while_the_last_one_is_fanned_out() {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use herald_core::Log;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let store = SqliteStore::open(&path).unwrap();
    // For each round: its events' `seq`s, and how many events the database held meanwhile.
    let rounds = Arc::new(Mutex::new(Vec::new()));
    let fanout = {
        let (rounds, path) = (rounds.clone(), path.clone());
        sink(move |batch| {
            let seqs: Vec<u64> = batch.iter().map(|e| e.event.seq).collect();
            let reader = rusqlite::Connection::open(&path).unwrap();
            let count = || -> i64 {
                let sql = "SELECT count(*) FROM events";
                reader.query_row(sql, [], |r| r.get(0)).unwrap()
            };
            // Blocks the runtime on purpose: only the store's own thread can commit meanwhile.
            let deadline = Instant::now() + Duration::from_secs(5);
            while count() < 2 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            rounds.lock().unwrap().push((seqs, count()));
        })
    };
    let log = local_log(store, fanout).await;

    let blocker = hold_write_lock(&path);
    let first = spawn_publish(&log, "pipeline.test", 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = spawn_publish(&log, "pipeline.test", 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!first.is_finished(), "the first commit waits for the lock");
    blocker.execute_batch("COMMIT").unwrap();

    assert_eq!(first.await.unwrap().unwrap().event.seq, 1);
    assert_eq!(second.await.unwrap().unwrap().event.seq, 2);
    assert_eq!(
        *rounds.lock().unwrap(),
        vec![(vec![1], 2), (vec![2], 2)],
        "the second publish was committed during the first one's fan-out"
    );
    log.shutdown().await;
}

/// A publish queued behind a commit that fails is not handed to the store before that result:
/// it takes the failed commit's `seq`, so `seq` stays gap-free. The failure: another
/// connection holds the write lock past the store's busy timeout (5 s).
#[tokio::test]
async fn a_publish_queued_behind_a_failed_commit_takes_its_seq() {
    use std::time::Duration;

    use herald_core::Log;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let store = SqliteStore::open(&path).unwrap();
    let log = local_log(store, sink(|_| {})).await;

    let blocker = hold_write_lock(&path);
    let failing = spawn_publish(&log, "failed.test", 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let queued = spawn_publish(&log, "failed.test", 2);
    assert!(
        failing.await.unwrap().is_err(),
        "the lock outlasted the busy timeout"
    );
    blocker.execute_batch("COMMIT").unwrap();
    assert_eq!(queued.await.unwrap().unwrap().event.seq, 1);
    log.shutdown().await;
}

/// `publish_all` is one unit among concurrent publishes: its events get consecutive `seq`s in
/// their order and are committed in the same transaction (one fan-out round); when the commit
/// fails, every one of them fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_all_commits_its_events_together_in_order() {
    use std::sync::{Arc, Mutex};

    use herald_core::{LocalLog, Log};

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("herald.db")).unwrap());
    let committed = Arc::new(Mutex::new(Vec::new()));
    let fanout = {
        let committed = committed.clone();
        sink(move |batch| {
            let seqs: Vec<u64> = batch.iter().map(|e| e.event.seq).collect();
            committed.lock().unwrap().push(seqs);
        })
    };
    let log = Arc::new(LocalLog::start(store.clone(), fanout).await.unwrap());

    let singles: Vec<_> = (0..200)
        .map(|n| {
            let log = log.clone();
            tokio::spawn(async move { log.publish(numbered("single", n)).await.unwrap() })
        })
        .collect();
    let batches: Vec<_> = (0..20)
        .map(|b| {
            let log = log.clone();
            tokio::spawn(async move {
                let events = (0..50).map(|n| numbered("batch", b * 100 + n)).collect();
                log.publish_all(events, None).await.unwrap()
            })
        })
        .collect();
    for s in singles {
        s.await.unwrap();
    }
    let mut published = Vec::new();
    for b in batches {
        published.push(b.await.unwrap());
    }
    let transactions = committed.lock().unwrap().clone();
    for events in published {
        assert_eq!(events.len(), 50);
        let first = events[0].event.seq;
        let base = events[0].event.data["n"].as_u64().unwrap();
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.event.seq, first + i as u64, "consecutive");
            assert_eq!(e.event.data["n"], base + i as u64, "in the order given");
        }
        assert!(
            transactions
                .iter()
                .any(|t| t.contains(&first) && t.contains(&(first + 49))),
            "one transaction holds the whole batch: {transactions:?}"
        );
    }
    let all: Vec<u64> = transactions.concat();
    assert_eq!(all, (1..=1200).collect::<Vec<u64>>(), "gap-free, in order");

    // A failed commit fails the whole batch, and nothing of it is delivered.
    store.close().await.unwrap();
    let events = (0..5).map(|n| numbered("batch", n)).collect();
    assert!(log.publish_all(events, None).await.is_err());
    assert_eq!(committed.lock().unwrap().concat().len(), 1200);
    log.shutdown().await;
}

/// A store written by a version that kept `seq`'s high-water mark in `sqlite_sequence`
/// (`AUTOINCREMENT`) and indexed `ts`: reopened, it still never reuses a `seq` that retention
/// deleted, and the index no longer costs every commit a page.
#[tokio::test]
async fn a_store_from_the_autoincrement_schema_keeps_its_high_water_mark() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    {
        let old = rusqlite::Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE events (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT NOT NULL, user_id TEXT,
                 room_id TEXT, ts INTEGER NOT NULL, body TEXT NOT NULL);
             CREATE INDEX events_ts ON events(ts);
             INSERT INTO events (seq, type, ts, body) VALUES (1, 'a', 0, '{}'), (7, 'a', 0, '{}');
             DELETE FROM events;",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.last_seq().await.unwrap(), 7);
    store.close().await.unwrap();
    let indexes: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'events_ts'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexes, 0);
    assert_eq!(
        SqliteStore::open(&path).unwrap().last_seq().await.unwrap(),
        7
    );
}
