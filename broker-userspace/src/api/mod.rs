//! The HTTP API (`[api]`): the operator's surface over HTTP, for tools.
//!
//! One file per resource: [`health`], [`status`], [`allocations`]. Every
//! answer is JSON; every error is `{"error": "…"}` ([`ApiError`]). Reads come
//! from the snapshot the daemon publishes after every poll, a release is the
//! daemon's own ([`Handle::release`]), as for the control socket.
//!
//! Every `/v1` request needs a bearer token ([`auth`]); `/health` does not,
//! nor does `/metrics` ([`metrics`]) when the API listens on loopback.
//!
//! Request bodies are bounded ([`MAX_BODY`]) and so is each client's rate
//! (per address: [`BURST`] requests at once, one more every
//! [`REPLENISH`]).
//!
//! Served over HTTPS when `[api] tls_cert` and `tls_key` are given (rustls);
//! plain HTTP only on loopback, or where the operator set
//! `insecure_plaintext` (checked with the configuration).
//!
//! The documented interface is `api/openapi.yaml`.

pub mod allocations;
pub mod auth;
pub mod health;
pub mod metrics;
pub mod status;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use axum_server::tls_rustls::RustlsConfig;
use serde::Serialize;
use thiserror::Error;
use tower_governor::{GovernorLayer, governor::GovernorConfigBuilder};
use tower_http::limit::RequestBodyLimitLayer;
use tracing::{info, warn};

use crate::{config, ipam::Pool, manager, operator::Handle};

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
    /// The API listens on loopback: `/metrics` needs no token.
    pub loopback: bool,
    /// Served over TLS (the manager's cookies are then Secure).
    pub tls: bool,
    /// The web manager under `/manager/` ([`crate::manager`]).
    pub manager: Arc<manager::Manager>,
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
pub enum BindError {
    #[error("HTTP API: binding {listen}")]
    Bind {
        listen: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP API: the web manager")]
    Manager(#[from] manager::session::KeyFileError),
    #[error("HTTP API: TLS certificate {cert} and key {key}")]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The routes, with their limits.
pub fn router(state: ApiState) -> Router {
    let governor = GovernorConfigBuilder::default()
        .period(REPLENISH)
        .burst_size(BURST)
        .finish()
        .expect("a non-zero period and burst");
    let require_token = || axum::middleware::from_fn_with_state(state.clone(), auth::require_token);
    let v1 = Router::new()
        .merge(status::routes())
        .merge(allocations::routes())
        .route_layer(require_token());
    let metrics = if state.loopback {
        metrics::routes()
    } else {
        metrics::routes().route_layer(require_token())
    };
    Router::new()
        .merge(health::routes())
        .merge(v1)
        .merge(metrics)
        .merge(manager::routes(&state))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        .layer(GovernorLayer::new(Arc::new(governor)).error_handler(|e| {
            // Its answer (429 with Retry-After), as JSON.
            let (parts, message) = e.into_response().into_parts();
            let mut response = ApiError::new(parts.status, message).into_response();
            response.headers_mut().extend(parts.headers);
            response
        }))
}

/// The API's listening socket and TLS configuration.
pub struct ApiServer {
    listener: std::net::TcpListener,
    /// None: plain HTTP.
    tls: Option<RustlsConfig>,
    manager: manager::Manager,
}

impl ApiServer {
    /// Loads the TLS certificate and the manager's session key and binds
    /// the address: before the daemon touches anything, so a bad `[api]`
    /// stops it at once.
    pub async fn bind(api: &config::Api, config: &config::Config) -> Result<ApiServer, BindError> {
        let manager = manager::Manager::open(config)?;
        let tls = match (&api.tls_cert, &api.tls_key) {
            (Some(cert), Some(key)) => Some(RustlsConfig::from_pem_file(cert, key).await.map_err(
                |source| BindError::Tls {
                    cert: cert.clone(),
                    key: key.clone(),
                    source,
                },
            )?),
            _ => None,
        };
        let bind = |source| BindError::Bind {
            listen: api.listen,
            source,
        };
        let listener = std::net::TcpListener::bind(api.listen).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        Ok(ApiServer {
            listener,
            tls,
            manager,
        })
    }

    /// Serves the daemon behind `handle` until the task running this is
    /// dropped.
    pub async fn serve(self, handle: Handle, pool: Pool) {
        let address = self.listener.local_addr().ok();
        let state = ApiState {
            handle,
            pool,
            loopback: address.is_some_and(|a| a.ip().is_loopback()),
            tls: self.tls.is_some(),
            manager: Arc::new(self.manager),
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        info!(listen = ?address, scheme, "HTTP API ready");
        let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
        let served = match self.tls {
            Some(tls) => match axum_server::from_tcp_rustls(self.listener, tls) {
                Ok(server) => server.serve(app).await,
                Err(e) => Err(e),
            },
            None => match axum_server::from_tcp(self.listener) {
                Ok(server) => server.serve(app).await,
                Err(e) => Err(e),
            },
        };
        if let Err(e) = served {
            warn!("HTTP API stopped: {e}");
        }
    }
}
