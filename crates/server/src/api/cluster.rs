//! `GET /api/cluster/nodes`: the nodes of the cluster, their load, and the least loaded one
//! (seed 001's least-connections choice) — information for a load balancer or an operator,
//! not a load balancer of Herald's own.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::App;
use crate::app::node::NodeStatus;
use crate::http::error::{AppError, ErrorBody};
use crate::http::identity::Caller;

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
