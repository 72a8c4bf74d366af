//! The operator's transactions, through the shared sender
//! ([`broker_contracts::chain::sender`]: simulation, gas margin, fees, the
//! nonce under a lock, the receipt wait that gives up when the daemon
//! stops). A revert is [`ChainError::Reverted`]: never retry it; no receipt
//! in time is [`ChainError::Transient`] (the transaction may still be
//! mined: check [`Chain::response_on_chain`] before sending again).

use alloy::{
    eips::BlockId,
    primitives::{Address, TxHash, U256},
};

use super::{Chain, ChainError};

impl Chain {
    /// `submitResponse(id, framed)` from the operator key; waits for the
    /// receipt. A revert (request not pending, expired, superseded, not the
    /// owner) is [`ChainError::Reverted`]: never retry it. Transport, nonce,
    /// fee or funds trouble and a missing receipt are
    /// [`ChainError::Transient`].
    pub async fn submit_response(
        &self,
        contract: Address,
        id: u64,
        framed: Vec<u8>,
    ) -> Result<TxHash, ChainError> {
        let call = format!("submitResponse({id}) on {contract}");
        let tx = self
            .requests(contract)
            .submitResponse(U256::from(id), framed.into())
            .into_transaction_request();
        self.transact(&call, tx).await
    }

    /// `releaseAllocation(nft)` from the operator key: ends the NFT
    /// contract's current request and frees its capacity (V2; a V1 contract
    /// only clears its mapping). No current request is
    /// [`ChainError::Reverted`] ("No allocation for this NFT contract").
    pub async fn release_allocation(
        &self,
        contract: Address,
        nft: Address,
    ) -> Result<TxHash, ChainError> {
        let call = format!("releaseAllocation({nft}) on {contract}");
        let tx = self
            .requests(contract)
            .releaseAllocation(nft)
            .into_transaction_request();
        self.transact(&call, tx).await
    }

    /// `setTotalCapacity(capacity)` only when the contract's `totalCapacity`
    /// (read at the latest block) differs; Some(tx) when sent. V2 only.
    pub async fn sync_total_capacity(
        &self,
        contract: Address,
        capacity: u64,
    ) -> Result<Option<TxHash>, ChainError> {
        let call = format!("totalCapacity() on {contract}");
        let requests = self.requests(contract);
        let current = self
            .conn
            .view(
                &call,
                requests.totalCapacity().block(BlockId::latest()).call(),
            )
            .await?;
        if current == U256::from(capacity) {
            return Ok(None);
        }
        let call = format!("setTotalCapacity({capacity}) on {contract} (was {current})");
        let tx = requests
            .setTotalCapacity(U256::from(capacity))
            .into_transaction_request();
        self.transact(&call, tx).await.map(Some)
    }

    async fn transact(
        &self,
        call: &str,
        tx: alloy::rpc::types::TransactionRequest,
    ) -> Result<TxHash, ChainError> {
        let receipt = self.conn.transact(call, tx).await?;
        let paid = u128::from(receipt.gas_used).saturating_mul(receipt.effective_gas_price);
        let mut spent = self.gas_spent_wei.lock().expect("never poisoned");
        *spent = spent.saturating_add(paid);
        Ok(receipt.transaction_hash)
    }

    /// Wei paid in gas for the transactions this process had mined.
    pub fn gas_spent_wei(&self) -> u128 {
        *self.gas_spent_wei.lock().expect("never poisoned")
    }
}
