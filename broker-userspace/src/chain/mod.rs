//! The daemon's access to the chain: reads of the requests contracts (V2 and
//! legacy V1) at a confirmed block, NFT checks, the operator's transactions
//! and the `AllocationReleased` events.
//!
//! Every RPC call is bounded by [`ChainOptions::rpc_timeout`]; every error is
//! one line naming the call, the contract and the id, and says by its variant
//! what the caller should do:
//!
//! - [`ChainError::Transient`]: the endpoint is unreachable, slow, or refused
//!   for a reason of its own (rate limit, nonce, funds, missing state, no
//!   receipt in time): retry later;
//! - [`ChainError::Reverted`]: the contract refused (a transaction, or its
//!   simulation before sending, or a view call): the same call will fail
//!   again, never retry it;
//! - [`ChainError::BadData`]: the chain answered something the broker cannot
//!   represent (an id above `u64::MAX`, an unknown status, undecodable data,
//!   no contract at the address): a misconfiguration or a foreign contract;
//! - [`ChainError::Config`] / [`ChainError::WrongChain`]: from
//!   [`Chain::connect`] only.

mod events;
mod nft;
mod requests;
mod transactions;

use std::{
    fmt,
    future::IntoFuture,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use alloy::{
    eips::BlockId,
    network::{EthereumWallet, TransactionBuilder as _},
    primitives::{Address, B256, Bytes, TxHash, U256},
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::types::TransactionRequest,
    signers::local::PrivateKeySigner,
    sol_types::{Panic, Revert, SolCall, SolError as _, SolInterface},
    transports::{RpcError, TransportError},
};
use broker_contracts::{BrokerRequests, deploy::parse_rpc_url};
use thiserror::Error;

pub use events::Released;
pub use nft::NftCheck;
pub use requests::{OnchainRequest, RequestStatus};

use crate::config;
pub(crate) use broker_contracts::error_text::{describe, one_line};

#[derive(Debug, Error)]
pub enum ChainError {
    /// The `[onchain]` settings cannot work (an unusable RPC URL).
    #[error("invalid [onchain] settings: {0}")]
    Config(String),
    #[error("wrong chain: {url} serves chain {actual}, not chain {expected}")]
    WrongChain {
        url: String,
        expected: u64,
        actual: u64,
    },
    /// Unreachable or slow endpoint, or a refusal of the node's own (not the
    /// contract's): retry later.
    #[error("{call}: {reason}")]
    Transient { call: String, reason: String },
    /// The contract refused: permanent, never retry the same call. `tx` is
    /// the transaction when it was mined and reverted (None when the
    /// simulation before sending, or a view call, reverted).
    #[error("{call}: reverted: {reason}")]
    Reverted {
        call: String,
        reason: String,
        tx: Option<TxHash>,
    },
    /// An answer the broker cannot represent or decode.
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

    fn bad_data(call: &str, reason: impl Into<String>) -> Self {
        ChainError::BadData {
            call: call.to_string(),
            reason: reason.into(),
        }
    }

    fn transient(call: &str, reason: impl Into<String>) -> Self {
        ChainError::Transient {
            call: call.to_string(),
            reason: reason.into(),
        }
    }
}

/// Timeouts and limits; [`Default`] suits a public network.
#[derive(Clone, Debug)]
pub struct ChainOptions {
    /// The longest one RPC call may take.
    pub rpc_timeout: Duration,
    /// How long a sent transaction may take to be mined.
    pub receipt_timeout: Duration,
    /// The longest pause between two receipt polls (they start at 100 ms
    /// and double).
    pub receipt_poll_max: Duration,
    /// Blocks per `eth_getLogs` call (public endpoints cap the range).
    pub log_range: u64,
    /// Added to the gas estimate of each transaction, in percent.
    pub gas_margin_percent: u64,
}

impl Default for ChainOptions {
    fn default() -> Self {
        ChainOptions {
            rpc_timeout: Duration::from_secs(10),
            receipt_timeout: Duration::from_secs(180),
            receipt_poll_max: Duration::from_secs(2),
            log_range: 1000,
            gas_margin_percent: 25,
        }
    }
}

/// A block the daemon reads at (the latest minus the confirmation depth).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRef {
    pub number: u64,
    pub hash: B256,
    /// Seconds since the epoch (what the contracts compare expiry with).
    pub timestamp: u64,
}

impl BlockRef {
    fn id(&self) -> BlockId {
        BlockId::number(self.number)
    }
}

/// A provider signing with the operator key, plus the confirmation depth.
/// Cheap to clone; clones share the provider and the send lock.
#[derive(Clone)]
pub struct Chain {
    provider: DynProvider,
    operator: Address,
    chain_id: u64,
    confirmations: u64,
    /// The endpoint as errors show it: scheme, host and port only (paths
    /// and queries often hold API keys).
    url: String,
    /// Spellings of the full URL, replaced by `url` in quoted errors.
    hidden_urls: Arc<Vec<String>>,
    options: ChainOptions,
    /// Held from choosing a nonce until the node accepted the transaction,
    /// so concurrent sends from clones never pick the same nonce.
    send_lock: Arc<tokio::sync::Mutex<()>>,
    /// Set when the daemon is asked to stop: a receipt wait gives up then
    /// (the request's intent is on disk, and the chain is checked before
    /// anything is sent again), so SIGTERM never waits out a slow chain.
    stop: Arc<AtomicBool>,
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain")
            .field("url", &self.url)
            .field("chain_id", &self.chain_id)
            .field("operator", &self.operator)
            .field("confirmations", &self.confirmations)
            .finish_non_exhaustive()
    }
}

impl Chain {
    /// Connects and checks the chain id, with [`ChainOptions::default`].
    pub async fn connect(
        cfg: &config::Onchain,
        operator: PrivateKeySigner,
    ) -> Result<Chain, ChainError> {
        Self::connect_with(cfg, operator, ChainOptions::default()).await
    }

    /// Connects and checks that the endpoint serves `cfg.chain_id`. An
    /// unreachable endpoint is [`ChainError::Transient`].
    pub async fn connect_with(
        cfg: &config::Onchain,
        operator: PrivateKeySigner,
        options: ChainOptions,
    ) -> Result<Chain, ChainError> {
        let url = parse_rpc_url(&cfg.rpc_url).map_err(|e| ChainError::Config(e.to_string()))?;
        let shown = url.origin().ascii_serialization();
        let mut hidden_urls: Vec<String> = [cfg.rpc_url.as_str(), url.as_str()]
            .into_iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .filter(|u| *u != shown)
            .collect();
        // Longest first, so a shorter spelling never breaks a longer one.
        hidden_urls.sort_by_key(|u| std::cmp::Reverse(u.len()));
        let address = operator.address();
        // No fillers but the wallet: nonce, gas and fees are chosen (and
        // their failures classified) in `transactions`.
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .wallet(EthereumWallet::from(operator))
            .connect_http(url)
            .erased();
        let chain = Chain {
            provider,
            operator: address,
            chain_id: cfg.chain_id,
            confirmations: cfg.confirmations,
            url: shown,
            hidden_urls: Arc::new(hidden_urls),
            options,
            send_lock: Arc::default(),
            stop: Arc::default(),
        };
        let actual = chain
            .rpc("eth_chainId", chain.provider.get_chain_id())
            .await?;
        if actual != cfg.chain_id {
            return Err(ChainError::WrongChain {
                url: chain.url.clone(),
                expected: cfg.chain_id,
                actual,
            });
        }
        Ok(chain)
    }

    /// Gives up waiting for receipts once `stop` is set.
    pub fn stop_on(mut self, stop: Arc<AtomicBool>) -> Chain {
        self.stop = stop;
        self
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn operator(&self) -> Address {
        self.operator
    }

    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    pub fn confirmations(&self) -> u64 {
        self.confirmations
    }

    /// The latest block minus the confirmation depth (saturating at the
    /// genesis block): what the daemon reads at.
    pub async fn safe_block(&self) -> Result<BlockRef, ChainError> {
        let latest = self
            .rpc("eth_blockNumber", self.provider.get_block_number())
            .await?;
        self.block(latest.saturating_sub(self.confirmations)).await
    }

    /// The latest block, for checks that must see the newest state.
    pub async fn latest_block(&self) -> Result<BlockRef, ChainError> {
        let latest = self
            .rpc("eth_blockNumber", self.provider.get_block_number())
            .await?;
        self.block(latest).await
    }

    /// The operator's balance at the latest block, in wei.
    pub async fn operator_balance(&self) -> Result<U256, ChainError> {
        let call = format!("eth_getBalance({})", self.operator);
        self.rpc(&call, self.provider.get_balance(self.operator))
            .await
    }

    async fn block(&self, number: u64) -> Result<BlockRef, ChainError> {
        let call = format!("eth_getBlockByNumber({number})");
        let block = self
            .rpc(&call, self.provider.get_block_by_number(number.into()))
            .await?
            .ok_or_else(|| {
                ChainError::transient(&call, "the node does not have this block (yet)")
            })?;
        if block.header.number != number {
            return Err(ChainError::bad_data(
                &call,
                format!("the node answered with block {}", block.header.number),
            ));
        }
        Ok(BlockRef {
            number,
            hash: block.header.hash,
            timestamp: block.header.timestamp,
        })
    }

    /// The `owner()` of a requests contract at the latest block (the key
    /// that may answer its requests).
    pub async fn contract_owner(&self, contract: Address) -> Result<Address, ChainError> {
        let call = format!("owner() on {contract}");
        self.view(
            &call,
            contract,
            &BrokerRequests::ownerCall {},
            BlockId::latest(),
        )
        .await
    }

    /// Runs one RPC call with the timeout and classifies its failure.
    async fn rpc<T>(
        &self,
        call: &str,
        fut: impl IntoFuture<Output = Result<T, TransportError>>,
    ) -> Result<T, ChainError> {
        self.timed(call, fut)
            .await?
            .map_err(|e| self.classify(call, e))
    }

    /// Runs one RPC call with the timeout; only the timeout is classified.
    async fn timed<T>(
        &self,
        call: &str,
        fut: impl IntoFuture<Output = Result<T, TransportError>>,
    ) -> Result<Result<T, TransportError>, ChainError> {
        tokio::time::timeout(self.options.rpc_timeout, fut.into_future())
            .await
            .map_err(|_| {
                ChainError::transient(
                    call,
                    format!(
                        "no answer from {} in {:.1}s",
                        self.url,
                        self.options.rpc_timeout.as_secs_f64()
                    ),
                )
            })
    }

    /// A revert (see [`is_revert`]) is the contract's refusal; any other
    /// failure is the node's or the network's trouble.
    fn classify(&self, call: &str, e: TransportError) -> ChainError {
        match e {
            RpcError::ErrorResp(payload) => {
                if is_revert(payload.code, &payload.message) {
                    let reason = match payload.as_revert_data() {
                        Some(data) => revert_reason(&data),
                        None => one_line(&payload.message),
                    };
                    ChainError::Reverted {
                        call: call.to_string(),
                        reason,
                        tx: None,
                    }
                } else {
                    ChainError::transient(
                        call,
                        format!(
                            "the node refused: {} (code {})",
                            self.redact(one_line(&payload.message)),
                            payload.code
                        ),
                    )
                }
            }
            other => ChainError::transient(
                call,
                format!(
                    "cannot reach {}: {}",
                    self.url,
                    self.redact(describe(&other))
                ),
            ),
        }
    }

    /// `text` without the full endpoint URL.
    fn redact(&self, mut text: String) -> String {
        for hidden in self.hidden_urls.iter() {
            text = text.replace(hidden.as_str(), &self.url);
        }
        text
    }

    /// `eth_call` of a view function at `block`, decoded with the
    /// generated bindings. No answer data (no contract there) is
    /// [`ChainError::BadData`].
    async fn view<C: SolCall>(
        &self,
        call: &str,
        contract: Address,
        data: &C,
        block: BlockId,
    ) -> Result<C::Return, ChainError> {
        let out = self
            .raw_call(call, contract, data.abi_encode(), block)
            .await?;
        decode_returns::<C>(call, contract, &out)
    }

    async fn raw_call(
        &self,
        call: &str,
        contract: Address,
        input: Vec<u8>,
        block: BlockId,
    ) -> Result<Bytes, ChainError> {
        let tx = TransactionRequest::default()
            .with_to(contract)
            .with_input(input);
        self.rpc(call, self.provider.call(tx).block(block)).await
    }
}

/// A node's error answer is a revert when it says so: code 3 (geth's
/// execution error) or a message with "revert".
fn is_revert(code: i64, message: &str) -> bool {
    code == 3 || message.to_ascii_lowercase().contains("revert")
}

fn decode_returns<C: SolCall>(
    call: &str,
    contract: Address,
    out: &[u8],
) -> Result<C::Return, ChainError> {
    if out.is_empty() {
        return Err(ChainError::bad_data(
            call,
            format!("no answer data (is there a contract at {contract}?)"),
        ));
    }
    C::abi_decode_returns(out).map_err(|e| ChainError::bad_data(call, one_line(&e.to_string())))
}

/// A uint256 from the chain as a u64, or an error naming what it was.
fn to_u64(call: &str, what: &str, value: U256) -> Result<u64, ChainError> {
    u64::try_from(value)
        .map_err(|_| ChainError::bad_data(call, format!("{what} {value} does not fit in 64 bits")))
}

/// Revert data as text: `Error(string)`'s message, a panic, one of the
/// contract's custom errors, or the raw selector.
fn revert_reason(data: &[u8]) -> String {
    if data.is_empty() {
        return "no reason given".into();
    }
    if let Ok(revert) = Revert::abi_decode(data) {
        return one_line(revert.reason());
    }
    if let Ok(panic) = Panic::abi_decode(data) {
        return panic.to_string();
    }
    if let Ok(error) = BrokerRequests::BrokerRequestsErrors::abi_decode(data) {
        return match error {
            BrokerRequests::BrokerRequestsErrors::OwnableUnauthorizedAccount(e) => format!(
                "OwnableUnauthorizedAccount({}): that key does not own the contract",
                e.account
            ),
            BrokerRequests::BrokerRequestsErrors::OwnableInvalidOwner(e) => {
                format!("OwnableInvalidOwner({})", e.owner)
            }
        };
    }
    let shown = &data[..data.len().min(36)];
    format!(
        "custom error 0x{}{}",
        alloy::hex::encode(shown),
        if data.len() > shown.len() { "…" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn reasons_are_one_short_line() {
        let line = one_line(&format!("first {}\nsecond", "x".repeat(1000)));
        assert!(!line.contains('\n'));
        assert_eq!(
            line.chars().count(),
            broker_contracts::error_text::MAX_REASON + 1
        );
    }
}
