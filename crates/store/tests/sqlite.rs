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
