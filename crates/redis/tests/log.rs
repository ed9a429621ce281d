//! `RedisLog` against a real Redis (`REDIS_TEST_URL`, from `scripts/services.sh start`; the
//! tests fail when it is unset) and a real SQLite store standing in for the shared one.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use herald_core::event::{EncodedEvent, NewEvent};
use herald_core::fanout::Fanout;
use herald_core::log::Log;
use herald_core::store::EventStore;
use herald_redis::testing::{redis_url, scratch_prefix};
use herald_redis::{RedisConfig, RedisLog};
use herald_store::SqliteStore;
use parking_lot::Mutex;
use serde_json::json;

fn event(n: u64) -> NewEvent {
    NewEvent {
        kind: "chat.message".into(),
        data: json!({"n": n}),
        user_id: None,
        room_id: None,
        metadata: None,
    }
}

/// A fan-out that records the `seq` of every event it is handed, in order.
struct Recording(Arc<Mutex<Vec<u64>>>);

impl Fanout for Recording {
    fn deliver(&self, batch: &[Arc<EncodedEvent>]) -> usize {
        self.0.lock().extend(batch.iter().map(|e| e.event.seq));
        batch.len()
    }
}

fn recording_sink() -> (Arc<dyn Fanout>, Arc<Mutex<Vec<u64>>>) {
    let delivered = Arc::new(Mutex::new(Vec::new()));
    (Arc::new(Recording(delivered.clone())), delivered)
}

/// The test Redis, under keys no other test uses.
fn scratch_config() -> RedisConfig {
    RedisConfig {
        url: redis_url(),
        prefix: scratch_prefix(),
    }
}

/// A node that starts behind the store — its Redis stream never held those events, as after a
/// Redis restart or a trim — delivers them from the store, in order and once, then goes on live
/// from the stream.
#[tokio::test]
async fn committed_events_missing_from_the_stream_are_delivered_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&dir.path().join("h.db")).unwrap());
    store
        .append(
            (1..=5)
                .map(|s| EncodedEvent::new(event(s).commit(s, Utc::now())))
                .collect(),
        )
        .await
        .unwrap();
    let (sink, delivered) = recording_sink();
    let config = scratch_config();
    // The hub has seen nothing: the writer announces the store's last_seq (5) as committed.
    let log = RedisLog::start(&config, store.clone(), sink, 0)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while delivered.lock().len() < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            delivered.lock()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let published = log.publish(event(6)).await.unwrap();
    assert_eq!(
        published.event.seq, 6,
        "the counter was seeded from the store"
    );
    assert_eq!(*delivered.lock(), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(store.last_seq().await.unwrap(), 6);
    log.shutdown().await;
}

/// A batch from `publish_all` gets consecutive `seq`s in its order, also while single
/// publishes go on at the same time, and every event is delivered once, in `seq` order.
#[tokio::test]
async fn publish_all_assigns_consecutive_seqs_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&dir.path().join("h.db")).unwrap());
    let (sink, delivered) = recording_sink();
    let config = scratch_config();
    let log = Arc::new(
        RedisLog::start(&config, store.clone(), sink, 0)
            .await
            .unwrap(),
    );
    let singles: Vec<_> = (0..30)
        .map(|n| {
            let log = log.clone();
            tokio::spawn(async move { log.publish(event(n)).await.unwrap() })
        })
        .collect();
    let batches: Vec<_> = (0..5)
        .map(|b| {
            let log = log.clone();
            tokio::spawn(async move {
                let events = (0..40).map(|n| event(1000 * (b + 1) + n)).collect();
                log.publish_all(events, None).await.unwrap()
            })
        })
        .collect();
    for s in singles {
        s.await.unwrap();
    }
    for b in batches {
        let events = b.await.unwrap();
        let first = events[0].event.seq;
        let base = events[0].event.data["n"].as_u64().unwrap();
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.event.seq, first + i as u64, "consecutive");
            assert_eq!(e.event.data["n"], base + i as u64, "in the order given");
        }
    }
    assert_eq!(*delivered.lock(), (1..=230).collect::<Vec<u64>>());
    assert_eq!(store.last_seq().await.unwrap(), 230);
    log.shutdown().await;
}
