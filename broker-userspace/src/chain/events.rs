//! `AllocationReleased` events: how the daemon learns that an NFT owner
//! released its allocation with `releaseOwnAllocation` (and sees its own
//! `releaseAllocation` calls confirmed).

use alloy::{
    primitives::{Address, TxHash},
    providers::Provider,
    rpc::types::Filter,
    sol_types::SolEvent,
};
use broker_contracts::{BrokerRequests, chain::to_u64, error_text::one_line};

use super::{Chain, ChainError};

/// One `AllocationReleased(requestId, nftContract, by)` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    /// The request that was current (Pending or Approved) and is now Expired.
    pub request_id: u64,
    pub nft: Address,
    /// The NFT contract's owner (`releaseOwnAllocation`) or the broker's
    /// operator (`releaseAllocation`).
    pub by: Address,
    pub block: u64,
    pub transaction: Option<TxHash>,
}

impl Chain {
    /// `AllocationReleased` events of `contract` in blocks `from..=to`, in
    /// chain order, fetched [`ChainOptions::log_range`] blocks per call.
    /// Empty when `from > to`.
    ///
    /// [`ChainOptions::log_range`]: broker_contracts::chain::ChainOptions::log_range
    pub async fn released_events(
        &self,
        contract: Address,
        from: u64,
        to: u64,
    ) -> Result<Vec<Released>, ChainError> {
        let span = self.conn.options().log_range.max(1);
        let mut events = Vec::new();
        let mut start = from;
        while start <= to {
            let end = start.saturating_add(span - 1).min(to);
            self.released_chunk(contract, start, end, &mut events)
                .await?;
            match end.checked_add(1) {
                Some(next) => start = next,
                None => break,
            }
        }
        Ok(events)
    }

    async fn released_chunk(
        &self,
        contract: Address,
        from: u64,
        to: u64,
        events: &mut Vec<Released>,
    ) -> Result<(), ChainError> {
        let call = format!("AllocationReleased logs of {contract} in blocks {from}..={to}");
        let filter = Filter::new()
            .address(contract)
            .event_signature(BrokerRequests::AllocationReleased::SIGNATURE_HASH)
            .from_block(from)
            .to_block(to);
        let logs = self
            .conn
            .rpc(&call, self.conn.provider().get_logs(&filter))
            .await?;
        for log in logs {
            if log.removed {
                continue;
            }
            let block = log
                .block_number
                .ok_or_else(|| ChainError::bad_data(&call, "a log without a block number"))?;
            if block < from || block > to || log.address() != contract {
                return Err(ChainError::bad_data(
                    &call,
                    format!(
                        "the node answered with a log of {} in block {block}",
                        log.address()
                    ),
                ));
            }
            let decoded = log
                .log_decode::<BrokerRequests::AllocationReleased>()
                .map_err(|e| {
                    ChainError::bad_data(
                        &call,
                        format!(
                            "undecodable log in block {block}: {}",
                            one_line(&e.to_string())
                        ),
                    )
                })?;
            let event = &decoded.inner.data;
            events.push(Released {
                request_id: to_u64(&call, "request id", event.requestId)?,
                nft: event.nftContract,
                by: event.by,
                block,
                transaction: log.transaction_hash,
            });
        }
        Ok(())
    }
}
