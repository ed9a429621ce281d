//! Implementations of Herald's `EventStore` seam: SQLite embedded, PostgreSQL scaled out.

#![warn(missing_docs)]

mod history;
pub mod ownership;
pub mod postgres;
pub mod sqlite;
#[cfg(feature = "test-support")]
pub mod testing;

use std::time::Instant;

use herald_core::event::Event;
use herald_core::store::StoreError;

pub use ownership::{Claim, ClusterIds, OpenError};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// An event from its stored JSON.
fn parse_body(body: &str) -> Result<Event, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Backend(format!("corrupt event row: {e}")))
}

/// The commit metrics both stores report: how long a batch took and how many events it held.
fn record_commit(started: Instant, events: usize) {
    metrics::histogram!("herald_store_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("herald_store_batch_events").record(events as f64);
}
