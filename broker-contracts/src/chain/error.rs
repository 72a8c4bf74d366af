//! The one vocabulary of chain failures, and how a node's answer becomes
//! one. Every error is one line naming the call, and says by its variant what
//! the caller should do.

use alloy::{
    primitives::{TxHash, U256},
    sol_types::{ContractError, SolInterface as _},
    transports::{RpcError, TransportError},
};
use thiserror::Error;

use super::{provider::RpcTimeout, redact::Endpoint};
use crate::{
    BrokerRequests::BrokerRequestsErrors,
    error_text::{describe, one_line},
};

#[derive(Debug, Error)]
pub enum ChainError {
    /// Settings that cannot work (an unusable RPC URL, no signer for a
    /// transaction).
    #[error("{0}")]
    Config(String),
    #[error("wrong chain: {url} serves chain {actual}, not chain {expected}")]
    WrongChain {
        url: String,
        expected: u64,
        actual: u64,
    },
    /// Unreachable or slow endpoint, or a refusal of the node's own (rate
    /// limit, nonce, funds, missing state, no receipt in time): retry later.
    #[error("{call}: {reason}")]
    Transient { call: String, reason: String },
    /// The contract refused (a transaction, its simulation before sending,
    /// or a view call): the same call will fail again, never retry it. `tx`
    /// is the transaction when it was mined and reverted.
    #[error("{call}: reverted: {reason}")]
    Reverted {
        call: String,
        reason: String,
        tx: Option<TxHash>,
    },
    /// An answer the broker cannot represent or decode (an id above
    /// `u64::MAX`, an unknown status, no contract at the address): a
    /// misconfiguration or a foreign contract.
    #[error("{call}: unusable answer: {reason}")]
    BadData { call: String, reason: String },
}

impl ChainError {
    /// Worth retrying later.
    pub fn is_transient(&self) -> bool {
        matches!(self, ChainError::Transient { .. })
    }

    /// The contract refused; retrying cannot help.
    pub fn is_reverted(&self) -> bool {
        matches!(self, ChainError::Reverted { .. })
    }

    /// The contract's own reason, for a revert.
    pub fn revert_reason(&self) -> Option<&str> {
        match self {
            ChainError::Reverted { reason, .. } => Some(reason),
            _ => None,
        }
    }

    pub fn bad_data(call: &str, reason: impl Into<String>) -> Self {
        ChainError::BadData {
            call: call.to_string(),
            reason: reason.into(),
        }
    }

    pub fn transient(call: &str, reason: impl Into<String>) -> Self {
        ChainError::Transient {
            call: call.to_string(),
            reason: reason.into(),
        }
    }
}

/// A node's error answer is a revert when it says so: code 3 (geth's
/// execution error) or a message with "revert".
pub(crate) fn is_revert(code: i64, message: &str) -> bool {
    code == 3 || message.to_ascii_lowercase().contains("revert")
}

/// A revert is the contract's refusal; the layer's timeout is a slow
/// endpoint; any other failure is the node's or the network's trouble.
pub(crate) fn classify(endpoint: &Endpoint, call: &str, e: TransportError) -> ChainError {
    match e {
        RpcError::ErrorResp(payload) if is_revert(payload.code, &payload.message) => {
            let reason = match payload.as_revert_data() {
                Some(data) => revert_reason(&data),
                None => endpoint.redact(one_line(&payload.message)),
            };
            ChainError::Reverted {
                call: call.to_string(),
                reason,
                tx: None,
            }
        }
        RpcError::ErrorResp(payload) => ChainError::transient(
            call,
            format!(
                "the node refused: {} (code {})",
                endpoint.redact(one_line(&payload.message)),
                payload.code
            ),
        ),
        other => match timeout_of(&other) {
            Some(timeout) => ChainError::transient(
                call,
                format!(
                    "no answer from {} in {:.1}s",
                    endpoint.shown(),
                    timeout.0.as_secs_f64()
                ),
            ),
            // The retry layer gave up on a rate limit: reachable, but
            // refusing for now.
            None if describe(&other).starts_with(RETRIES_EXCEEDED) => ChainError::transient(
                call,
                format!(
                    "the RPC endpoint {} is rate limiting: {}",
                    endpoint.shown(),
                    endpoint.redact(describe(&other))
                ),
            ),
            None => ChainError::transient(
                call,
                format!(
                    "cannot reach the RPC endpoint {}: {}",
                    endpoint.shown(),
                    endpoint.redact(describe(&other))
                ),
            ),
        },
    }
}

/// How alloy's `RetryBackoffLayer` starts its error when it gives up.
const RETRIES_EXCEEDED: &str = "Max retries exceeded";

fn timeout_of(e: &TransportError) -> Option<&RpcTimeout> {
    match e {
        RpcError::Transport(kind) => kind.as_custom()?.downcast_ref::<RpcTimeout>(),
        _ => None,
    }
}

/// A view call through the generated bindings: transport trouble as
/// [`classify`]; an answer that does not decode (or no answer data: no
/// contract there) is [`ChainError::BadData`].
pub(crate) fn classify_call(
    endpoint: &Endpoint,
    call: &str,
    e: alloy::contract::Error,
) -> ChainError {
    match e {
        alloy::contract::Error::TransportError(e) => classify(endpoint, call, e),
        alloy::contract::Error::ZeroData(..) => ChainError::bad_data(
            call,
            "no answer data (is there a contract at that address?)",
        ),
        other => ChainError::bad_data(call, endpoint.redact(describe(&other))),
    }
}

/// Revert data as text: `Error(string)`'s message, a panic, one of the
/// contracts' custom errors (decoded by the `sol!` bindings), or the raw
/// selector.
pub fn revert_reason(data: &[u8]) -> String {
    if data.is_empty() {
        return "no reason given".into();
    }
    match ContractError::<BrokerRequestsErrors>::abi_decode(data) {
        Ok(ContractError::Revert(revert)) => one_line(revert.reason()),
        Ok(ContractError::Panic(panic)) => panic.to_string(),
        Ok(ContractError::CustomError(BrokerRequestsErrors::OwnableUnauthorizedAccount(e))) => {
            format!(
                "OwnableUnauthorizedAccount({}): that key does not own the contract",
                e.account
            )
        }
        Ok(ContractError::CustomError(BrokerRequestsErrors::OwnableInvalidOwner(e))) => {
            format!("OwnableInvalidOwner({})", e.owner)
        }
        Err(_) => {
            let shown = &data[..data.len().min(36)];
            format!(
                "custom error 0x{}{}",
                alloy::hex::encode(shown),
                if data.len() > shown.len() { "…" } else { "" }
            )
        }
    }
}

/// A uint256 from the chain as a u64, or an error naming what it was.
pub fn to_u64(call: &str, what: &str, value: U256) -> Result<u64, ChainError> {
    u64::try_from(value)
        .map_err(|_| ChainError::bad_data(call, format!("{what} {value} does not fit in 64 bits")))
}

#[cfg(test)]
mod tests {
    use alloy::{
        primitives::Address,
        rpc::json_rpc::ErrorPayload,
        sol_types::{Panic, Revert, SolError as _},
        transports::TransportErrorKind,
    };

    use super::*;
    use crate::BrokerRequests;

    fn endpoint() -> Endpoint {
        Endpoint::parse("https://rpc.example/v3/secret-key")
            .unwrap()
            .0
    }

    fn node_error(code: i64, message: &str, data: Option<&[u8]>) -> TransportError {
        let data =
            data.map(|d| serde_json::value::to_raw_value(&alloy::hex::encode_prefixed(d)).unwrap());
        RpcError::ErrorResp(ErrorPayload {
            code,
            message: message.to_string().into(),
            data,
        })
    }

    #[test]
    fn u256_to_u64_rejects_what_does_not_fit() {
        assert_eq!(to_u64("c", "id", U256::from(u64::MAX)).unwrap(), u64::MAX);
        let e = to_u64(
            "getRequestCount() on X",
            "request count",
            U256::from(u64::MAX) + U256::from(1),
        )
        .unwrap_err();
        assert!(matches!(e, ChainError::BadData { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "getRequestCount() on X: unusable answer: request count 18446744073709551616 does not fit in 64 bits"
        );
        assert!(to_u64("c", "id", U256::MAX).is_err());
    }

    #[test]
    fn revert_reasons() {
        assert_eq!(
            revert_reason(&Revert::from("Request not pending").abi_encode()),
            "Request not pending"
        );
        assert_eq!(revert_reason(&[]), "no reason given");
        let account = Address::repeat_byte(0x11);
        let data = BrokerRequests::OwnableUnauthorizedAccount { account }.abi_encode();
        assert!(
            revert_reason(&data).starts_with(&format!("OwnableUnauthorizedAccount({account})")),
            "{}",
            revert_reason(&data)
        );
        let data = BrokerRequests::OwnableInvalidOwner { owner: account }.abi_encode();
        assert_eq!(
            revert_reason(&data),
            format!("OwnableInvalidOwner({account})")
        );
        assert_eq!(revert_reason(&[1, 2, 3, 4]), "custom error 0x01020304");
        let long = revert_reason(&[0xab; 100]);
        assert!(long.ends_with('…') && long.len() < 100, "{long}");
        let panic = Panic::from(U256::from(0x11)).abi_encode();
        assert!(
            revert_reason(&panic).starts_with("panic: "),
            "{}",
            revert_reason(&panic)
        );
    }

    #[test]
    fn node_answers_are_classified() {
        let endpoint = endpoint();
        // A revert with data: the decoded reason.
        let data = Revert::from("Request not pending").abi_encode();
        let e = classify(
            &endpoint,
            "submitResponse(1) on X",
            node_error(3, "execution reverted: Request not pending", Some(&data)),
        );
        assert!(matches!(e, ChainError::Reverted { tx: None, .. }), "{e:?}");
        assert_eq!(e.revert_reason(), Some("Request not pending"));
        assert_eq!(
            e.to_string(),
            "submitResponse(1) on X: reverted: Request not pending"
        );
        // A revert named only in the message (no data): the message.
        let e = classify(
            &endpoint,
            "c",
            node_error(-32000, "execution reverted", None),
        );
        assert!(e.is_reverted(), "{e:?}");
        assert_eq!(e.revert_reason(), Some("execution reverted"));
        // Any other error answer is the node's own: retry later.
        let e = classify(
            &endpoint,
            "c",
            node_error(
                -32000,
                "nonce too low at https://rpc.example/v3/secret-key",
                None,
            ),
        );
        assert!(e.is_transient(), "{e:?}");
        assert_eq!(
            e.to_string(),
            "c: the node refused: nonce too low at https://rpc.example (code -32000)"
        );
        // Transport trouble and the timeout layer's error.
        let e = classify(
            &endpoint,
            "eth_chainId",
            TransportErrorKind::custom_str(
                "error sending request for url (https://rpc.example/v3/secret-key)",
            ),
        );
        assert!(e.is_transient(), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("eth_chainId: cannot reach the RPC endpoint https://rpc.example: "),
            "{e}"
        );
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = classify(
            &endpoint,
            "eth_chainId",
            TransportErrorKind::custom(RpcTimeout(std::time::Duration::from_millis(1500))),
        );
        assert_eq!(
            e.to_string(),
            "eth_chainId: no answer from https://rpc.example in 1.5s"
        );
    }

    #[test]
    fn undecodable_answers_are_bad_data() {
        let endpoint = endpoint();
        let zero = alloy::contract::Error::ZeroData(
            "getRequestCount".into(),
            alloy::sol_types::Error::Overrun.into(),
        );
        let e = classify_call(&endpoint, "getRequestCount() on X", zero);
        assert!(matches!(e, ChainError::BadData { .. }), "{e:?}");
        assert!(e.to_string().contains("no answer data"), "{e}");
        let e = classify_call(
            &endpoint,
            "c",
            alloy::contract::Error::TransportError(node_error(3, "execution reverted", None)),
        );
        assert!(e.is_reverted(), "{e:?}");
    }

    #[test]
    fn reasons_are_one_short_line() {
        let data =
            Revert::from(format!("first {}\nsecond", "x".repeat(1000)).as_str()).abi_encode();
        let reason = revert_reason(&data);
        assert!(!reason.contains('\n'));
        assert_eq!(reason.chars().count(), crate::error_text::MAX_REASON + 1);
    }
}
