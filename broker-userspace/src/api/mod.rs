//! The HTTP API (`[api]`): the operator's surface over HTTP, for tools.
//!
//! One file per resource: [`health`], [`status`], [`allocations`]. Every
//! answer is JSON; every error is `{"error": "…"}` ([`ApiError`]). Reads come
//! from the snapshot the daemon publishes after every poll, a release is the
//! daemon's own ([`Handle::release`]), as for the control socket.
//!
//! Every `/v1` request needs a bearer token ([`auth`]); `/health` does not.
//!
//! Request bodies are bounded ([`MAX_BODY`]) and so is each client's rate
//! (per address: [`BURST`] requests at once, one more every
//! [`REPLENISH`]).
//!
//! The documented interface is `api/openapi.yaml`.

pub mod allocations;
pub mod auth;
pub mod health;
pub mod status;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use thiserror::Error;
use tokio::net::TcpListener;
use tower_governor::{GovernorLayer, governor::GovernorConfigBuilder};
use tower_http::limit::RequestBodyLimitLayer;
use tracing::info;

use crate::{config, ipam::Pool, operator::Handle};

/// The largest request body (no endpoint takes one yet).
pub const MAX_BODY: usize = 16 * 1024;
/// Requests a client may make at once…
pub const BURST: u32 = 50;
/// …and how often it gets one more.
pub const REPLENISH: Duration = Duration::from_millis(50);

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub handle: Handle,
    pub pool: Pool,
}

/// An error answer: its status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body {
            error: String,
        }
        (
            self.status,
            Json(Body {
                error: self.message,
            }),
        )
            .into_response()
    }
}

#[derive(Debug, Error)]
#[error("HTTP API: binding {listen}")]
pub struct BindError {
    listen: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// The routes, with their limits.
pub fn router(state: ApiState) -> Router {
    let governor = GovernorConfigBuilder::default()
        .period(REPLENISH)
        .burst_size(BURST)
        .finish()
        .expect("a non-zero period and burst");
    let v1 = Router::new()
        .merge(status::routes())
        .merge(allocations::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .merge(health::routes())
        .merge(v1)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        .layer(GovernorLayer::new(Arc::new(governor)))
}

/// The API's listening socket, bound at start-up (so a taken port stops
/// the daemon there, not later).
pub struct ApiServer {
    listener: TcpListener,
    state: ApiState,
}

impl ApiServer {
    pub async fn bind(
        api: &config::Api,
        handle: Handle,
        pool: Pool,
    ) -> Result<ApiServer, BindError> {
        let listener = TcpListener::bind(api.listen)
            .await
            .map_err(|source| BindError {
                listen: api.listen,
                source,
            })?;
        Ok(ApiServer {
            listener,
            state: ApiState { handle, pool },
        })
    }

    /// Serves until the task running this is dropped.
    pub async fn serve(self) {
        let address = self.listener.local_addr().ok();
        info!(listen = ?address, "HTTP API ready");
        let app = router(self.state).into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(self.listener, app).await {
            tracing::warn!("HTTP API stopped: {e}");
        }
    }
}
