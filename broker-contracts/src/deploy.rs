//! Deploying contracts, with the checks an operator on a real network needs
//! before spending anything: the endpoint answers, it serves the chain they
//! meant, and the wallet can pay the most the transaction may cost. The
//! transaction itself goes through the shared sender ([`crate::chain`]).

use std::time::Duration;

use alloy::{
    network::TransactionBuilder as _,
    primitives::{Address, Bytes, TxHash, U256},
    providers::Provider as _,
    rpc::types::TransactionRequest,
    signers::local::PrivateKeySigner,
};
use thiserror::Error;

use crate::{
    BrokerRegistry, BrokerRequests,
    chain::{ChainError, ChainOptions, Connection, Cost, ether},
};

#[derive(Debug, Error)]
pub enum DeployError {
    #[error(transparent)]
    Chain(#[from] ChainError),
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
    #[error("the deployment transaction {0} was mined but its receipt names no contract")]
    NoContract(TxHash),
}

/// A contract on chain.
#[derive(Clone, Debug)]
pub struct Deployment {
    pub address: Address,
    pub transaction: TxHash,
    pub block: u64,
    pub gas_used: u64,
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

/// The connection a deployment uses: the gas limit is the estimate as it is
/// (the balance check covers exactly what is sent), and a deployment may
/// take longer to be mined than a call.
fn options() -> ChainOptions {
    ChainOptions {
        gas_margin_percent: 0,
        receipt_timeout: Duration::from_secs(300),
        ..ChainOptions::default()
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
    let conn = Connection::connect(rpc_url, chain_id, Some(operator), options()).await?;
    progress(&Progress::ChainOk { chain_id });
    deploy(
        &conn,
        "deploying BrokerRequests",
        BrokerRequests::BYTECODE.clone(),
        &mut progress,
    )
    .await
}

/// The most deploying BrokerRequests from `operator` costs now (gas
/// estimate at today's fees): what the set-up wizard asks the operator to
/// fund before it deploys.
pub async fn requests_deployment_cost(
    rpc_url: &str,
    chain_id: u64,
    operator: PrivateKeySigner,
) -> Result<Cost, DeployError> {
    let conn = Connection::connect(rpc_url, chain_id, Some(operator), options()).await?;
    let tx = TransactionRequest::default().with_deploy_code(BrokerRequests::BYTECODE.clone());
    Ok(conn.prepare("deploying BrokerRequests", tx).await?.cost)
}

/// Deploys BrokerRegistry (development chains and tests; the real registry
/// is the BlockHost project's).
pub async fn deploy_registry(
    rpc_url: &str,
    chain_id: u64,
    deployer: PrivateKeySigner,
) -> Result<Deployment, DeployError> {
    let conn = Connection::connect(rpc_url, chain_id, Some(deployer), options()).await?;
    deploy(
        &conn,
        "deploying BrokerRegistry",
        BrokerRegistry::BYTECODE.clone(),
        &mut |_| {},
    )
    .await
}

async fn deploy(
    conn: &Connection,
    call: &str,
    code: Bytes,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Deployment, DeployError> {
    let from = conn.signer().expect("connected with a signer");
    let chain_id = conn.chain_id();
    let balance = conn
        .rpc(
            &format!("eth_getBalance({from})"),
            conn.provider().get_balance(from),
        )
        .await?;
    // Nodes estimate a creation without looking at the sender's balance
    // when no fee is given, so this works for an empty wallet too; the fees
    // are fixed here and sent as they are, so the balance check covers
    // exactly what the node will require.
    let prepared = conn
        .prepare(call, TransactionRequest::default().with_deploy_code(code))
        .await?;
    let cost = prepared.cost;
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
    let hash = conn.send(call, &prepared).await?;
    progress(&Progress::Sent { transaction: hash });
    let receipt = conn.wait_for_receipt(call, hash, cost.gas).await?;
    let address = receipt
        .contract_address
        .ok_or(DeployError::NoContract(hash))?;
    Ok(Deployment {
        address,
        transaction: hash,
        block: receipt.block_number.unwrap_or_default(),
        gas_used: receipt.gas_used,
    })
}
