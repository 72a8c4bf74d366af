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
    /// chain order, fetched at most [`ChainOptions::log_range`] blocks per
    /// call. Providers cap the range and the number of results of a call
    /// (often 500 blocks or fewer, 10,000 logs), and anyone can emit many
    /// events cheaply: a call the node refuses as too much is split in
    /// halves, down to one block, and the rest of the scan keeps the
    /// smaller span. Empty when `from > to`.
    ///
    /// [`ChainOptions::log_range`]: broker_contracts::chain::ChainOptions::log_range
    pub async fn released_events(
        &self,
        contract: Address,
        from: u64,
        to: u64,
    ) -> Result<Vec<Released>, ChainError> {
        let mut span = self.conn.options().log_range.max(1);
        let mut events = Vec::new();
        let mut start = from;
        while start <= to {
            let end = start.saturating_add(span - 1).min(to);
            let mut chunk = Vec::new();
            match self.released_chunk(contract, start, end, &mut chunk).await {
                Ok(()) => events.append(&mut chunk),
                Err(e) if end > start && is_too_much(&e) => {
                    span = (end - start).div_ceil(2).max(1);
                    tracing::info!(
                        %contract,
                        "the node refused {} blocks of logs ({e}); asking for {span} at a time",
                        end - start + 1
                    );
                    continue;
                }
                Err(e) => return Err(e),
            }
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

/// A node's refusal of an `eth_getLogs` call as too large: too many blocks
/// or too many results. Providers word it their own way ("query returned
/// more than 10000 results", "block range is too wide", "exceed maximum
/// block range", "Log response size exceeded"), some with code -32005,
/// which the retry layer also takes for a rate limit and retries before
/// giving up. A rate limit itself ("Too Many Requests") is not one:
/// splitting would only make more calls.
fn is_too_much(e: &ChainError) -> bool {
    let ChainError::Transient { reason, .. } = e else {
        return false;
    };
    let reason = reason.to_ascii_lowercase();
    // Not any "range": "BlockOutOfRangeError" is a block past the head.
    [
        "block range",
        "range is too",
        "limited to",
        "more than",
        "too many results",
        "too many logs",
        "too large",
        "too wide",
        "response size",
    ]
    .iter()
    .any(|words| reason.contains(words))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_as_too_much_are_told_from_other_failures() {
        let refused =
            |message: &str| ChainError::transient("logs", format!("the node refused: {message}"));
        for message in [
            "query returned more than 10000 results (code -32005)",
            "block range is too wide (code -32600)",
            "exceed maximum block range: 5000 (code -32000)",
            "Log response size exceeded. (code -32602)",
        ] {
            assert!(is_too_much(&refused(message)), "{message}");
        }
        assert!(!is_too_much(&refused("header not found (code -32000)")));
        assert!(!is_too_much(&refused("Too Many Requests (code 429)")));
        assert!(!is_too_much(&refused(
            "BlockOutOfRangeError: block height is 10 but requested was 11 (code -32602)"
        )));
        assert!(is_too_much(&refused(
            "eth_getLogs is limited to a 10,000 range (code -32602)"
        )));
        let gave_up = ChainError::transient(
            "logs",
            "the RPC endpoint http://x is rate limiting: Max retries exceeded server returned an error response: error code -32005: query returned more than 1 results",
        );
        assert!(is_too_much(&gave_up));
        let rate_limited = ChainError::transient(
            "logs",
            "the RPC endpoint http://x is rate limiting: Max retries exceeded server returned an error response: error code -32005: daily request count exceeded",
        );
        assert!(!is_too_much(&rate_limited));
        assert!(!is_too_much(&ChainError::transient(
            "logs",
            "no answer from http://x in 5.0s"
        )));
    }
}
