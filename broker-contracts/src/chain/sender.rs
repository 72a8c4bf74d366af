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
//!
//! A caller that must survive a crash between sending and the receipt (the
//! daemon: a second answer would burn gas and revert) uses the steps
//! apart: [`Connection::lock_sends`], [`Connection::pending_nonce`],
//! [`Connection::sign`] (the hash is known before any node sees the
//! transaction), records the hash and nonce, [`Connection::broadcast`];
//! later [`Connection::tx_state`] says whether that transaction was mined,
//! is still pending, was dropped (its nonce is free: replace it with
//! [`Fees::replacing`]) or lost its nonce to another transaction.

use std::{fmt, time::Duration};

use alloy::{
    eips::{BlockId, Encodable2718 as _},
    network::{NetworkTransactionBuilder as _, TransactionBuilder as _},
    primitives::{
        Bytes, TxHash, U256,
        utils::{ParseUnits, Unit},
    },
    providers::Provider,
    rpc::types::{TransactionReceipt, TransactionRequest},
    transports::RpcError,
};
use tokio::time::Instant;

use super::{ChainError, Connection, error::classify};
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

    /// The tip (EIP-1559), or the gas price (legacy).
    pub fn priority_fee_per_gas(&self) -> u128 {
        match *self {
            Fees::Eip1559 {
                max_priority_fee_per_gas,
                ..
            } => max_priority_fee_per_gas,
            Fees::Legacy { gas_price } => gas_price,
        }
    }

    /// Fees for a transaction replacing one sent with `self` at the same
    /// nonce: each field at least an eighth higher (nodes require 10 %
    /// more of both the fee cap and the tip), and never below what the
    /// chain asks `now`.
    pub fn replacing(&self, now: Fees) -> Fees {
        let bump = |old: u128| old.saturating_add(old / 8).saturating_add(1);
        match now {
            Fees::Eip1559 {
                max_fee_per_gas,
                max_priority_fee_per_gas,
            } => {
                let tip = max_priority_fee_per_gas.max(bump(self.priority_fee_per_gas()));
                Fees::Eip1559 {
                    max_fee_per_gas: max_fee_per_gas.max(bump(self.max_fee_per_gas())).max(tip),
                    max_priority_fee_per_gas: tip,
                }
            }
            Fees::Legacy { gas_price } => Fees::Legacy {
                gas_price: gas_price.max(bump(self.max_fee_per_gas())),
            },
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

impl Prepared {
    /// The same transaction with other fees (a replacement's).
    pub fn with_fees(mut self, fees: Fees) -> Prepared {
        self.tx = match fees {
            Fees::Eip1559 {
                max_fee_per_gas,
                max_priority_fee_per_gas,
            } => self
                .tx
                .with_max_fee_per_gas(max_fee_per_gas)
                .with_max_priority_fee_per_gas(max_priority_fee_per_gas),
            Fees::Legacy { gas_price } => self.tx.with_gas_price(gas_price),
        };
        self.cost.fees = fees;
        self
    }
}

/// A transaction signed here and not broadcast yet: its hash is final.
#[derive(Clone, Debug)]
pub struct Signed {
    pub hash: TxHash,
    pub nonce: u64,
    pub cost: Cost,
    raw: Bytes,
}

/// What the node knows of a transaction sent earlier (see
/// [`Connection::tx_state`]).
#[derive(Clone, Debug)]
pub enum TxState {
    /// Mined, successfully or not (the receipt's status says).
    Mined(Box<TransactionReceipt>),
    /// Known to the node, not mined yet; or unknown to it while another
    /// transaction of the signer waits in the pool at its nonce (one the
    /// node took in its place, e.g. the next answer of a pipelined run
    /// after this one's broadcast was refused): wait as for a pending one,
    /// since replacing it now would displace that other transaction.
    Pending,
    /// Unknown to the node and its nonce still unused, in blocks and in the
    /// pool: dropped (or it never arrived). Replace it at the same nonce.
    Dropped,
    /// Unknown to the node, and its nonce was used by another transaction.
    NonceTaken,
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
        self.prepare_at(call, tx, BlockId::pending()).await
    }

    /// [`Connection::prepare`], simulated at `block`: the latest one for a
    /// replacement, which the pending block's own transaction at the same
    /// nonce would make revert.
    pub async fn prepare_at(
        &self,
        call: &str,
        tx: TransactionRequest,
        block: BlockId,
    ) -> Result<Prepared, ChainError> {
        let from = self.signer().ok_or_else(|| {
            ChainError::Config(format!("{call}: no key to send transactions with"))
        })?;
        let tx = tx.with_from(from).with_chain_id(self.chain_id());
        let estimate = self
            .rpc(call, self.provider().estimate_gas(tx.clone()).block(block))
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

    /// Held from choosing a nonce until the node accepted the transaction
    /// (see [`Connection::sign`]).
    pub async fn lock_sends(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.send_lock.clone().lock_owned().await
    }

    /// The signer's next nonce, counting the node's pending transactions.
    pub async fn pending_nonce(&self, call: &str) -> Result<u64, ChainError> {
        let from = self.signer().ok_or_else(|| {
            ChainError::Config(format!("{call}: no key to send transactions with"))
        })?;
        self.rpc(call, self.provider().get_transaction_count(from).pending())
            .await
    }

    /// Signs `prepared` at `nonce` without sending it. Hold
    /// [`Connection::lock_sends`] from choosing the nonce to the broadcast.
    pub async fn sign(
        &self,
        call: &str,
        prepared: &Prepared,
        nonce: u64,
    ) -> Result<Signed, ChainError> {
        let wallet = self.wallet.as_ref().ok_or_else(|| {
            ChainError::Config(format!("{call}: no key to send transactions with"))
        })?;
        let tx = prepared.tx.clone().with_nonce(nonce);
        let envelope = tx
            .build(wallet)
            .await
            .map_err(|e| ChainError::Config(format!("{call}: cannot sign: {e}")))?;
        Ok(Signed {
            hash: *envelope.tx_hash(),
            nonce,
            cost: prepared.cost,
            raw: envelope.encoded_2718().into(),
        })
    }

    /// Sends a transaction signed by [`Connection::sign`]. The node knowing
    /// it already (a second broadcast) is no error.
    pub async fn broadcast(&self, call: &str, signed: &Signed) -> Result<(), ChainError> {
        match self.provider().send_raw_transaction(&signed.raw).await {
            Ok(_) => Ok(()),
            // geth says "already known", anvil "transaction already imported".
            Err(RpcError::ErrorResp(payload)) if is_already_known(&payload.message) => Ok(()),
            Err(e @ RpcError::ErrorResp(_)) => Err(classify(self.endpoint(), call, e)),
            Err(e) => Err(ChainError::transient(
                call,
                format!(
                    "sending transaction {} failed (it may have reached the node): {}",
                    signed.hash,
                    classify(self.endpoint(), call, e)
                ),
            )),
        }
    }

    /// Whether transaction `hash`, sent by the signer at `nonce`, is mined,
    /// pending, dropped or displaced by another transaction at its nonce.
    /// One look, no waiting.
    pub async fn tx_state(
        &self,
        call: &str,
        hash: TxHash,
        nonce: u64,
    ) -> Result<TxState, ChainError> {
        let from = self.signer().ok_or_else(|| {
            ChainError::Config(format!("{call}: no key to send transactions with"))
        })?;
        let receipt = || self.rpc(call, self.provider().get_transaction_receipt(hash));
        if let Some(receipt) = receipt().await? {
            return Ok(TxState::Mined(Box::new(receipt)));
        }
        let known = self
            .rpc(call, self.provider().get_transaction_by_hash(hash))
            .await?;
        if known.is_some() {
            return Ok(TxState::Pending);
        }
        let mined = self
            .rpc(call, self.provider().get_transaction_count(from).latest())
            .await?;
        if mined <= nonce {
            // The pending count covers the pool's executable transactions
            // only (geth and anvil alike): above `nonce`, one holds it.
            let pending = self
                .rpc(call, self.provider().get_transaction_count(from).pending())
                .await?;
            return Ok(if pending > nonce {
                TxState::Pending
            } else {
                TxState::Dropped
            });
        }
        // Mined between the first look and the count?
        Ok(match receipt().await? {
            Some(receipt) => TxState::Mined(Box::new(receipt)),
            None => TxState::NonceTaken,
        })
    }

    /// Polls for the receipt of `hash` (sent with `gas_limit`) until it is
    /// mined, the receipt timeout passes, or the owner stops.
    pub async fn wait_for_receipt(
        &self,
        call: &str,
        hash: TxHash,
        gas_limit: u64,
    ) -> Result<TransactionReceipt, ChainError> {
        self.wait_for_receipt_within(call, hash, gas_limit, self.options().receipt_timeout)
            .await
    }

    /// [`Connection::wait_for_receipt`], giving up after `receipt_timeout`.
    pub async fn wait_for_receipt_within(
        &self,
        call: &str,
        hash: TxHash,
        gas_limit: u64,
        receipt_timeout: Duration,
    ) -> Result<TransactionReceipt, ChainError> {
        let receipt_poll_max = self.options().receipt_poll_max;
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

/// A node's answer to a transaction it holds already.
fn is_already_known(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("already known") || message.contains("already imported")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_pays_an_eighth_more_or_what_the_chain_asks() {
        let old = Fees::Eip1559 {
            max_fee_per_gas: 800,
            max_priority_fee_per_gas: 80,
        };
        let low = Fees::Eip1559 {
            max_fee_per_gas: 100,
            max_priority_fee_per_gas: 10,
        };
        assert_eq!(
            old.replacing(low),
            Fees::Eip1559 {
                max_fee_per_gas: 901,
                max_priority_fee_per_gas: 91
            }
        );
        let high = Fees::Eip1559 {
            max_fee_per_gas: 5000,
            max_priority_fee_per_gas: 500,
        };
        assert_eq!(old.replacing(high), high);
        let legacy = Fees::Legacy { gas_price: 16 };
        assert_eq!(
            legacy.replacing(Fees::Legacy { gas_price: 1 }),
            Fees::Legacy { gas_price: 19 }
        );
    }

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
