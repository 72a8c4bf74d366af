//! `GET /health`: the process answers (no token needed).

use axum::{Json, Router, routing::get};
use serde::Serialize;

use super::ApiState;

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
}

pub fn routes() -> Router<ApiState> {
    Router::new().route("/health", get(health))
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}
