//! The operator's transactions: every step chosen and bounded here rather
//! than by provider fillers, so each failure is classified.
//!
//! 1. `eth_estimateGas` simulates the call: a revert there is
//!    [`ChainError::Reverted`] and nothing is sent.
//! 2. The nonce is the node's pending transaction count (never a cached
//!    one: a rejected send cannot leave a gap that would stall every later
//!    transaction), chosen under a lock held until the node accepted the
//!    transaction, so clones of one [`Chain`] never reuse a nonce.
//! 3. Fees as deploy.rs fixes them: EIP-1559 estimates, or the legacy gas
//!    price on chains without EIP-1559.
//! 4. The receipt is polled until [`ChainOptions::receipt_timeout`]; a mined
//!    revert is [`ChainError::Reverted`] with the transaction, no receipt in
//!    time is [`ChainError::Transient`] (the transaction may still be mined:
//!    check [`Chain::response_on_chain`] before sending again). The wait
//!    also ends, the same way, when the daemon is stopping.
//!
//! [`ChainOptions::receipt_timeout`]: super::ChainOptions::receipt_timeout

use std::time::Duration;

use alloy::{
    eips::BlockId,
    network::TransactionBuilder as _,
    primitives::{Address, TxHash, U256},
    providers::Provider,
    rpc::types::TransactionRequest,
    sol_types::SolCall,
    transports::RpcError,
};
use broker_contracts::BrokerRequests;
use tokio::time::Instant;

use super::{Chain, ChainError, describe, one_line};

/// The first pause between receipt polls; it doubles up to
/// `receipt_poll_max`.
const FIRST_POLL: Duration = Duration::from_millis(100);

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
        let data = BrokerRequests::submitResponseCall {
            requestId: U256::from(id),
            encryptedPayload: framed.into(),
        };
        self.transact(&call, contract, data.abi_encode()).await
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
        let data = BrokerRequests::releaseAllocationCall { nftContract: nft };
        self.transact(&call, contract, data.abi_encode()).await
    }

    /// `setTotalCapacity(capacity)` only when the contract's `totalCapacity`
    /// (read at the latest block) differs; Some(tx) when sent. V2 only.
    pub async fn sync_total_capacity(
        &self,
        contract: Address,
        capacity: u64,
    ) -> Result<Option<TxHash>, ChainError> {
        let call = format!("totalCapacity() on {contract}");
        let current = self
            .view(
                &call,
                contract,
                &BrokerRequests::totalCapacityCall {},
                BlockId::latest(),
            )
            .await?;
        if current == U256::from(capacity) {
            return Ok(None);
        }
        let call = format!("setTotalCapacity({capacity}) on {contract} (was {current})");
        let data = BrokerRequests::setTotalCapacityCall {
            newTotalCapacity: U256::from(capacity),
        };
        self.transact(&call, contract, data.abi_encode())
            .await
            .map(Some)
    }

    async fn transact(
        &self,
        call: &str,
        contract: Address,
        input: Vec<u8>,
    ) -> Result<TxHash, ChainError> {
        let tx = TransactionRequest::default()
            .with_from(self.operator)
            .with_to(contract)
            .with_input(input)
            .with_chain_id(self.chain_id);

        // 1. Simulate (a revert stops here) and size the gas.
        let estimate = self
            .rpc(call, self.provider.estimate_gas(tx.clone()))
            .await?;
        let gas =
            estimate.saturating_add(estimate.saturating_mul(self.options.gas_margin_percent) / 100);
        let tx = tx.with_gas_limit(gas);
        let tx = self.with_fees(call, tx).await?;

        // 2. Nonce and send, under the lock.
        let hash = {
            let _guard = self.send_lock.lock().await;
            let nonce = self
                .rpc(
                    call,
                    self.provider.get_transaction_count(self.operator).pending(),
                )
                .await?;
            let tx = tx.with_nonce(nonce);
            match self.timed(call, self.provider.send_transaction(tx)).await? {
                Ok(pending) => *pending.tx_hash(),
                Err(e @ RpcError::ErrorResp(_)) => return Err(self.classify(call, e)),
                Err(e) => {
                    return Err(ChainError::transient(
                        call,
                        format!(
                            "sending the transaction failed (it may have reached the node: \
                             check before sending again): {}",
                            self.redact(describe(&e))
                        ),
                    ));
                }
            }
        };

        // 3. The receipt.
        self.wait_for_receipt(call, hash, gas).await
    }

    /// EIP-1559 fees when the chain has them, else the legacy gas price.
    async fn with_fees(
        &self,
        call: &str,
        tx: TransactionRequest,
    ) -> Result<TransactionRequest, ChainError> {
        match self
            .timed(call, self.provider.estimate_eip1559_fees())
            .await?
        {
            Ok(fees) => Ok(tx
                .with_max_fee_per_gas(fees.max_fee_per_gas)
                .with_max_priority_fee_per_gas(fees.max_priority_fee_per_gas)),
            Err(_) => {
                let price = self.rpc(call, self.provider.get_gas_price()).await?;
                Ok(tx.with_gas_price(price))
            }
        }
    }

    async fn wait_for_receipt(
        &self,
        call: &str,
        hash: TxHash,
        gas_limit: u64,
    ) -> Result<TxHash, ChainError> {
        let deadline = Instant::now() + self.options.receipt_timeout;
        let mut pause = FIRST_POLL;
        let mut last_trouble = None;
        loop {
            match self
                .rpc(call, self.provider.get_transaction_receipt(hash))
                .await
            {
                Ok(Some(receipt)) => {
                    if receipt.status() {
                        return Ok(hash);
                    }
                    let block = receipt
                        .block_number
                        .map_or_else(|| "a block".to_string(), |n| format!("block {n}"));
                    let out_of_gas = if receipt.gas_used >= gas_limit {
                        " (out of gas: it used all of its gas limit)"
                    } else {
                        ""
                    };
                    return Err(ChainError::Reverted {
                        call: call.to_string(),
                        reason: format!("transaction {hash} reverted in {block}{out_of_gas}"),
                        tx: Some(hash),
                    });
                }
                Ok(None) => {}
                Err(e) => last_trouble = Some(e),
            }
            if self.stopping() {
                return Err(ChainError::transient(
                    call,
                    format!(
                        "stopped while waiting for transaction {hash} to be mined (it may \
                         still be: checked before sending again)"
                    ),
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                let trouble = match last_trouble {
                    Some(ChainError::Transient { reason, .. }) => format!("; last error: {reason}"),
                    Some(other) => format!("; last error: {}", one_line(&other.to_string())),
                    None => String::new(),
                };
                return Err(ChainError::transient(
                    call,
                    format!(
                        "transaction {hash} sent but not mined within {}s (it may still be: \
                         check before sending again){trouble}",
                        self.options.receipt_timeout.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(self.options.receipt_poll_max);
        }
    }
}
