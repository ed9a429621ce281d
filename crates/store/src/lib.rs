//! Implementations of Herald's `EventStore` seam.

pub mod sqlite;

pub use sqlite::SqliteStore;
