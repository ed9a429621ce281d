//! Transports: WebSocket and Server-Sent Events, and the command session they share.

pub mod session;
pub mod sse;
pub mod ws;

use std::sync::Arc;

use herald_core::Hub;
use herald_core::hub::Connection;

/// Unregisters a connection from the hub when its transport task ends, however it ends
/// (client gone, error, upgrade never completed).
pub struct Registration {
    pub hub: Arc<Hub>,
    pub conn: Arc<Connection>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.disconnect(self.conn.id);
        tracing::debug!(connection = %self.conn.id, "connection closed");
    }
}
