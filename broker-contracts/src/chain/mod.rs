//! Chain access for every part of the broker: the daemon, the client,
//! `deploy-requests`, the development chain (and whatever comes next). One
//! [`Connection`] per endpoint; what lives where:
//!
//! - [`provider`]: the [`Connection`] and its builder: alloy's `ClientBuilder`
//!   with a retry layer (rate limits, with backoff) over a timeout layer (one
//!   bound per RPC request), the chain id checked at connect, an optional
//!   signer; [`ChainOptions`] (timeouts, margins, log ranges).
//! - [`error`]: [`ChainError`], the one vocabulary of failures, and how a
//!   node's answer is classified: [`ChainError::Transient`] (retry later),
//!   [`ChainError::Reverted`] (the contract refused; the reason decoded from
//!   `Error(string)`, a panic code or the contracts' custom errors),
//!   [`ChainError::BadData`] (an answer the broker cannot use), plus
//!   [`ChainError::Config`] / [`ChainError::WrongChain`] from connecting.
//! - [`redact`]: the endpoint as errors show it (scheme, host and port: paths
//!   and queries of hosted endpoints carry API keys) and the RPC URL check.
//! - [`sender`]: transactions: gas estimate plus margin, EIP-1559 or legacy
//!   fees, the nonce under a lock, the receipt wait (backoff, timeout, and
//!   an early end when the owner stops); the cost a transaction may reach.
//! - [`erc721`]: the NFT checks of `submitRequest`, through a minimal
//!   `IERC721` / `Ownable` interface of their own, decoded leniently.
//!
//! Calls read like the Solidity they call:
//! `conn.view(&call, BrokerRequests::new(addr, conn.provider()).getRequestCount().block(at).call())`.
//! `call` names the call in errors ("getRequestCount() on 0x… at block 12").

pub mod erc721;
pub mod error;
pub mod provider;
pub mod redact;
pub mod sender;

pub use erc721::NftCheck;
pub use error::{ChainError, revert_reason, to_u64};
pub use provider::{ChainOptions, Connection};
pub use redact::parse_rpc_url;
pub use sender::{Cost, Fees, Prepared, Signed, TxState, ether};
