//! `GET /v1/status`: the pool and the peers under the names tools already
//! use, then the daemon's other figures ([`Status`]).

use axum::{Json, Router, extract::State, routing::get};
use ipnet::Ipv6Net;
use serde::Serialize;

use super::ApiState;
use crate::operator::Status;

#[derive(Serialize)]
pub struct StatusBody {
    pub upstream_prefix: Ipv6Net,
    pub allocation_size: u8,
    pub total_allocations: u128,
    pub used_allocations: u128,
    pub available_allocations: u128,
    pub active_peers: usize,
    pub idle_peers: usize,
    pub never_connected_peers: usize,
    /// Everything `blockhost-broker status --json` shows.
    #[serde(flatten)]
    pub status: Status,
}

pub fn routes() -> Router<ApiState> {
    Router::new().route("/v1/status", get(status))
}

/// Also the manager's (`/manager/api/status`).
pub(crate) async fn status(State(state): State<ApiState>) -> Json<StatusBody> {
    let snapshot = state.handle.snapshot();
    let status = snapshot.status.clone();
    let pool = status.pool;
    // None only when the kernel could not be read: `peers` says so (null).
    let peers = status.peers.unwrap_or_default();
    Json(StatusBody {
        upstream_prefix: pool.upstream_prefix,
        allocation_size: pool.allocation_size,
        total_allocations: pool.total,
        used_allocations: pool.used,
        available_allocations: pool.free,
        active_peers: peers.active,
        idle_peers: peers.idle,
        never_connected_peers: peers.never,
        status,
    })
}
