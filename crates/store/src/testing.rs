//! Test support (feature `test-support`): scratch PostgreSQL schemas on the server that
//! `scripts/services.sh start` runs, so that tests running at once never see each other's rows.

use std::sync::atomic::{AtomicU32, Ordering};

/// The variable naming the test server (`scripts/services.sh start` prints it).
pub const POSTGRES_VAR: &str = "POSTGRES_TEST_URL";

/// The URL of a new, empty schema on the `POSTGRES_TEST_URL` server. Panics when the
/// variable is unset: a test that needs PostgreSQL fails rather than passing without it.
pub async fn scratch_postgres() -> String {
    let base = std::env::var(POSTGRES_VAR).unwrap_or_else(|_| {
        panic!(
            "{POSTGRES_VAR} is not set: this test needs PostgreSQL. Run \
             `eval \"$(scripts/services.sh start)\"` first (scripts/test.sh does)."
        )
    });
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Unique among the processes running now; a name left by an earlier process with the same
    // id is dropped first.
    let schema = format!(
        "herald_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {POSTGRES_VAR}={base}: {e}"));
    let connection = tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .await
        .unwrap();
    drop(client);
    let _ = connection.await;
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-csearch_path%3D{schema}")
}

/// Ends the PostgreSQL sessions holding the ownership lock of the schema at `url` (made by
/// `scratch_postgres`), as a dropped connection would: the nodes lose the lock, not the rest of
/// their connections.
pub async fn end_lock_sessions(url: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks
             WHERE locktype = 'advisory' AND granted
               AND objid = 'herald_owner'::regclass::oid AND objsubid = 1",
            &[],
        )
        .await
        .unwrap();
    drop(client);
    let _ = connection.await;
}
