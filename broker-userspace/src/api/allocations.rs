//! `GET /v1/allocations`, `GET` and `DELETE /v1/allocations/{prefix}`.
//!
//! The prefix is one path segment with its `/` encoded (`2001:db8::%2F120`)
//! or two (`2001:db8::/120`). A DELETE is the operator's release
//! ([`Handle::release`](crate::operator::Handle::release)): on chain, then
//! peer, route, NDP entry and database.

use alloy::primitives::Address;
use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::get,
};
use ipnet::Ipv6Net;
use serde::Serialize;

use super::{ApiError, ApiState};
use crate::operator::{AllocationView, PeerState, Released, control, release::slot_of};

/// One allocation under the names tools already use. Times are seconds
/// since the epoch.
#[derive(Serialize)]
pub struct AllocationBody {
    pub prefix: Ipv6Net,
    /// The client's WireGuard public key (base64).
    pub pubkey: String,
    /// The client's WireGuard endpoint (`ip:port`, `[v6]:port`): where its
    /// packets last came from; null before it sent any.
    pub endpoint: Option<String>,
    pub nft_contract: Address,
    pub allocated_at: u64,
    /// The peer's last handshake.
    pub last_seen_at: Option<u64>,
    /// `active`, `idle` or `never_connected`; null when the daemon could
    /// not read the peers.
    pub status: Option<&'static str>,
    pub request_id: u64,
    /// The requests contract.
    pub contract: Address,
}

impl From<&AllocationView> for AllocationBody {
    fn from(v: &AllocationView) -> Self {
        AllocationBody {
            prefix: v.prefix,
            pubkey: v.wireguard_key.clone(),
            endpoint: v.endpoint.map(|e| e.to_string()),
            nft_contract: v.nft_contract,
            allocated_at: v.allocated_at,
            last_seen_at: v.last_handshake,
            status: v.state.map(|s| match s {
                PeerState::Active => "active",
                PeerState::Idle => "idle",
                PeerState::Never => "never_connected",
            }),
            request_id: v.request_id,
            contract: v.contract,
        }
    }
}

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/allocations", get(list))
        .route("/v1/allocations/{prefix}", get(show).delete(release))
        .route(
            "/v1/allocations/{addr}/{len}",
            get(show_split).delete(release_split),
        )
}

/// Also the manager's (`/manager/api/allocations`).
pub(crate) async fn list(
    State(state): State<ApiState>,
) -> Result<Json<Vec<AllocationBody>>, ApiError> {
    let all = state.handle.allocations().await.map_err(internal)?;
    Ok(Json(all.iter().map(Into::into).collect()))
}

fn internal(message: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
}

/// `text` as one of the pool's allocation prefixes (400 otherwise).
fn prefix(state: &ApiState, text: &str) -> Result<Ipv6Net, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let prefix: Ipv6Net = text
        .parse()
        .map_err(|_| bad(format!("{text:?} is not an IPv6 prefix")))?;
    slot_of(&state.pool, prefix).map_err(|e| bad(e.to_string()))?;
    Ok(prefix)
}

fn not_found(prefix: Ipv6Net) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, control::unknown(prefix))
}

async fn show(
    State(state): State<ApiState>,
    Path(text): Path<String>,
) -> Result<Json<AllocationBody>, ApiError> {
    let prefix = prefix(&state, &text)?;
    let view = state
        .handle
        .allocation(prefix)
        .await
        .map_err(internal)?
        .ok_or_else(|| not_found(prefix))?;
    Ok(Json((&view).into()))
}

async fn release(
    State(state): State<ApiState>,
    Path(text): Path<String>,
) -> Result<StatusCode, ApiError> {
    release_prefix(&state, &text).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The daemon's release of the allocation `text` names, and what it did;
/// the manager's release too.
pub(crate) async fn release_prefix(state: &ApiState, text: &str) -> Result<Released, ApiError> {
    let prefix = prefix(state, text)?;
    if state
        .handle
        .allocation(prefix)
        .await
        .map_err(internal)?
        .is_none()
    {
        return Err(not_found(prefix));
    }
    match state.handle.release(prefix).await {
        Ok(released) => Ok(released),
        // Released meanwhile (by another asker).
        Err(e) if e == control::unknown(prefix) => Err(not_found(prefix)),
        Err(e) => Err(internal(e)),
    }
}

async fn show_split(
    state: State<ApiState>,
    Path((addr, len)): Path<(String, String)>,
) -> Result<Json<AllocationBody>, ApiError> {
    show(state, Path(format!("{addr}/{len}"))).await
}

async fn release_split(
    state: State<ApiState>,
    Path((addr, len)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    release(state, Path(format!("{addr}/{len}"))).await
}
