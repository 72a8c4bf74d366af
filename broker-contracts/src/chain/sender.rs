//! Transactions: every step chosen and bounded here rather than by provider
//! fillers, so each failure is classified.
//!
//! 1. [`Connection::prepare`]: `eth_estimateGas` simulates the call (a revert
//!    there is [`ChainError::Reverted`] and nothing is sent), plus
//!    [`ChainOptions::gas_margin_percent`]; then the fees: EIP-1559
//!    estimates, or the legacy gas price on chains without EIP-1559. The
//!    [`Cost`] is the most the transaction may cost (what a node requires
//!    the sender to hold).
//! 2. [`Connection::send`]: the nonce is the node's pending transaction count
//!    (never a cached one: a rejected send cannot leave a gap that would
//!    stall every later transaction), chosen under a lock held until the node
//!    accepted the transaction, so clones of one [`Connection`] never reuse a
//!    nonce.
//! 3. [`Connection::wait_for_receipt`]: polled with backoff until
//!    [`ChainOptions::receipt_timeout`]; a mined revert is
//!    [`ChainError::Reverted`] with the transaction, no receipt in time is
//!    [`ChainError::Transient`] (the transaction may still be mined: check
//!    before sending again). The wait also ends, the same way, when the
//!    owner is stopping ([`Connection::stop_on`]).
//!
//! [`Connection::transact`] does all three.

use std::{fmt, time::Duration};

use alloy::{
    network::TransactionBuilder as _,
    primitives::{
        TxHash, U256,
        utils::{ParseUnits, Unit},
    },
    providers::Provider,
    rpc::types::{TransactionReceipt, TransactionRequest},
    transports::RpcError,
};
use tokio::time::Instant;

use super::{ChainError, ChainOptions, Connection, error::classify};
use crate::error_text::one_line;

/// The first pause between receipt polls; it doubles up to
/// [`ChainOptions::receipt_poll_max`].
const FIRST_POLL: Duration = Duration::from_millis(100);

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

/// A transaction simulated and priced, ready to send.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub tx: TransactionRequest,
    pub cost: Cost,
}

impl Connection {
    /// Sends `tx` (its `to` and input; the rest is filled here) from the
    /// signer and waits for its successful receipt. See the module doc for
    /// what each failure means.
    pub async fn transact(
        &self,
        call: &str,
        tx: TransactionRequest,
    ) -> Result<TransactionReceipt, ChainError> {
        let prepared = self.prepare(call, tx).await?;
        let hash = self.send(call, &prepared).await?;
        self.wait_for_receipt(call, hash, prepared.cost.gas).await
    }

    /// Simulates `tx` from the signer and fixes its gas limit (the estimate
    /// plus the margin) and fees.
    pub async fn prepare(
        &self,
        call: &str,
        tx: TransactionRequest,
    ) -> Result<Prepared, ChainError> {
        let from = self.signer().ok_or_else(|| {
            ChainError::Config(format!("{call}: no key to send transactions with"))
        })?;
        let tx = tx.with_from(from).with_chain_id(self.chain_id());
        let estimate = self
            .rpc(call, self.provider().estimate_gas(tx.clone()))
            .await?;
        let margin = self.options().gas_margin_percent;
        let gas = estimate.saturating_add(estimate.saturating_mul(margin) / 100);
        // A chain without EIP-1559 refuses eth_feeHistory or answers it
        // without base fees: the legacy gas price then. An endpoint that is
        // unreachable or slow is no reason to fall back.
        let fees = match self.provider().estimate_eip1559_fees().await {
            Ok(f) => Fees::Eip1559 {
                max_fee_per_gas: f.max_fee_per_gas,
                max_priority_fee_per_gas: f.max_priority_fee_per_gas,
            },
            Err(e @ RpcError::Transport(_)) => return Err(classify(self.endpoint(), call, e)),
            Err(e) => {
                tracing::debug!(%e, "no EIP-1559 fee estimate; using the legacy gas price");
                Fees::Legacy {
                    gas_price: self.rpc(call, self.provider().get_gas_price()).await?,
                }
            }
        };
        let tx = tx.with_gas_limit(gas);
        let tx = match fees {
            Fees::Eip1559 {
                max_fee_per_gas,
                max_priority_fee_per_gas,
            } => tx
                .with_max_fee_per_gas(max_fee_per_gas)
                .with_max_priority_fee_per_gas(max_priority_fee_per_gas),
            Fees::Legacy { gas_price } => tx.with_gas_price(gas_price),
        };
        Ok(Prepared {
            tx,
            cost: Cost { gas, fees },
        })
    }

    /// Picks the nonce and sends, under the send lock; the transaction's
    /// hash once the node accepted it.
    pub async fn send(&self, call: &str, prepared: &Prepared) -> Result<TxHash, ChainError> {
        let from = prepared.tx.from.unwrap_or_default();
        let _guard = self.send_lock.lock().await;
        let nonce = self
            .rpc(call, self.provider().get_transaction_count(from).pending())
            .await?;
        let tx = prepared.tx.clone().with_nonce(nonce);
        match self.provider().send_transaction(tx).await {
            Ok(pending) => Ok(*pending.tx_hash()),
            Err(e @ RpcError::ErrorResp(_)) => Err(classify(self.endpoint(), call, e)),
            Err(e) => {
                let e = classify(self.endpoint(), call, e);
                Err(ChainError::transient(
                    call,
                    format!(
                        "sending the transaction failed (it may have reached the node: \
                         check before sending again): {}",
                        match &e {
                            ChainError::Transient { reason, .. } => reason.clone(),
                            other => other.to_string(),
                        }
                    ),
                ))
            }
        }
    }

    /// Polls for the receipt of `hash` (sent with `gas_limit`) until it is
    /// mined, the receipt timeout passes, or the owner stops.
    pub async fn wait_for_receipt(
        &self,
        call: &str,
        hash: TxHash,
        gas_limit: u64,
    ) -> Result<TransactionReceipt, ChainError> {
        let ChainOptions {
            receipt_timeout,
            receipt_poll_max,
            ..
        } = *self.options();
        let deadline = Instant::now() + receipt_timeout;
        let mut pause = FIRST_POLL;
        let mut last_trouble = None;
        loop {
            match self
                .rpc(call, self.provider().get_transaction_receipt(hash))
                .await
            {
                Ok(Some(receipt)) if receipt.status() => return Ok(receipt),
                Ok(Some(receipt)) => {
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
                         still be: check before sending again)"
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
                        receipt_timeout.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(receipt_poll_max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let legacy = Cost {
            gas: 21_000,
            fees: Fees::Legacy {
                gas_price: 1_000_000_000,
            },
        };
        assert_eq!(legacy.total(), U256::from(21_000_000_000_000u64));
        assert_eq!(ether(U256::from(10u64).pow(U256::from(18))), "1");
        assert_eq!(ether(U256::ZERO), "0");
    }
}
