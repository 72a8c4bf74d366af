//! The chain connection: one provider (signing when a wallet is given),
//! every call bounded in time, every failure one line that says whether the
//! endpoint, the node or the contract refused.

use std::{future::IntoFuture, time::Duration};

use alloy::{
    network::EthereumWallet,
    primitives::{Address, TxHash},
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::types::{TransactionReceipt, TransactionRequest},
    signers::local::PrivateKeySigner,
    sol_types::{Revert, SolError as _},
    transports::{RpcError, TransportError},
};
use anyhow::Context as _;
use broker_contracts::{
    deploy::parse_rpc_url,
    error_text::{describe, one_line},
};
use thiserror::Error;

/// How long one RPC call may take before the endpoint counts as unreachable.
const RPC_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a sent transaction may take to be mined.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Error)]
pub enum ChainError {
    #[error("{call}: cannot reach {endpoint}: {reason}")]
    Unreachable {
        call: String,
        endpoint: String,
        reason: String,
    },
    #[error("{call}: the node refused: {reason}")]
    Refused { call: String, reason: String },
    #[error("{call} reverted: {reason}")]
    Reverted { call: String, reason: String },
    #[error("{call}: unexpected answer: {reason}")]
    BadAnswer { call: String, reason: String },
    #[error("{call}: transaction {tx} not mined within {secs}s; it may still be")]
    NoReceipt { call: String, tx: TxHash, secs: u64 },
}

impl ChainError {
    /// The contract's own reason, for a revert.
    pub fn revert_reason(&self) -> Option<&str> {
        match self {
            ChainError::Reverted { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

/// A connection to the chain.
pub struct Chain {
    provider: DynProvider,
    /// The endpoint as shown in messages: scheme, host and port only (the
    /// path of a hosted endpoint often carries an API key).
    endpoint: String,
    full_url: String,
}

impl Chain {
    /// Connects to `rpc_url` and checks it serves `chain_id`; transactions
    /// are signed by `wallet` when given.
    pub async fn connect(
        rpc_url: &str,
        chain_id: u64,
        wallet: Option<PrivateKeySigner>,
    ) -> anyhow::Result<Chain> {
        let url = parse_rpc_url(rpc_url).map_err(|e| anyhow::anyhow!("{e}"))?;
        let endpoint = format!(
            "{}://{}{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port().map(|p| format!(":{p}")).unwrap_or_default()
        );
        let provider = match wallet {
            Some(signer) => ProviderBuilder::new()
                .wallet(EthereumWallet::from(signer))
                .connect_http(url)
                .erased(),
            None => ProviderBuilder::new().connect_http(url).erased(),
        };
        let chain = Chain {
            provider,
            endpoint,
            full_url: rpc_url.to_string(),
        };
        let actual = chain
            .rpc("eth_chainId", chain.provider.get_chain_id())
            .await?;
        if actual != chain_id {
            anyhow::bail!(
                "wrong chain: {} serves chain {actual}, not chain {chain_id}",
                chain.endpoint
            );
        }
        Ok(chain)
    }

    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// One RPC call, bounded in time.
    pub async fn rpc<T>(
        &self,
        call: &str,
        fut: impl IntoFuture<Output = Result<T, TransportError>>,
    ) -> Result<T, ChainError> {
        match tokio::time::timeout(RPC_TIMEOUT, fut.into_future()).await {
            Ok(result) => result.map_err(|e| self.classify(call, e)),
            Err(_) => Err(self.no_answer(call)),
        }
    }

    /// One contract view call (through the generated bindings), bounded in time.
    pub async fn view<T>(
        &self,
        call: &str,
        fut: impl IntoFuture<Output = Result<T, alloy::contract::Error>>,
    ) -> Result<T, ChainError> {
        match tokio::time::timeout(RPC_TIMEOUT, fut.into_future()).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(alloy::contract::Error::TransportError(e))) => Err(self.classify(call, e)),
            Ok(Err(e)) => Err(ChainError::BadAnswer {
                call: call.into(),
                reason: self.redact(describe(&e)),
            }),
            Err(_) => Err(self.no_answer(call)),
        }
    }

    /// Sends a transaction and waits for it to be mined successfully.
    pub async fn transact(
        &self,
        call: &str,
        tx: TransactionRequest,
    ) -> Result<TransactionReceipt, ChainError> {
        let pending = self.rpc(call, self.provider.send_transaction(tx)).await?;
        let hash = *pending.tx_hash();
        let receipt = tokio::time::timeout(RECEIPT_TIMEOUT, pending.get_receipt())
            .await
            .map_err(|_| ChainError::NoReceipt {
                call: call.into(),
                tx: hash,
                secs: RECEIPT_TIMEOUT.as_secs(),
            })?
            .map_err(|e| ChainError::Unreachable {
                call: call.into(),
                endpoint: self.endpoint.clone(),
                reason: self.redact(describe(&e)),
            })?;
        if !receipt.status() {
            return Err(ChainError::Reverted {
                call: call.into(),
                reason: format!("transaction {hash} failed"),
            });
        }
        Ok(receipt)
    }

    /// The code at `address` is not empty (a contract is deployed there).
    pub async fn require_contract(&self, what: &str, address: Address) -> anyhow::Result<()> {
        let code = self
            .rpc("eth_getCode", self.provider.get_code_at(address))
            .await?;
        if code.is_empty() {
            anyhow::bail!("no contract at {address} ({what}) on this chain");
        }
        Ok(())
    }

    fn no_answer(&self, call: &str) -> ChainError {
        ChainError::Unreachable {
            call: call.into(),
            endpoint: self.endpoint.clone(),
            reason: format!("no answer in {}s", RPC_TIMEOUT.as_secs()),
        }
    }

    /// A node error that says "revert" (or geth's code 3) is the contract
    /// refusing; any other error answer is the node's; the rest is the
    /// network's.
    fn classify(&self, call: &str, e: TransportError) -> ChainError {
        match e {
            RpcError::ErrorResp(payload) => {
                let message = self.redact(one_line(&payload.message));
                if payload.code == 3 || message.to_ascii_lowercase().contains("revert") {
                    let reason = payload
                        .as_revert_data()
                        .and_then(|data| Revert::abi_decode(&data).ok())
                        .map(|r| one_line(r.reason()))
                        .unwrap_or(message);
                    ChainError::Reverted {
                        call: call.into(),
                        reason,
                    }
                } else {
                    ChainError::Refused {
                        call: call.into(),
                        reason: format!("{message} (code {})", payload.code),
                    }
                }
            }
            other => ChainError::Unreachable {
                call: call.into(),
                endpoint: self.endpoint.clone(),
                reason: self.redact(describe(&other)),
            },
        }
    }

    fn redact(&self, text: String) -> String {
        let trimmed = self.full_url.trim_end_matches('/');
        if trimmed.is_empty() {
            return text;
        }
        text.replace(trimmed, &self.endpoint)
    }
}

/// Parses a 0x address read from one of our files.
pub fn parse_address(what: &str, text: &str) -> anyhow::Result<Address> {
    text.parse::<Address>()
        .ok()
        .with_context(|| format!("{what} `{}` is not a 0x address", one_line(text)))
}
