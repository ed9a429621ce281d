//! Who may write to a store (`herald_store::ownership`): a second writer that does not share
//! the first one's log is refused while the first runs — and, for a database a cluster owns,
//! until it is released —; a stand-alone node that lost its lock can no longer commit once
//! another node took over. PostgreSQL tests run on `POSTGRES_TEST_URL` (each in its own schema),
//! with the cluster's shared log played by `MemoryIds`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use herald_core::event::{EncodedEvent, NewEvent};
use herald_core::store::{EventStore, StoreError};
use herald_store::testing::{end_lock_sessions, scratch_postgres};
use herald_store::{Claim, ClusterIds, OpenError, PgStore, SqliteStore};
use parking_lot::Mutex;

/// The refusal's message; panics on success or another error.
fn refusal<T>(opened: Result<T, OpenError>) -> String {
    match opened {
        Err(OpenError::Refused(message)) => message,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, but the store opened"),
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
}

fn event(seq: u64) -> Arc<EncodedEvent> {
    EncodedEvent::new(
        NewEvent {
            kind: "a".into(),
            data: serde_json::json!({ "n": seq }),
            user_id: None,
            room_id: None,
            metadata: None,
        }
        .commit(seq, Utc::now()),
    )
}

// ---------------------------------------------------------------------------------------------
// SQLite

#[tokio::test]
async fn a_second_store_on_one_sqlite_file_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let first = SqliteStore::open(&path).unwrap();
    first.append(vec![event(1)]).await.unwrap();

    let message = refusal(SqliteStore::open(&path));
    assert_mentions(
        &message,
        &[
            "another Herald server is using the SQLite database",
            path.to_str().unwrap(),
            "--database PATH",
        ],
    );

    first.close().await.unwrap();
    let second = SqliteStore::open(&path).unwrap();
    assert_eq!(second.last_seq().await.unwrap(), 1);
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// A shared log's record of its cluster's id, in memory.
#[derive(Default)]
struct MemoryIds {
    id: Mutex<Option<String>>,
    /// The nodes alive in it.
    live: usize,
}

impl MemoryIds {
    fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn holding(id: &str, live: usize) -> Arc<Self> {
        Arc::new(Self {
            id: Mutex::new(Some(id.into())),
            live,
        })
    }

    fn id(&self) -> Option<String> {
        self.id.lock().clone()
    }
}

#[async_trait]
impl ClusterIds for MemoryIds {
    fn describe(&self) -> String {
        "the test's shared log".into()
    }

    async fn get(&self) -> Result<Option<String>, String> {
        Ok(self.id())
    }

    async fn set(&self, id: &str) -> Result<(), String> {
        *self.id.lock() = Some(id.into());
        Ok(())
    }

    async fn set_if_absent(&self, id: &str) -> Result<String, String> {
        Ok(self.id.lock().get_or_insert_with(|| id.into()).clone())
    }

    async fn live_nodes(&self) -> Result<usize, String> {
        Ok(self.live)
    }
}

fn cluster(prefix: &str, ids: &Arc<MemoryIds>) -> Claim {
    Claim::Cluster {
        prefix: prefix.into(),
        ids: ids.clone(),
    }
}

/// A plain connection to the schema at `url`.
async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// The sessions holding the schema's ownership lock.
async fn lock_holders(url: &str) -> Vec<i32> {
    sql(url)
        .await
        .query(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
                AND objid = 'herald_owner'::regclass::oid AND objsubid = 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_second_stand_alone_node_is_refused_while_the_first_runs() {
    let url = scratch_postgres().await;
    let first = PgStore::open(&url, Claim::Standalone).await.unwrap();
    first.append(vec![event(1)]).await.unwrap();

    let message = refusal(PgStore::open(&url, Claim::Standalone).await);
    assert_mentions(
        &message,
        &[
            "a stand-alone Herald node is running on the PostgreSQL database",
            "Stop that node first",
            "pg_terminate_backend(",
        ],
    );
    // Nor may a cluster share it.
    let message = refusal(PgStore::open(&url, cluster("c", &MemoryIds::new())).await);
    assert_mentions(
        &message,
        &["a stand-alone Herald node is running", "cluster node"],
    );

    first.close().await.unwrap();
    let second = PgStore::open(&url, Claim::Standalone).await.unwrap();
    second.append(vec![event(2)]).await.unwrap();
    assert_eq!(second.last_seq().await.unwrap(), 2);
}

#[tokio::test]
async fn a_database_a_cluster_owns_refuses_stand_alone_nodes_until_released() {
    let url = scratch_postgres().await;
    let ids = MemoryIds::new();
    let node = PgStore::open(&url, cluster("blue", &ids)).await.unwrap();
    let message = refusal(PgStore::open(&url, Claim::Standalone).await);
    assert_mentions(
        &message,
        &[
            "belongs to the Herald cluster with redis_prefix \"blue\"",
            "1 node running now",
            "--redis-prefix blue",
            "herald release-store",
        ],
    );
    // Still the cluster's while none of its nodes runs: they may be restarting.
    node.close().await.unwrap();
    let message = refusal(PgStore::open(&url, Claim::Standalone).await);
    assert_mentions(&message, &["redis_prefix \"blue\"", "herald release-store"]);

    let released = herald_store::postgres::release(&url)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(released.cluster.unwrap().0, "blue");
    PgStore::open(&url, Claim::Standalone).await.unwrap();
}

#[tokio::test]
async fn a_cluster_with_another_prefix_is_refused_and_release_waits_for_the_owner_to_stop() {
    let url = scratch_postgres().await;
    let blue = PgStore::open(&url, cluster("blue", &MemoryIds::new()))
        .await
        .unwrap();
    let message = refusal(PgStore::open(&url, cluster("green", &MemoryIds::new())).await);
    assert_mentions(
        &message,
        &[
            "belongs to the Herald cluster with redis_prefix \"blue\"",
            "not to redis_prefix \"green\"",
            "--redis-prefix blue",
            "herald release-store",
        ],
    );
    let message = refusal(herald_store::postgres::release(&url).await);
    assert_mentions(&message, &["Herald nodes are running", "stop them"]);

    blue.close().await.unwrap();
    herald_store::postgres::release(&url).await.unwrap();
    let green = PgStore::open(&url, cluster("green", &MemoryIds::new()))
        .await
        .unwrap();
    green.close().await.unwrap();
    // Releasing twice finds nothing the second time.
    assert!(
        herald_store::postgres::release(&url)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        herald_store::postgres::release(&url)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_stopped_stand_alone_nodes_database_becomes_a_clusters() {
    let url = scratch_postgres().await;
    let alone = PgStore::open(&url, Claim::Standalone).await.unwrap();
    alone
        .append(vec![event(1), event(2), event(3)])
        .await
        .unwrap();
    alone.close().await.unwrap();

    let ids = MemoryIds::new();
    let node = PgStore::open(&url, cluster("blue", &ids)).await.unwrap();
    assert_eq!(node.last_seq().await.unwrap(), 3, "history carries over");
    assert!(ids.id().is_some(), "the cluster's id is in its shared log");
    node.append(vec![event(4)]).await.unwrap();
    // A second node of the cluster joins.
    let other = PgStore::open(&url, cluster("blue", &ids)).await.unwrap();
    assert_eq!(other.last_seq().await.unwrap(), 4);
}

#[tokio::test]
async fn a_stand_alone_node_that_lost_its_lock_commits_nothing_once_another_took_over() {
    let url = scratch_postgres().await;
    let first = PgStore::open(&url, Claim::Standalone).await.unwrap();
    first.append(vec![event(1)]).await.unwrap();
    let lost = first.lost();

    // Its lock's session ends (a dropped connection); another node gets in before the first
    // takes the lock again (a few tries: the first retries every second).
    let mut second = None;
    for _ in 0..10 {
        end_lock_sessions(&url).await;
        match PgStore::open(&url, Claim::Standalone).await {
            Ok(store) => {
                second = Some(store);
                break;
            }
            Err(OpenError::Refused(_)) => continue,
            Err(e) => panic!("{e}"),
        }
    }
    let second = second.expect("the second node got the lock");

    // The first node's commits are fenced: nothing it acknowledged could go missing.
    let err = first.append(vec![event(2)]).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("no longer owns")),
        "{err}"
    );
    let reason = tokio::time::timeout(Duration::from_secs(5), lost)
        .await
        .expect("the first node learns it lost the database");
    assert!(
        reason.contains("no longer owns") || reason.contains("now belongs"),
        "{reason}"
    );
    second.append(vec![event(2)]).await.unwrap();
    assert_eq!(second.last_seq().await.unwrap(), 2);
}

#[tokio::test]
async fn a_stand_alone_node_whose_lock_session_dropped_takes_the_lock_again() {
    let url = scratch_postgres().await;
    let store = PgStore::open(&url, Claim::Standalone).await.unwrap();
    let before = lock_holders(&url).await;
    assert_eq!(before.len(), 1);
    end_lock_sessions(&url).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = lock_holders(&url).await;
        if now.len() == 1 && now != before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lock was not taken again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    store.append(vec![event(1)]).await.unwrap();
    let message = refusal(PgStore::open(&url, Claim::Standalone).await);
    assert_mentions(&message, &["a stand-alone Herald node is running"]);
    let lost = store.lost();
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), lost)
            .await
            .is_err(),
        "it still owns the database"
    );
}

#[tokio::test]
async fn a_node_on_another_shared_log_than_its_clusters_is_refused() {
    let url = scratch_postgres().await;
    let shared = MemoryIds::new();
    let _first = PgStore::open(&url, cluster("blue", &shared)).await.unwrap();
    let id = shared.id().unwrap();

    // A shared log that records another cluster under the prefix.
    let message =
        refusal(PgStore::open(&url, cluster("blue", &MemoryIds::holding("other", 0))).await);
    assert_mentions(
        &message,
        &[
            "records another Herald cluster under redis_prefix \"blue\"",
            "cluster id other",
            &format!("cluster id {id}"),
            "Check --redis",
        ],
    );
    // One that records none while the cluster's nodes run: they use another one.
    let message = refusal(PgStore::open(&url, cluster("blue", &MemoryIds::new())).await);
    assert_mentions(&message, &["1 node(s) of", "has no record of that cluster"]);
}

#[tokio::test]
async fn running_nodes_restore_the_id_in_a_shared_log_that_lost_it() {
    let url = scratch_postgres().await;
    let shared = MemoryIds::new();
    let _first = PgStore::open(&url, cluster("blue", &shared)).await.unwrap();
    let id = shared.id().unwrap();
    // The shared log loses its data (a Redis restarted without persistence).
    *shared.id.lock() = None;
    let _second = PgStore::open(&url, cluster("blue", &shared)).await.unwrap();
    assert_eq!(shared.id(), Some(id));
}

#[tokio::test]
async fn a_cluster_moved_to_another_shared_log_leaves_the_old_one_behind() {
    let url = scratch_postgres().await;
    let old = MemoryIds::new();
    PgStore::open(&url, cluster("blue", &old))
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    // No node runs: the cluster may start on another shared log (or on its own, emptied);
    // it gets a new id.
    let new = MemoryIds::new();
    let node = PgStore::open(&url, cluster("blue", &new)).await.unwrap();
    assert_ne!(new.id(), old.id());
    node.close().await.unwrap();
    // A node on the old one is told apart now.
    let message = refusal(PgStore::open(&url, cluster("blue", &old)).await);
    assert_mentions(&message, &["records another Herald cluster"]);
}

#[tokio::test]
async fn a_prefix_a_running_cluster_uses_with_another_database_is_refused() {
    let url = scratch_postgres().await;
    let busy = MemoryIds::holding("theirs", 2);
    let message = refusal(PgStore::open(&url, cluster("blue", &busy)).await);
    assert_mentions(
        &message,
        &[
            "redis_prefix \"blue\"",
            "in use by a running Herald cluster (2 node(s))",
            "--redis-prefix",
        ],
    );
    // Once those nodes are gone, the prefix is this database's cluster's.
    let idle = MemoryIds::holding("theirs", 0);
    PgStore::open(&url, cluster("blue", &idle)).await.unwrap();
    assert_ne!(idle.id().as_deref(), Some("theirs"));
}
