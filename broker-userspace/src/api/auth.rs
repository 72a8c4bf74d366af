//! Bearer tokens: `Authorization: Bearer bhb_…` on every `/v1` request.
//!
//! A token is 32 random bytes (hex, after [`PREFIX`]), shown once when made
//! (`blockhost-broker token create`); the store keeps its SHA-256 only
//! (enough for a secret of that entropy: nothing to brute-force). A request
//! is checked against the tokens the daemon publishes
//! ([`Handle::tokens`](crate::operator::Handle::tokens)), so a revoked token
//! is refused from the moment its revocation returns. Hashes are compared in
//! constant time, with every token, so timing tells nothing about them.

use axum::{
    extract::{Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::{ApiError, ApiState};
use crate::store::tokens::Token;

/// How every token starts (recognisable in a leaked file or log).
pub const PREFIX: &str = "bhb_";

/// A new secret.
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{PREFIX}{}", hex::encode(bytes))
}

/// What the store keeps of `secret`.
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The token `presented` is, if any.
pub fn find<'a>(tokens: &'a [Token], presented: &str) -> Option<&'a Token> {
    let presented = hash(presented);
    // No early exit: every hash is compared.
    tokens.iter().fold(None, |found, token| {
        if bool::from(token.hash.ct_eq(&presented)) {
            Some(token)
        } else {
            found
        }
    })
}

/// 401 without a valid token, 403 when a read-only token asks for a change.
pub async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let tokens = state.handle.tokens();
    let Some(token) = presented.and_then(|p| find(&tokens, p)) else {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a valid token is needed: Authorization: Bearer <token> (blockhost-broker token create)",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    };
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if token.read_only && !reads {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!("token {:?} is read-only", token.name),
        )
        .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_found_by_its_hash_only() {
        let secret = generate();
        assert!(secret.starts_with(PREFIX) && secret.len() == PREFIX.len() + 64);
        assert_ne!(generate(), secret);
        let token = |name: &str, secret: &str| Token {
            name: name.into(),
            hash: hash(secret),
            read_only: false,
            created_at: 0,
        };
        let tokens = [token("a", &generate()), token("b", &secret)];
        assert_eq!(find(&tokens, &secret).unwrap().name, "b");
        assert!(find(&tokens, &generate()).is_none());
        assert!(find(&tokens, "").is_none());
        assert!(find(&[], &secret).is_none());
    }
}
