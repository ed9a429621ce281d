//! The event-store seam: durable, queryable history. SQLite embedded, PostgreSQL scaled out.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::event::{EncodedEvent, Event};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    #[error("event store failure: {0}")]
    Backend(String),
}

/// What a history reader may see, as `Access::read_scope` states it for the store's query.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadAccess {
    All,
    Limited {
        /// Whose private events (`user.*`, personal rooms) are readable: none for anonymous
        /// readers.
        user: Option<String>,
        /// The other rooms readable (names or `prefix*` patterns); `None`: any room.
        rooms: Option<Vec<String>>,
    },
}

/// The order of a history query's results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    /// Highest `seq` first: the latest `limit` events (history pages).
    #[default]
    NewestFirst,
    /// Lowest `seq` first: the first `limit` events after `after_seq` (resume, long-poll).
    OldestFirst,
}

/// A history query. Results are newest first unless `order` says otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryQuery {
    pub types: Vec<String>,
    pub user_id: Option<String>,
    pub room_id: Option<String>,
    pub since_time: Option<DateTime<Utc>>,
    /// Only events with a greater `seq`.
    pub after_seq: Option<u64>,
    /// Only events with this `seq` or a smaller one.
    pub until_seq: Option<u64>,
    pub order: Order,
    pub limit: usize,
    pub access: ReadAccess,
}

impl Default for HistoryQuery {
    fn default() -> Self {
        Self {
            types: Vec::new(),
            user_id: None,
            room_id: None,
            since_time: None,
            after_seq: None,
            until_seq: None,
            order: Order::NewestFirst,
            limit: 50,
            access: ReadAccess::All,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreSummary {
    pub events: u64,
    pub oldest_seq: Option<u64>,
    pub newest_seq: Option<u64>,
    /// Distinct types among the most recent events.
    pub recent_types: Vec<String>,
}

#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Commits a batch atomically; when this returns `Ok`, every event survives a crash. The
    /// embedded log appends in `seq` order with timestamps that never decrease along `seq`, so
    /// an embedded store may resolve time bounds through `seq`.
    async fn append(&self, batch: Vec<Arc<EncodedEvent>>) -> Result<(), StoreError>;
    /// The highest `seq` ever committed, even if retention has since deleted it.
    async fn last_seq(&self) -> Result<u64, StoreError>;
    async fn query(&self, query: HistoryQuery) -> Result<Vec<Event>, StoreError>;
    async fn count_since(&self, since: DateTime<Utc>) -> Result<u64, StoreError>;
    async fn summary(&self) -> Result<StoreSummary, StoreError>;
    /// The lowest `seq` still stored (None when retention left nothing): where resume can start.
    async fn oldest_seq(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.summary().await?.oldest_seq)
    }
    /// Retention: deletes events older than `cutoff`, returns how many. A `document.change` or
    /// `yjs.update` is kept while no snapshot (`save_snapshot`, keyed by its room) covers its
    /// `seq`: a document's content outlives retention.
    async fn delete_before(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Finishes pending writes; later appends fail.
    async fn close(&self) -> Result<(), StoreError>;
    /// Keeps a client session's state under `key` (replacing what was there) until `expires`,
    /// for any node to resume it: a Socket.IO connection-state recovery.
    async fn save_session(
        &self,
        key: &str,
        state: &str,
        expires: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// The state saved under `key`, unless it has expired.
    async fn load_session(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Keeps `body` under `key` as the state up to `seq` (a document's room and the last
    /// change it holds), unless a snapshot with a higher `seq` is kept already. Retention
    /// leaves snapshots alone.
    async fn save_snapshot(
        &self,
        key: &str,
        seq: u64,
        body: &serde_json::Value,
    ) -> Result<(), StoreError>;
    /// The snapshot kept under `key` and its `seq`.
    async fn load_snapshot(
        &self,
        key: &str,
    ) -> Result<Option<(u64, serde_json::Value)>, StoreError>;
}
