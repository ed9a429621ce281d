//! `GET /api/cluster/nodes`: the nodes of the cluster, their load, and the least loaded one
//! (seed 001's least-connections choice) — information for a load balancer or an operator,
//! not a load balancer of Herald's own.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use herald_core::Hub;
use herald_core::hub::ByTransport;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use crate::app::{App, ProcessMonitor};
use crate::error::{AppError, ErrorBody};

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

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNodes {
    /// Every live node, by id; embedded, this one alone.
    nodes: Vec<NodeStatus>,
    /// The node with the fewest connections (the lowest id among equals, so that every node
    /// names the same one); null only while Redis holds no node (it lost its data: back
    /// within a heartbeat).
    least_loaded: Option<NodeStatus>,
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

/// Every node of the cluster and the least loaded one. Operators only (admin token or API
/// key): the nodes' addresses are the cluster's internal layout, which a user's token should
/// not reveal.
#[utoipa::path(get, path = "/api/cluster/nodes", tag = "system", security(("bearer" = [])),
    responses((status = 200, body = ClusterNodes), (status = 401, body = ErrorBody),
        (status = 403, description = "Not an operator (admin token or API key)", body = ErrorBody),
        (status = 503, description = "Redis unavailable", body = ErrorBody)))]
pub async fn nodes(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
) -> Result<Json<ClusterNodes>, AppError> {
    if !caller.is_privileged() {
        return Err(AppError::forbidden(
            "only operators (admin token or API key) may list the cluster's nodes",
        ));
    }
    let mut nodes: Vec<NodeStatus> = match &app.cluster {
        // Every node reads the same keys, so every node gives the same answer.
        Some(cluster) => cluster
            .nodes()
            .await?
            .into_iter()
            .filter_map(|info| serde_json::from_value(info).ok())
            .collect(),
        None => vec![app.node.status()],
    };
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    // `min_by_key` keeps the first of equals: the lowest id.
    let least_loaded = nodes.iter().min_by_key(|n| n.connections).cloned();
    Ok(Json(ClusterNodes {
        nodes,
        least_loaded,
    }))
}
