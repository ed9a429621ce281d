//! The seam between a log and this node's subscribers (`Fanout`): a log commits a batch, then
//! hands it to its `Fanout`, and reads the fan-out's pacing to decide when to commit the next
//! one. The `Hub` implements it; the server wraps the hub to count what it delivers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::event::EncodedEvent;
use crate::outbox::WokenTotals;

pub trait Fanout: Send + Sync + 'static {
    /// Hands a committed batch (in `seq` order) to this node's subscribers; returns how many
    /// deliveries were queued.
    fn deliver(&self, batch: &[Arc<EncodedEvent>]) -> usize;

    /// The pacing: how many writers deliveries have woken, and how many frames were queued for
    /// them before they ran, since the start (`WokenWriters::totals`). The default, for a
    /// fan-out that wakes no writers, never changes.
    fn woken(&self) -> WokenTotals {
        WokenTotals::default()
    }

    /// Waits, within a bound, until the writers deliveries woke have run
    /// (`WokenWriters::settle`). The default returns at once.
    fn settle(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }
}
