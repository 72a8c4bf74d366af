//! The page and its script and style, embedded in the binary: nothing is
//! fetched from anywhere else (no CDN), and the Content-Security-Policy says
//! so to the browser.

use axum::{
    Router,
    http::{HeaderValue, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};

use crate::api::ApiState;

const INDEX: &str = include_str!("static/index.html");
const SCRIPT: &str = include_str!("static/manager.js");
const STYLE: &str = include_str!("static/manager.css");
const ICON: &[u8] = include_bytes!("static/favicon.svg");

/// Only this origin's own files; no inline script; no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/manager",
            get(|| async { Redirect::permanent("/manager/") }),
        )
        .route(
            "/manager/",
            get(|| async { asset("text/html; charset=utf-8", INDEX.as_bytes()) }),
        )
        .route(
            "/manager/manager.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT.as_bytes()) }),
        )
        .route(
            "/manager/manager.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE.as_bytes()) }),
        )
        .route(
            "/manager/favicon.svg",
            get(|| async { asset("image/svg+xml", ICON) }),
        )
}

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
