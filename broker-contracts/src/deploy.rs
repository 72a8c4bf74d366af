//! Deploying contracts, with the checks an operator on a real network needs
//! before spending anything: the endpoint answers, it serves the chain they
//! meant, and the wallet can pay.

use std::time::Duration;

use alloy::{
    network::EthereumWallet,
    primitives::{Address, TxHash, U256},
    providers::{Provider, ProviderBuilder},
    signers::local::PrivateKeySigner,
};
use thiserror::Error;

use crate::{BrokerRegistry, BrokerRequests};

/// How long one RPC call may take before the endpoint counts as unreachable.
const RPC_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to wait for a deployment's receipt.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Error)]
pub enum DeployError {
    #[error("invalid RPC URL `{0}`")]
    BadUrl(String),
    #[error("cannot reach the RPC endpoint {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} serves chain {actual}, not chain {expected}")]
    WrongChain {
        url: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "{address} holds {balance} wei; the deployment needs about {needed} wei ({gas} gas at {gas_price} wei)"
    )]
    InsufficientFunds {
        address: Address,
        balance: U256,
        needed: U256,
        gas: u64,
        gas_price: u128,
    },
    #[error("the deployment failed: {0}")]
    Transaction(String),
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

/// A provider that signs with `signer`, after checking the endpoint serves
/// `chain_id`.
pub async fn connect(
    rpc_url: &str,
    chain_id: u64,
    signer: PrivateKeySigner,
) -> Result<impl Provider + Clone + use<>, DeployError> {
    let url = rpc_url
        .parse()
        .map_err(|_| DeployError::BadUrl(rpc_url.to_string()))?;
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

/// Runs one RPC call with a timeout, mapping failure to "unreachable".
async fn rpc<T, E: std::fmt::Display>(
    url: &str,
    call: impl std::future::IntoFuture<Output = Result<T, E>>,
) -> Result<T, DeployError> {
    let unreachable = |reason: String| DeployError::Unreachable {
        url: url.to_string(),
        reason,
    };
    match tokio::time::timeout(RPC_TIMEOUT, call.into_future()).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unreachable(first_line(&e.to_string()))),
        Err(_) => Err(unreachable(format!(
            "no answer in {}s",
            RPC_TIMEOUT.as_secs()
        ))),
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

/// Deploys BrokerRequests from the operator's key (which becomes its owner),
/// after checking the chain and the balance; waits for the receipt.
pub async fn deploy_requests(
    rpc_url: &str,
    chain_id: u64,
    operator: PrivateKeySigner,
) -> Result<Deployment, DeployError> {
    let address = operator.address();
    let provider = connect(rpc_url, chain_id, operator).await?;
    let builder = BrokerRequests::deploy_builder(&provider);
    deploy(rpc_url, &provider, address, builder).await
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
    deploy(rpc_url, &provider, address, builder).await
}

async fn deploy<P: Provider + Clone, D: alloy::contract::CallDecoder>(
    rpc_url: &str,
    provider: &P,
    from: Address,
    builder: alloy::contract::CallBuilder<&P, D>,
) -> Result<Deployment, DeployError> {
    let balance = rpc(rpc_url, provider.get_balance(from)).await?;
    let gas_price = rpc(rpc_url, provider.get_gas_price()).await?;
    let gas = match tokio::time::timeout(RPC_TIMEOUT, builder.estimate_gas()).await {
        Ok(Ok(gas)) => gas,
        // Nodes refuse to estimate for an account that cannot pay.
        Ok(Err(_)) if balance.is_zero() => 0,
        Ok(Err(e)) => return Err(DeployError::Transaction(first_line(&e.to_string()))),
        Err(_) => {
            return Err(DeployError::Unreachable {
                url: rpc_url.to_string(),
                reason: "no gas estimate".into(),
            });
        }
    };
    let needed = U256::from(gas) * U256::from(gas_price);
    if balance.is_zero() || balance < needed {
        return Err(DeployError::InsufficientFunds {
            address: from,
            balance,
            needed,
            gas,
            gas_price,
        });
    }
    let pending = builder
        .send()
        .await
        .map_err(|e| DeployError::Transaction(first_line(&e.to_string())))?;
    let hash = *pending.tx_hash();
    let receipt = pending
        .with_timeout(Some(RECEIPT_TIMEOUT))
        .get_receipt()
        .await
        .map_err(|e| DeployError::Transaction(first_line(&e.to_string())))?;
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
