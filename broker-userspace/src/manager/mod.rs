//! The web manager: a page for the operator, served on the `[api]` listener
//! under `/manager/`, for the wallets in `[manager] admins`.
//!
//! Login is Sign-In with Ethereum ([`siwe`], [`login`]): the server issues a
//! nonce bound to a short-lived cookie and builds the whole message (domain,
//! URI, chain id, issued-at, expiration); the page has the browser wallet
//! sign it; the server recovers the signer, checks it against the admins
//! and sets a signed session cookie ([`session`]). Every state-changing
//! request also carries the session's CSRF token in a header, and its
//! `Origin`, when the browser sends one, must be this manager's.
//!
//! What the page shows and does comes from the API's own handlers
//! (`crate::api`): the same status, the same allocations, the same release
//! through the daemon (one release path, one nonce).

pub mod login;
mod pages;
pub mod session;
pub mod siwe;

use std::{sync::Arc, time::Duration};

use alloy::primitives::Address;
use axum::{
    Extension, Json, Router,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use serde::{Deserialize, Serialize};
use tower_governor::{GovernorLayer, governor::GovernorConfigBuilder};

use crate::{
    api::{ApiError, ApiState, allocations, status},
    config::Config,
    operator::Released,
    store::{audit, now},
};
use login::{Expected, Logins, NONCE_SECS};
use session::{KeyFileError, Session, SessionError, Sessions};

/// The cookie holding the login's nonce.
pub const LOGIN_COOKIE: &str = "bhb_login";
/// The session's cookie.
pub const SESSION_COOKIE: &str = "bhb_session";
/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Login requests a client may make at once…
pub const LOGIN_BURST: u32 = 20;
/// …and how often it gets one more.
pub const LOGIN_REPLENISH: Duration = Duration::from_secs(3);

/// The manager's part of the API's state.
pub struct Manager {
    pub admins: Vec<Address>,
    pub session_secs: u64,
    pub chain_id: u64,
    /// The chain's RPC endpoint for the wallet's `wallet_addEthereumChain`,
    /// when it holds nothing secret (no path, query or credentials: those
    /// are where providers put API keys).
    pub public_rpc_url: Option<String>,
    pub sessions: Sessions,
    pub logins: Logins,
}

impl Manager {
    /// The manager of `config`, its session key in the state directory.
    pub fn open(config: &Config) -> Result<Manager, KeyFileError> {
        let dir = config
            .database
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        Ok(Manager {
            admins: config.manager.admins.clone(),
            session_secs: config.manager.session_secs,
            chain_id: config.onchain.chain_id,
            public_rpc_url: public_rpc_url(&config.onchain.rpc_url),
            sessions: Sessions::open(dir)?,
            logins: Logins::default(),
        })
    }
}

fn public_rpc_url(url: &str) -> Option<String> {
    let parsed = alloy::transports::http::reqwest::Url::parse(url).ok()?;
    let plain = matches!(parsed.scheme(), "http" | "https")
        && parsed.username().is_empty()
        && parsed.password().is_none()
        && matches!(parsed.path(), "" | "/")
        && parsed.query().is_none();
    plain.then(|| url.to_string())
}

pub fn routes(state: &ApiState) -> Router<ApiState> {
    let governor = GovernorConfigBuilder::default()
        .period(LOGIN_REPLENISH)
        .burst_size(LOGIN_BURST)
        .finish()
        .expect("a non-zero period and burst");
    let login = Router::new()
        .route("/manager/api/login", get(begin_login).post(finish_login))
        .layer(GovernorLayer::new(Arc::new(governor)).error_handler(|e| {
            let (parts, _) = e.into_response().into_parts();
            let mut response = ApiError::new(
                parts.status,
                "too many login attempts from this address: wait a little",
            )
            .into_response();
            response.headers_mut().extend(parts.headers);
            response
        }));
    let signed_in = Router::new()
        .route("/manager/api/session", get(session_info))
        .route("/manager/api/logout", post(logout))
        .route("/manager/api/status", get(status::status))
        .route("/manager/api/allocations", get(allocations::list))
        .route("/manager/api/requests", get(recent_requests))
        .route("/manager/api/allocations/{prefix}", delete(release))
        .route(
            "/manager/api/allocations/{addr}/{len}",
            delete(release_split),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_session,
        ));
    Router::new()
        .merge(pages::routes())
        .merge(login)
        .merge(signed_in)
}

/// The host the browser asked for (`Host`, or HTTP/2's `:authority`, which
/// arrives in the request's URI: browsers speak HTTP/2 over TLS).
fn host(headers: &HeaderMap, request_uri: Option<&Uri>) -> Option<String> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| request_uri?.authority().map(|a| a.to_string()))
}

fn origin_of(state: &ApiState, host: &str) -> String {
    let scheme = if state.tls { "https" } else { "http" };
    format!("{scheme}://{host}")
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, for the manager's
/// paths only, Secure over TLS.
fn set_cookie(state: &ApiState, name: &str, value: &str, max_age: u64) -> HeaderValue {
    let secure = if state.tls { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Max-Age={max_age}; Path=/manager/; HttpOnly; SameSite=Strict{secure}"
    ))
    .expect("cookie values are hex, dots and digits")
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

#[derive(Deserialize)]
struct BeginQuery {
    address: Option<String>,
}

#[derive(Serialize)]
struct Challenge {
    message: String,
    expires_at: u64,
}

/// `GET /manager/api/login?address=0x…`: the message to sign, its nonce in
/// the login cookie.
async fn begin_login(
    State(state): State<ApiState>,
    Query(query): Query<BeginQuery>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let manager = &state.manager;
    if manager.admins.is_empty() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            login::Refusal::Closed.to_string(),
        ));
    }
    let text = query
        .address
        .ok_or_else(|| bad_request("give the wallet's address: ?address=0x…"))?;
    let address: Address = text
        .parse()
        .map_err(|_| bad_request(format!("{text:?} is not an Ethereum address")))?;
    let host = host(&headers, Some(&uri)).ok_or_else(|| bad_request("no Host header"))?;
    let now = now();
    let nonce = manager.logins.issue(now);
    let message = siwe::Message {
        uri: format!("{}/manager/", origin_of(&state, &host)),
        domain: host,
        address,
        chain_id: manager.chain_id,
        nonce: nonce.clone(),
        issued_at: now,
        expiration: now + NONCE_SECS,
    };
    let mut response = Json(Challenge {
        message: message.text(),
        expires_at: message.expiration,
    })
    .into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&state, LOGIN_COOKIE, &nonce, NONCE_SECS),
    );
    Ok(response)
}

#[derive(Deserialize)]
struct Signed {
    message: String,
    signature: String,
}

#[derive(Serialize)]
struct SessionBody {
    address: Address,
    csrf: String,
    expires_at: u64,
    chain_id: u64,
    /// For `wallet_addEthereumChain`; null when the endpoint may hold a
    /// secret.
    rpc_url: Option<String>,
}

impl SessionBody {
    fn of(state: &ApiState, session: &Session) -> SessionBody {
        SessionBody {
            address: session.address,
            csrf: state.manager.sessions.csrf(session),
            expires_at: session.expires,
            chain_id: state.manager.chain_id,
            rpc_url: state.manager.public_rpc_url.clone(),
        }
    }
}

/// `POST /manager/api/login` with the signed message: the session.
async fn finish_login(
    State(state): State<ApiState>,
    uri: Uri,
    headers: HeaderMap,
    Json(signed): Json<Signed>,
) -> Result<Response, ApiError> {
    let host = host(&headers, Some(&uri)).ok_or_else(|| bad_request("no Host header"))?;
    let origin = origin_of(&state, &host);
    check_origin(&headers, &origin)?;
    let manager = &state.manager;
    let now = now();
    let uri = format!("{origin}/manager/");
    let expected = Expected {
        domain: &host,
        uri: &uri,
        chain_id: manager.chain_id,
        admins: &manager.admins,
        now,
        cookie_nonce: cookie(&headers, LOGIN_COOKIE),
    };
    let admin = manager
        .logins
        .verify(&signed.message, &signed.signature, &expected)
        .map_err(|refusal| {
            tracing::info!("manager login refused: {refusal}");
            ApiError::new(StatusCode::FORBIDDEN, format!("login refused: {refusal}"))
        })?;
    let (session, value) = manager.sessions.issue(admin, now + manager.session_secs);
    tracing::info!(%admin, "manager login");
    let mut response = Json(SessionBody::of(&state, &session)).into_response();
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, &value, manager.session_secs),
    );
    headers.append(header::SET_COOKIE, set_cookie(&state, LOGIN_COOKIE, "", 0));
    Ok(response)
}

/// A browser's `Origin`, when sent, must be this manager's.
fn check_origin(headers: &HeaderMap, origin: &str) -> Result<(), ApiError> {
    match headers.get(header::ORIGIN).map(|o| o.to_str()) {
        None => Ok(()),
        Some(Ok(o)) if o == origin => Ok(()),
        Some(o) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "a request from {} is refused: only the manager's own page ({origin}) may ask",
                o.unwrap_or("?")
            ),
        )),
    }
}

/// The session of the cookie, in the request's extensions; refused without
/// one, and a change without the CSRF token or from another origin.
async fn require_session(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let session = match state
        .manager
        .sessions
        .check(cookie(headers, SESSION_COOKIE), now())
    {
        Ok(session) => session,
        Err(e) => {
            let mut response =
                ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()).into_response();
            if e != SessionError::Missing {
                response.headers_mut().insert(
                    header::SET_COOKIE,
                    set_cookie(&state, SESSION_COOKIE, "", 0),
                );
            }
            return response;
        }
    };
    // A wallet removed from the admins (and the daemon restarted) is out.
    if !state.manager.admins.contains(&session.address) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            login::Refusal::NotAdmin(session.address).to_string(),
        )
        .into_response();
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let Some(host) = host(headers, Some(request.uri())) else {
            return bad_request("no Host header").into_response();
        };
        if let Err(e) = check_origin(headers, &origin_of(&state, &host)) {
            return e.into_response();
        }
        let presented = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        if !state.manager.sessions.csrf_matches(&session, presented) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "a change needs the session's CSRF token in {CSRF_HEADER}: reload the page"
                ),
            )
            .into_response();
        }
    }
    request.extensions_mut().insert(session);
    next.run(request).await
}

/// `GET /manager/api/session`: who is signed in, and the CSRF token.
async fn session_info(
    State(state): State<ApiState>,
    Extension(session): Extension<Session>,
) -> Json<SessionBody> {
    Json(SessionBody::of(&state, &session))
}

/// `POST /manager/api/logout`: the session ends, here and in the browser.
async fn logout(State(state): State<ApiState>, Extension(session): Extension<Session>) -> Response {
    state.manager.sessions.end(&session);
    tracing::info!(admin = %session.address, "manager logout");
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, "", 0),
    );
    response
}

/// `GET /manager/api/requests`: the audit log's last entries, newest
/// first (what the daemon did with the recent requests, and why).
async fn recent_requests(State(state): State<ApiState>) -> Json<Vec<audit::Entry>> {
    let mut recent = state.handle.snapshot().recent.clone();
    recent.reverse();
    Json(recent)
}

/// `DELETE /manager/api/allocations/{prefix}`: the API's release, with what
/// it did.
async fn release(
    State(state): State<ApiState>,
    Extension(session): Extension<Session>,
    Path(text): Path<String>,
) -> Result<Json<Released>, ApiError> {
    tracing::info!(admin = %session.address, prefix = %text, "manager release");
    allocations::release_prefix(&state, &text).await.map(Json)
}

async fn release_split(
    state: State<ApiState>,
    session: Extension<Session>,
    Path((addr, len)): Path<(String, String)>,
) -> Result<Json<Released>, ApiError> {
    release(state, session, Path(format!("{addr}/{len}"))).await
}
