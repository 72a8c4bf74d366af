//! The operator's transactions, through the shared sender
//! ([`broker_contracts::chain::sender`]: simulation, gas margin, fees, the
//! nonce under a lock, the receipt wait that gives up when the daemon
//! stops). A revert is [`ChainError::Reverted`]: never retry it; no receipt
//! in time is [`ChainError::Transient`] (the transaction may still be
//! mined: check [`Chain::response_on_chain`] before sending again).

use std::time::Duration;

use alloy::{
    eips::BlockId,
    primitives::{Address, TxHash, U256},
    rpc::types::TransactionReceipt,
};
use broker_contracts::chain::{Prepared, Signed, TxState};

use super::{Chain, ChainError};

/// How `releaseAllocation(nft)` on `contract` is named in errors and logs.
pub fn release_call(contract: Address, nft: Address) -> String {
    format!("releaseAllocation({nft}) on {contract}")
}

/// How `markExpired(ids)` on `contract` is named in errors and logs.
pub fn expire_call(contract: Address, ids: &[u64]) -> String {
    match ids {
        [first, .., last] => format!(
            "markExpired({} requests, {first}..{last}) on {contract}",
            ids.len()
        ),
        _ => format!("markExpired({ids:?}) on {contract}"),
    }
}

/// At the pending block, or at the latest for a replacement (the pending
/// transaction it replaces would make the simulation revert).
fn simulated_at(replacement: bool) -> BlockId {
    if replacement {
        BlockId::latest()
    } else {
        BlockId::pending()
    }
}

/// How `submitResponse(id)` on `contract` is named in errors and logs.
pub fn response_call(contract: Address, id: u64) -> String {
    format!("submitResponse({id}) on {contract}")
}

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
        let call = response_call(contract, id);
        let tx = self
            .requests(contract)
            .submitResponse(U256::from(id), framed.into())
            .into_transaction_request();
        self.transact(&call, tx).await
    }

    /// `submitResponse(id, framed)` simulated and priced, not sent (see
    /// [`Chain::sign`]): at the pending block, or at the latest for a
    /// `replacement` (the transaction it replaces, pending, would make the
    /// simulation revert). A revert of the simulation is
    /// [`ChainError::Reverted`].
    pub async fn prepare_response(
        &self,
        contract: Address,
        id: u64,
        framed: Vec<u8>,
        replacement: bool,
    ) -> Result<Prepared, ChainError> {
        let tx = self
            .requests(contract)
            .submitResponse(U256::from(id), framed.into())
            .into_transaction_request();
        self.conn
            .prepare_at(&response_call(contract, id), tx, simulated_at(replacement))
            .await
    }

    /// `releaseAllocation(nft)` simulated and priced, not sent (see
    /// [`Chain::prepare_response`]).
    pub async fn prepare_release(
        &self,
        contract: Address,
        nft: Address,
        replacement: bool,
    ) -> Result<Prepared, ChainError> {
        let tx = self
            .requests(contract)
            .releaseAllocation(nft)
            .into_transaction_request();
        self.conn
            .prepare_at(&release_call(contract, nft), tx, simulated_at(replacement))
            .await
    }

    /// `markExpired(ids)` from the operator key (the contract's owner, who
    /// may expire any pending request) simulated and priced, not sent.
    pub async fn prepare_expire(
        &self,
        contract: Address,
        ids: &[u64],
    ) -> Result<Prepared, ChainError> {
        let tx = self
            .requests(contract)
            .markExpired(ids.iter().map(|&id| U256::from(id)).collect())
            .into_transaction_request();
        self.conn
            .prepare_at(&expire_call(contract, ids), tx, BlockId::pending())
            .await
    }

    /// Held from choosing a nonce until the node accepted the transaction.
    pub async fn lock_sends(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.conn.lock_sends().await
    }

    /// The operator's next nonce (the node's pending transactions counted).
    pub async fn pending_nonce(&self, call: &str) -> Result<u64, ChainError> {
        self.conn.pending_nonce(call).await
    }

    /// Signs `prepared` at `nonce`: its hash is known before it is sent.
    pub async fn sign(
        &self,
        call: &str,
        prepared: &Prepared,
        nonce: u64,
    ) -> Result<Signed, ChainError> {
        self.conn.sign(call, prepared, nonce).await
    }

    pub async fn broadcast(&self, call: &str, signed: &Signed) -> Result<(), ChainError> {
        self.conn.broadcast(call, signed).await
    }

    /// One look at a transaction sent earlier (mined, pending, dropped, or
    /// its nonce taken); a mined one's gas is counted.
    pub async fn tx_state(
        &self,
        call: &str,
        hash: TxHash,
        nonce: u64,
    ) -> Result<TxState, ChainError> {
        let state = self.conn.tx_state(call, hash, nonce).await?;
        if let TxState::Mined(receipt) = &state {
            self.count_gas(receipt);
        }
        Ok(state)
    }

    /// Waits at most `within` for `signed`'s receipt: a mined revert is
    /// [`ChainError::Reverted`], no receipt yet [`ChainError::Transient`].
    pub async fn wait_mined(
        &self,
        call: &str,
        signed: &Signed,
        within: Duration,
    ) -> Result<TxHash, ChainError> {
        let within = within.min(self.conn.options().receipt_timeout);
        let receipt = self
            .conn
            .wait_for_receipt_within(call, signed.hash, signed.cost.gas, within)
            .await?;
        self.count_gas(&receipt);
        Ok(receipt.transaction_hash)
    }

    /// How long a sent transaction may take to be mined before it is
    /// replaced.
    pub fn receipt_timeout(&self) -> Duration {
        self.conn.options().receipt_timeout
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
        let call = release_call(contract, nft);
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
        self.count_gas(&receipt);
        Ok(receipt.transaction_hash)
    }

    fn count_gas(&self, receipt: &TransactionReceipt) {
        let paid = u128::from(receipt.gas_used).saturating_mul(receipt.effective_gas_price);
        let mut spent = self.gas_spent_wei.lock().expect("never poisoned");
        *spent = spent.saturating_add(paid);
    }

    /// Wei paid in gas for the transactions this process had mined.
    pub fn gas_spent_wei(&self) -> u128 {
        *self.gas_spent_wei.lock().expect("never poisoned")
    }
}
