//! Herald's domain: events and their sequence, subscriptions and the index that matches them,
//! connections with bounded outboxes, the hub that fans committed events out, and the two seams
//! (`EventStore`, and `Log` — here the in-process `LocalLog` — that sequences and commits).
//! Nothing in here knows about HTTP or any web framework.

pub mod access;
pub mod connection;
pub mod document;
pub mod event;
pub mod fanout;
pub mod hub;
pub mod identity;
pub mod log;
pub mod outbox;
pub mod pattern;
pub mod presence;
pub mod protocol;
pub mod resume;
pub mod room;
pub mod signal;
pub mod store;
pub mod stream;
pub mod subscription;
pub mod wire;

pub use access::Access;
pub use connection::{Connection, Transport};
pub use event::{EncodedEvent, Event, NewEvent};
pub use fanout::Fanout;
pub use hub::{Hub, HubStats};
pub use identity::{Identity, Role};
pub use log::{LocalLog, Log, PublishError};
pub use outbox::{Outbox, OutboxLimits, Outgoing};
pub use pattern::TypePattern;
pub use store::{EventStore, HistoryQuery, Order, StoreError};
pub use subscription::{Filters, SubscriptionSpec};
pub use wire::CloseReason;
