//! The PostgreSQL store against a real server (`POSTGRES_TEST_URL`, started by
//! `scripts/services.sh start`; the tests fail when it is unset): the shared behaviour
//! (`behaviour/`), each test in its own schema, plus what only a shared server has — nodes
//! starting at once, and an unreachable server.

mod behaviour;

use behaviour::Backend;
use chrono::Utc;
use herald_core::event::{EncodedEvent, NewEvent};
use herald_core::store::{EventStore, StoreError};
use herald_store::PgStore;
use herald_store::testing::scratch_postgres;

/// A schema of its own on the test server.
struct Postgres(String);

impl Backend for Postgres {
    async fn open(&self) -> Box<dyn EventStore> {
        Box::new(PgStore::connect(&self.0).await.unwrap())
    }
}

behaviour_tests!(async { Postgres(scratch_postgres().await) });

#[tokio::test]
async fn nodes_starting_at_once_migrate_the_schema_once() {
    let url = scratch_postgres().await;
    let mut starting = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = url.clone();
        starting.spawn(async move { PgStore::connect(&url).await });
    }
    let stores: Vec<PgStore> = starting
        .join_all()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let event = EncodedEvent::new(
        NewEvent {
            kind: "a".into(),
            data: serde_json::json!({}),
            user_id: None,
            room_id: None,
            metadata: None,
        }
        .commit(1, Utc::now()),
    );
    stores[0].append(vec![event]).await.unwrap();
    // Every node sees the one schema, and the high-water row is shared.
    for store in &stores {
        assert_eq!(store.last_seq().await.unwrap(), 1);
        assert_eq!(store.summary().await.unwrap().events, 1);
    }
}

#[tokio::test]
async fn an_unreachable_server_is_reported_unavailable() {
    // A port nothing listens on: connecting fails at once, and says the store is unavailable
    // (which the API turns into 503) rather than a query failure.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = PgStore::connect(&format!("postgres://herald@127.0.0.1:{port}/herald"))
        .await
        .err()
        .expect("connecting to a closed port fails");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
}
