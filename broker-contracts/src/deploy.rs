//! Deploying contracts, with the checks an operator on a real network needs
//! before spending anything: the endpoint answers, it serves the chain they
//! meant, and the wallet can pay the most the transaction may cost.

use std::{fmt, time::Duration};

use alloy::{
    network::EthereumWallet,
    primitives::{
        Address, TxHash, U256,
        utils::{ParseUnits, Unit},
    },
    providers::{Provider, ProviderBuilder},
    signers::local::PrivateKeySigner,
    transports::{RpcError, TransportError},
};
use thiserror::Error;

use crate::{
    BrokerRegistry, BrokerRequests,
    error_text::{describe, one_line},
};

/// How long one RPC call may take before the endpoint counts as unreachable.
const RPC_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to wait for a deployment's receipt.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(300);
/// Node messages quoted in errors are cut to this many characters.

#[derive(Debug, Error)]
pub enum DeployError {
    #[error("invalid RPC URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach the RPC endpoint {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the RPC endpoint {url} answered with an error: {reason}")]
    Rpc { url: String, reason: String },
    #[error("wrong chain: {url} serves chain {actual}, not chain {expected}")]
    WrongChain {
        url: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "no funds: {address} has a balance of 0 on chain {chain_id}; the deployment needs up to {cost}"
    )]
    NoFunds {
        address: Address,
        chain_id: u64,
        cost: Cost,
    },
    #[error(
        "insufficient funds: {address} holds {} ETH ({balance} wei) on chain {chain_id}; the deployment needs up to {cost}",
        ether(*balance)
    )]
    InsufficientFunds {
        address: Address,
        chain_id: u64,
        balance: U256,
        cost: Cost,
    },
    #[error("the deployment failed: {0}")]
    Transaction(String),
    #[error(
        "no receipt for transaction {transaction} within {}s; it may still be mined: look it up before deploying again",
        RECEIPT_TIMEOUT.as_secs()
    )]
    NoReceipt { transaction: TxHash },
    #[error("the deployment transaction {0} reverted")]
    Reverted(TxHash),
}

/// A contract on chain.
#[derive(Clone, Debug)]
pub struct Deployment {
    pub address: Address,
    pub transaction: TxHash,
    pub block: u64,
    pub gas_used: u64,
}

/// The fees a transaction is sent with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fees {
    Eip1559 {
        max_fee_per_gas: u128,
        max_priority_fee_per_gas: u128,
    },
    /// For chains without EIP-1559.
    Legacy { gas_price: u128 },
}

impl Fees {
    pub fn max_fee_per_gas(&self) -> u128 {
        match *self {
            Fees::Eip1559 {
                max_fee_per_gas, ..
            } => max_fee_per_gas,
            Fees::Legacy { gas_price } => gas_price,
        }
    }
}

/// The most a transaction can cost: its gas limit at its highest fee per
/// gas (what a node requires the sender to hold before accepting it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    pub gas: u64,
    pub fees: Fees,
}

impl Cost {
    pub fn total(&self) -> U256 {
        U256::from(self.gas) * U256::from(self.fees.max_fee_per_gas())
    }
}

impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_gas = trim_decimals(
            &ParseUnits::from(U256::from(self.fees.max_fee_per_gas())).format_units(Unit::GWEI),
        );
        write!(
            f,
            "{} ETH ({} gas at up to {per_gas} gwei)",
            ether(self.total()),
            self.gas
        )
    }
}

/// Wei as ether, without trailing zeros.
pub fn ether(wei: U256) -> String {
    trim_decimals(&ParseUnits::from(wei).format_units(Unit::ETHER))
}

fn trim_decimals(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s.to_string()
    }
}

/// Steps of a deployment, for progress output.
#[derive(Clone, Debug)]
pub enum Progress {
    /// The endpoint answers and serves the expected chain.
    ChainOk { chain_id: u64 },
    /// The deployer can pay the most the deployment may cost; sending.
    Funded {
        address: Address,
        balance: U256,
        cost: Cost,
    },
    /// The transaction is in the node's pool; waiting for its receipt.
    Sent { transaction: TxHash },
}

/// Checks that `rpc_url` is an http(s) URL (the only transport built in).
pub fn parse_rpc_url(rpc_url: &str) -> Result<alloy::transports::http::reqwest::Url, DeployError> {
    let bad = |reason: String| DeployError::BadUrl {
        url: rpc_url.to_string(),
        reason,
    };
    let url: alloy::transports::http::reqwest::Url =
        rpc_url.parse().map_err(|e| bad(format!("{e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "the scheme must be http or https, not `{}`",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host".into()));
    }
    Ok(url)
}

/// A provider that signs with `signer`, after checking the endpoint serves
/// `chain_id`.
pub async fn connect(
    rpc_url: &str,
    chain_id: u64,
    signer: PrivateKeySigner,
) -> Result<impl Provider + Clone + use<>, DeployError> {
    let url = parse_rpc_url(rpc_url)?;
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(signer))
        .connect_http(url);
    let actual = rpc(rpc_url, provider.get_chain_id()).await?;
    if actual != chain_id {
        return Err(DeployError::WrongChain {
            url: rpc_url.to_string(),
            expected: chain_id,
            actual,
        });
    }
    Ok(provider)
}

/// Runs one RPC call with a timeout. A transport failure or no answer means
/// "unreachable"; an error response is the node's own refusal.
async fn rpc<T>(
    url: &str,
    call: impl std::future::IntoFuture<Output = Result<T, TransportError>>,
) -> Result<T, DeployError> {
    match tokio::time::timeout(RPC_TIMEOUT, call.into_future()).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(RpcError::ErrorResp(payload))) => Err(DeployError::Rpc {
            url: url.to_string(),
            reason: one_line(&payload.message),
        }),
        Ok(Err(e)) => Err(DeployError::Unreachable {
            url: url.to_string(),
            reason: describe(&e),
        }),
        Err(_) => Err(DeployError::Unreachable {
            url: url.to_string(),
            reason: format!("no answer in {}s", RPC_TIMEOUT.as_secs()),
        }),
    }
}

/// Deploys BrokerRequests from the operator's key (which becomes its owner),
/// after checking the chain and the balance; waits for the receipt.
pub async fn deploy_requests(
    rpc_url: &str,
    chain_id: u64,
    operator: PrivateKeySigner,
) -> Result<Deployment, DeployError> {
    deploy_requests_with_progress(rpc_url, chain_id, operator, |_| {}).await
}

/// [`deploy_requests`], reporting each step to `progress`.
pub async fn deploy_requests_with_progress(
    rpc_url: &str,
    chain_id: u64,
    operator: PrivateKeySigner,
    mut progress: impl FnMut(&Progress),
) -> Result<Deployment, DeployError> {
    let address = operator.address();
    let provider = connect(rpc_url, chain_id, operator).await?;
    progress(&Progress::ChainOk { chain_id });
    let builder = BrokerRequests::deploy_builder(&provider);
    deploy(
        rpc_url,
        chain_id,
        &provider,
        address,
        builder,
        &mut progress,
    )
    .await
}

/// Deploys BrokerRegistry (development chains and tests; the real registry
/// is the BlockHost project's).
pub async fn deploy_registry(
    rpc_url: &str,
    chain_id: u64,
    deployer: PrivateKeySigner,
) -> Result<Deployment, DeployError> {
    let address = deployer.address();
    let provider = connect(rpc_url, chain_id, deployer).await?;
    let builder = BrokerRegistry::deploy_builder(&provider);
    deploy(rpc_url, chain_id, &provider, address, builder, &mut |_| {}).await
}

async fn deploy<P: Provider + Clone, D: alloy::contract::CallDecoder>(
    rpc_url: &str,
    chain_id: u64,
    provider: &P,
    from: Address,
    builder: alloy::contract::CallBuilder<&P, D>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Deployment, DeployError> {
    let balance = rpc(rpc_url, provider.get_balance(from)).await?;
    // Nodes estimate a creation without looking at the sender's balance
    // when no fee is given, so this works for an empty wallet too.
    let gas = rpc(rpc_url, provider.estimate_gas(builder.as_ref().clone()))
        .await
        .map_err(|e| match e {
            // A creation that cannot succeed (it reverts, or exceeds the block).
            DeployError::Rpc { reason, .. } => {
                DeployError::Transaction(format!("the node cannot estimate its gas: {reason}"))
            }
            other => other,
        })?;
    // The fees are fixed here and sent as they are, so the balance check
    // covers exactly what the node will require.
    let fees = match provider.estimate_eip1559_fees().await {
        Ok(f) => Fees::Eip1559 {
            max_fee_per_gas: f.max_fee_per_gas,
            max_priority_fee_per_gas: f.max_priority_fee_per_gas,
        },
        Err(_) => Fees::Legacy {
            gas_price: rpc(rpc_url, provider.get_gas_price()).await?,
        },
    };
    let cost = Cost { gas, fees };
    if balance.is_zero() {
        return Err(DeployError::NoFunds {
            address: from,
            chain_id,
            cost,
        });
    }
    if balance < cost.total() {
        return Err(DeployError::InsufficientFunds {
            address: from,
            chain_id,
            balance,
            cost,
        });
    }
    progress(&Progress::Funded {
        address: from,
        balance,
        cost,
    });
    let builder = builder.gas(gas);
    let builder = match fees {
        Fees::Eip1559 {
            max_fee_per_gas,
            max_priority_fee_per_gas,
        } => builder
            .max_fee_per_gas(max_fee_per_gas)
            .max_priority_fee_per_gas(max_priority_fee_per_gas),
        Fees::Legacy { gas_price } => builder.gas_price(gas_price),
    };
    let pending = match tokio::time::timeout(RPC_TIMEOUT, builder.send()).await {
        Ok(Ok(pending)) => pending,
        Ok(Err(e)) => return Err(DeployError::Transaction(describe(&e))),
        Err(_) => {
            return Err(DeployError::Unreachable {
                url: rpc_url.to_string(),
                reason: format!("no answer to the transaction in {}s", RPC_TIMEOUT.as_secs()),
            });
        }
    };
    let hash = *pending.tx_hash();
    progress(&Progress::Sent { transaction: hash });
    let receipt = match tokio::time::timeout(RECEIPT_TIMEOUT, pending.get_receipt()).await {
        Ok(Ok(receipt)) => receipt,
        Ok(Err(e)) => {
            return Err(DeployError::Transaction(format!(
                "transaction {hash}: {}",
                describe(&e)
            )));
        }
        Err(_) => return Err(DeployError::NoReceipt { transaction: hash }),
    };
    if !receipt.status() {
        return Err(DeployError::Reverted(hash));
    }
    let address = receipt
        .contract_address
        .ok_or_else(|| DeployError::Transaction("the receipt names no contract".into()))?;
    Ok(Deployment {
        address,
        transaction: hash,
        block: receipt.block_number.unwrap_or_default(),
        gas_used: receipt.gas_used,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for good in ["http://127.0.0.1:8545", "https://rpc.example/v3/abc"] {
            assert!(parse_rpc_url(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "not a url",
            "localhost:8545",
            "ws://127.0.0.1:8545",
            "http://",
        ] {
            let e = parse_rpc_url(bad).unwrap_err();
            assert!(matches!(e, DeployError::BadUrl { .. }), "{bad}: {e}");
            assert!(e.to_string().starts_with("invalid RPC URL"), "{e}");
        }
    }

    #[test]
    fn cost_is_gas_times_the_highest_fee() {
        let cost = Cost {
            gas: 1_500_000,
            fees: Fees::Eip1559 {
                max_fee_per_gas: 3_000_000_000,
                max_priority_fee_per_gas: 1_000_000_000,
            },
        };
        assert_eq!(cost.total(), U256::from(4_500_000_000_000_000u64));
        assert_eq!(cost.to_string(), "0.0045 ETH (1500000 gas at up to 3 gwei)");
        assert_eq!(ether(U256::from(10u64).pow(U256::from(18))), "1");
        assert_eq!(ether(U256::ZERO), "0");
    }

    #[test]
    fn reasons_are_one_short_line() {
        let long = format!("first {}\nsecond", "x".repeat(1000));
        let line = one_line(&long);
        assert!(!line.contains('\n'));
        assert_eq!(line.chars().count(), crate::error_text::MAX_REASON + 1);
    }
}
