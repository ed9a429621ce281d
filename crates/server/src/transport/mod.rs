//! Connections: WebSocket (`ws`), Server-Sent Events (`sse`), Socket.IO over Engine.IO
//! (`socketio`), and the command session (`session`) that interprets what a WebSocket client
//! sends.

pub mod session;
pub mod socketio;
pub mod sse;
pub mod ws;

use std::net::IpAddr;
use std::sync::Arc;

use herald_core::Connection;
use herald_core::{Hub, Transport};

use crate::app::App;
use crate::http::error::AppError;

/// Unregisters a connection from the hub when its transport task ends, however it ends
/// (client gone, error, upgrade never completed).
pub struct Registration {
    pub hub: Arc<Hub>,
    pub conn: Arc<Connection>,
}

impl Registration {
    /// Admits a new connection: the per-IP connection rate first (429), then the server's
    /// connection limit (503).
    pub fn open(app: &App, peer: IpAddr, transport: Transport) -> Result<Self, AppError> {
        app.admit_connection(peer)?;
        let conn = app
            .hub
            .connect(transport)
            .map_err(|e| AppError::unavailable(format!("{e}; try again later")))?;
        Ok(Self {
            hub: app.hub.clone(),
            conn,
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.disconnect(self.conn.id);
        tracing::debug!(connection = %self.conn.id, "connection closed");
    }
}
