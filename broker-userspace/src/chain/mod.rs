//! The daemon's access to the chain, on the shared layer of
//! [`broker_contracts::chain`] (provider, timeouts, error classification,
//! URL redaction, the transaction sender, the NFT checks): reads of the
//! requests contracts (V2 and legacy V1) at a confirmed block, the operator's
//! transactions and the `AllocationReleased` events.
//!
//! Every error is one line naming the call, the contract and the id, and
//! says by its [`ChainError`] variant what the daemon should do: retry later
//! (`Transient`), never retry (`Reverted`), or reject (`BadData`).

mod events;
mod requests;
mod transactions;

use std::sync::{Arc, atomic::AtomicBool};

use alloy::{
    eips::BlockId,
    primitives::{Address, B256, U256},
    providers::Provider as _,
    signers::local::PrivateKeySigner,
};
use broker_contracts::chain::Connection;

pub use broker_contracts::chain::{ChainError, ChainOptions, Fees, NftCheck, TxState};
pub use events::Released;
pub use requests::{OnchainRequest, RequestStatus};
pub use transactions::{expire_call, release_call, response_call};

use crate::config;

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

/// A connection signing with the operator key, plus the confirmation depth.
/// Cheap to clone; clones share the provider and the send lock.
#[derive(Clone, Debug)]
pub struct Chain {
    conn: Connection,
    operator: Address,
    confirmations: u64,
    /// Wei paid for the transactions mined so far (for the metrics), shared
    /// by the clones.
    gas_spent_wei: Arc<std::sync::Mutex<u128>>,
}

impl Chain {
    /// Connects and checks the chain id, with [`ChainOptions::default`] but
    /// the configuration's `eth_getLogs` range.
    pub async fn connect(
        cfg: &config::Onchain,
        operator: PrivateKeySigner,
    ) -> Result<Chain, ChainError> {
        let options = ChainOptions {
            log_range: cfg.log_range_blocks,
            ..ChainOptions::default()
        };
        Self::connect_with(cfg, operator, options).await
    }

    /// Connects and checks that the endpoint serves `cfg.chain_id`. An
    /// unreachable endpoint is [`ChainError::Transient`].
    pub async fn connect_with(
        cfg: &config::Onchain,
        operator: PrivateKeySigner,
        options: ChainOptions,
    ) -> Result<Chain, ChainError> {
        let address = operator.address();
        let conn = Connection::connect(&cfg.rpc_url, cfg.chain_id, Some(operator), options).await?;
        Ok(Chain {
            conn,
            operator: address,
            confirmations: cfg.confirmations,
            gas_spent_wei: Arc::default(),
        })
    }

    /// Gives up waiting for receipts once `stop` is set (the request's
    /// intent is on disk, and the chain is checked before anything is sent
    /// again), so SIGTERM never waits out a slow chain.
    pub fn stop_on(mut self, stop: Arc<AtomicBool>) -> Chain {
        self.conn = self.conn.stop_on(stop);
        self
    }

    pub fn operator(&self) -> Address {
        self.operator
    }

    pub fn chain_id(&self) -> u64 {
        self.conn.chain_id()
    }

    pub fn confirmations(&self) -> u64 {
        self.confirmations
    }

    /// The latest block minus the confirmation depth (saturating at the
    /// genesis block): what the daemon reads at.
    pub async fn safe_block(&self) -> Result<BlockRef, ChainError> {
        let latest = self
            .conn
            .rpc("eth_blockNumber", self.conn.provider().get_block_number())
            .await?;
        self.block(latest.saturating_sub(self.confirmations)).await
    }

    /// The latest block, for checks that must see the newest state.
    pub async fn latest_block(&self) -> Result<BlockRef, ChainError> {
        let latest = self
            .conn
            .rpc("eth_blockNumber", self.conn.provider().get_block_number())
            .await?;
        self.block(latest).await
    }

    /// The operator's balance at the latest block, in wei.
    pub async fn operator_balance(&self) -> Result<U256, ChainError> {
        let call = format!("eth_getBalance({})", self.operator);
        self.conn
            .rpc(&call, self.conn.provider().get_balance(self.operator))
            .await
    }

    async fn block(&self, number: u64) -> Result<BlockRef, ChainError> {
        let call = format!("eth_getBlockByNumber({number})");
        let block = self
            .conn
            .rpc(
                &call,
                self.conn.provider().get_block_by_number(number.into()),
            )
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
        let requests = self.requests(contract);
        let owner = requests.owner();
        self.conn
            .view(&call, owner.block(BlockId::latest()).call())
            .await
    }

    /// At the latest block: code exists, `nft` is ERC-721 and its `owner()`
    /// is `requester` (see [`Connection::verify_nft`]).
    pub async fn verify_nft(
        &self,
        nft: Address,
        requester: Address,
    ) -> Result<NftCheck, ChainError> {
        self.conn.verify_nft(nft, requester).await
    }
}
