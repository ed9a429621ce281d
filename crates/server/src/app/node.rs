//! This node as the cluster view shows it (`GET /api/cluster/nodes`): what it reports on each
//! heartbeat (with Redis, into its node key), or alone when embedded.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use herald_core::Hub;
use herald_core::hub::ByTransport;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ProcessMonitor;

/// One node as it reported itself: with Redis, on its last heartbeat (stored in its key).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub id: String,
    /// Where clients and load balancers reach it: `advertise_url`, else `http://` and the
    /// address it listens on.
    pub url: String,
    pub connections: usize,
    pub by_transport: ByTransport,
    /// CPU use of its process since the previous sample, 100 = one core.
    pub cpu_percent: f32,
    pub rss_bytes: u64,
    /// When it reported this (its own clock).
    pub last_seen: DateTime<Utc>,
}

/// What this node reports about itself.
pub struct ThisNode {
    pub id: String,
    /// `advertise_url`, else `http://` and the address `serve` bound (its real port when the
    /// configured one is 0).
    pub url: String,
    pub hub: Arc<Hub>,
    pub process: Arc<Mutex<ProcessMonitor>>,
}

impl ThisNode {
    pub fn status(&self) -> NodeStatus {
        let hub = self.hub.stats();
        let process = self.process.lock().sample();
        NodeStatus {
            id: self.id.clone(),
            url: self.url.clone(),
            connections: hub.total,
            by_transport: hub.by_type,
            cpu_percent: process.cpu_percent,
            rss_bytes: process.rss_bytes,
            last_seen: Utc::now(),
        }
    }
}
