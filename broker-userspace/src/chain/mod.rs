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

use crate::config::{self, Confirm};

/// The block number (or tag) `confirm` reads at, for its tags.
fn tag_of(confirm: Confirm) -> alloy::eips::BlockNumberOrTag {
    use alloy::eips::BlockNumberOrTag;
    match confirm {
        Confirm::Safe => BlockNumberOrTag::Safe,
        Confirm::Finalized => BlockNumberOrTag::Finalized,
        Confirm::Blocks(_) => BlockNumberOrTag::Latest,
    }
}

/// A block the daemon reads at (the latest minus the confirmation depth, or
/// the node's `safe` or `finalized` block).
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

/// A connection signing with the operator key, plus which block it reads at.
/// Cheap to clone; clones share the provider and the send lock.
#[derive(Clone, Debug)]
pub struct Chain {
    conn: Connection,
    operator: Address,
    confirm: Confirm,
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

    /// Connects and checks that the endpoint serves `cfg.chain_id`, and
    /// the block tag `cfg.confirm` names if it names one. An unreachable
    /// endpoint is [`ChainError::Transient`]; a node that does not know the
    /// tag is [`ChainError::Config`] (the daemon stops: reading at another
    /// block than the one configured would be a silent downgrade).
    pub async fn connect_with(
        cfg: &config::Onchain,
        operator: PrivateKeySigner,
        options: ChainOptions,
    ) -> Result<Chain, ChainError> {
        let address = operator.address();
        let conn = Connection::connect(&cfg.rpc_url, cfg.chain_id, Some(operator), options).await?;
        let chain = Chain {
            conn,
            operator: address,
            confirm: cfg.confirm,
            gas_spent_wei: Arc::default(),
        };
        if let Some(tag) = chain.confirm.tag() {
            chain.check_tag(tag).await?;
        }
        Ok(chain)
    }

    /// The node answers `eth_getBlockByNumber(tag)` with a block; a node
    /// that refuses the tag (or has no such block) is a configuration
    /// problem, said as one.
    async fn check_tag(&self, tag: &str) -> Result<(), ChainError> {
        let call = format!("eth_getBlockByNumber(\"{tag}\")");
        let unusable = |why: String| {
            ChainError::Config(format!(
                "[onchain] confirm = \"{tag}\": {why}; set confirm to a number of blocks for this chain"
            ))
        };
        match self
            .conn
            .provider()
            .get_block_by_number(tag_of(self.confirm))
            .await
        {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(unusable(format!("the node has no \"{tag}\" block"))),
            Err(alloy::transports::RpcError::ErrorResp(payload)) => Err(unusable(format!(
                "the node does not know the block tag (it answered: {}, code {})",
                self.conn.endpoint().redact(payload.message.to_string()),
                payload.code
            ))),
            // Unreachable, slow, rate limited: classified as every call is.
            Err(e) => self.conn.rpc(&call, std::future::ready(Err(e))).await,
        }
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

    pub fn confirm(&self) -> Confirm {
        self.confirm
    }

    /// The block the daemon reads at: the latest minus the confirmation
    /// depth (saturating at the genesis block), or the node's tagged block.
    pub async fn safe_block(&self) -> Result<BlockRef, ChainError> {
        let Confirm::Blocks(depth) = self.confirm else {
            return self.tagged_block().await;
        };
        let latest = self
            .conn
            .rpc("eth_blockNumber", self.conn.provider().get_block_number())
            .await?;
        self.block(latest.saturating_sub(depth)).await
    }

    async fn tagged_block(&self) -> Result<BlockRef, ChainError> {
        self.block_at_tag(tag_of(self.confirm)).await
    }

    /// The head, in one call (what the reorg checks record after a poll).
    pub async fn head(&self) -> Result<BlockRef, ChainError> {
        self.block_at_tag(alloy::eips::BlockNumberOrTag::Latest)
            .await
    }

    async fn block_at_tag(
        &self,
        tag: alloy::eips::BlockNumberOrTag,
    ) -> Result<BlockRef, ChainError> {
        let call = format!("eth_getBlockByNumber(\"{tag}\")");
        let block = self
            .conn
            .rpc(&call, self.conn.provider().get_block_by_number(tag))
            .await?
            .ok_or_else(|| ChainError::transient(&call, "the node has no such block (yet)"))?;
        Ok(BlockRef {
            number: block.header.number,
            hash: block.header.hash,
            timestamp: block.header.timestamp,
        })
    }

    /// The hash of block `number` on the node's chain as it is now; None
    /// when the node has no such block (its chain got shorter). What the
    /// reorg checks compare with the hashes they recorded.
    pub async fn block_hash(&self, number: u64) -> Result<Option<B256>, ChainError> {
        let call = format!("eth_getBlockByNumber({number})");
        let block = self
            .conn
            .rpc(
                &call,
                self.conn.provider().get_block_by_number(number.into()),
            )
            .await?;
        match block {
            Some(b) if b.header.number != number => Err(ChainError::bad_data(
                &call,
                format!("the node answered with block {}", b.header.number),
            )),
            b => Ok(b.map(|b| b.header.hash)),
        }
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
