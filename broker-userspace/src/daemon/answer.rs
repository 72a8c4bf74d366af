//! Setting up a granted prefix and answering its request: never twice (the
//! chain is asked first, the answer's transaction is recorded before it is
//! broadcast and followed up at its own nonce, and the contract refuses a
//! second answer anyway), and an answered allocation is on disk before
//! anything else happens. A failure here never holds up the requests behind
//! it: the request stays `Allocated` (or `Sent`), and the next poll resumes
//! it.
//!
//! The answers of a poll form a run: each is signed, recorded and broadcast
//! as soon as it is ready, at the sender's next nonce, without waiting for
//! the one before to be mined; the run's receipts are awaited once, at the
//! end of the poll ([`Daemon::settle_run`]). So a burst found in one poll is
//! answered within a block or two rather than one answer per block. With
//! `[broker] pipeline_answers = false` each receipt is awaited before the
//! next answer is sent (the design before, kept for the benchmark).

use std::time::Duration;

use alloy::primitives::Address;
use broker_contracts::{
    chain::Signed,
    protocol::{self, ResponsePayload},
};
use ipnet::Ipv6Net;
use tracing::{debug, info, warn};

use super::{Daemon, crash_point};
use crate::{
    chain::{ChainError, TxState, response_call},
    store::{
        allocations::Allocation,
        requests::{Grant, SentTx},
    },
};

/// How long a poll waits for the receipts of the answers it sent (the
/// whole run together); after that the next polls look them up without
/// waiting (a slow chain must not stall the requests behind them).
pub(super) const RECEIPT_WAIT: Duration = Duration::from_secs(20);

/// An answer of this poll's run: recorded `Sent` and broadcast, its receipt
/// not awaited yet.
pub(super) struct InFlight {
    contract: Address,
    id: u64,
    slot: u128,
    prefix: Ipv6Net,
    call: String,
    signed: Signed,
}

/// An answer of the run found mined, to record.
struct Mined {
    contract: Address,
    id: u64,
    slot: u128,
    prefix: Ipv6Net,
    tx: alloy::primitives::TxHash,
}

/// A request's answer recorded as sent (its stage `Sent`).
pub(super) struct SentAnswer {
    pub slot: u128,
    pub server_pubkey: [u8; 65],
    pub tx: SentTx,
    /// When the stage was written (seconds since the epoch).
    pub since: u64,
}

impl Daemon {
    /// Sets `grant` up in the kernel, then answers request `id` with it.
    pub(super) async fn apply_and_answer(&mut self, contract: Address, id: u64, grant: &Grant) {
        match self.kernel.apply(&grant.allocation, grant.old_wg_key).await {
            Ok(()) => self.answer_applied(contract, id, grant).await,
            Err(e) => warn!(%contract, id, "answer deferred: {e:#}"),
        }
    }

    /// Sets the `granted` requests of `contract` up in the kernel together,
    /// then answers each; one at a time if that fails, so that one bad
    /// allocation holds up no other. A request whose allocation another
    /// decision of the same poll changed meanwhile is skipped.
    pub(super) async fn apply_and_answer_all(
        &mut self,
        contract: Address,
        granted: Vec<(u64, Grant)>,
    ) {
        let mut ready = Vec::new();
        for (id, grant) in granted {
            match self.allocation_of(contract, id, grant.allocation.slot) {
                Ok(Some(_)) => ready.push((id, grant)),
                Ok(None) => {
                    let reason = "its allocation changed before the answer".into();
                    if let Err(e) = self.store.skip(contract, id, reason) {
                        warn!(%contract, id, "answer deferred: {e:#}");
                    }
                }
                Err(e) => warn!(%contract, id, "answer deferred: {e:#}"),
            }
        }
        if ready.len() < 2 {
            for (id, grant) in &ready {
                self.apply_and_answer(contract, *id, grant).await;
            }
            return;
        }
        let allocations: Vec<_> = ready
            .iter()
            .map(|(_, g)| (&g.allocation, g.old_wg_key))
            .collect();
        match self.kernel.apply_all(&allocations).await {
            Ok(()) => {
                info!(%contract, count = ready.len(), "set up allocations together");
                for (id, grant) in &ready {
                    self.answer_applied(contract, *id, grant).await;
                }
            }
            Err(e) => {
                warn!(%contract, "setting up {} allocations together failed, one at a time: {e:#}", ready.len());
                for (id, grant) in &ready {
                    self.apply_and_answer(contract, *id, grant).await;
                }
            }
        }
    }

    /// Answers request `id`, its `grant` set up in the kernel.
    async fn answer_applied(&mut self, contract: Address, id: u64, grant: &Grant) {
        crash_point!("after-kernel");
        if let Err(e) = self
            .answer(contract, id, &grant.allocation, &grant.server_pubkey)
            .await
        {
            warn!(%contract, id, "answer deferred: {e:#}");
        }
    }

    /// Request `id`, left `Allocated` to `slot` by a failure or a crash:
    /// set up again (the kernel may be behind after a crash) and answered,
    /// unless its allocation changed meanwhile.
    pub(super) async fn resume_answer(
        &mut self,
        contract: Address,
        id: u64,
        slot: u128,
        server_pubkey: [u8; 65],
    ) -> anyhow::Result<()> {
        let Some(allocation) = self.allocation_of(contract, id, slot)? else {
            // Released, or taken over by a newer request of the same NFT.
            let reason = "its allocation changed before the answer".into();
            return Ok(self.store.skip(contract, id, reason)?);
        };
        let grant = Grant {
            allocation,
            old_wg_key: None,
            server_pubkey,
        };
        self.apply_and_answer(contract, id, &grant).await;
        Ok(())
    }

    /// Request `id`, whose answer was sent earlier (`sent`): one look at
    /// that transaction, no waiting. Mined: done. Pending: left alone until
    /// it is overdue, then replaced at its nonce with higher fees. Dropped:
    /// replaced at its nonce. Its nonce taken by another transaction: the
    /// chain says whether the request still needs an answer.
    pub(super) async fn resume_sent(
        &mut self,
        contract: Address,
        id: u64,
        sent: SentAnswer,
    ) -> anyhow::Result<()> {
        let call = response_call(contract, id);
        let SentTx { tx, nonce, .. } = sent.tx;
        let timeout = self.config.wireguard.handshake_timeout_secs;
        match self.chain.tx_state(&call, tx, nonce).await? {
            TxState::Mined(receipt) if receipt.status() => {
                info!(%contract, id, %tx, "the answer sent earlier is mined");
                Ok(self
                    .store
                    .answered(contract, id, sent.slot, Some(tx), timeout)?)
            }
            TxState::Mined(receipt) => {
                let block = receipt.block_number.unwrap_or_default();
                let reason = format!("transaction {tx} reverted in block {block}");
                self.answer_reverted(contract, id, sent.slot, &reason).await
            }
            TxState::Pending => {
                let overdue = self.chain.receipt_timeout().as_secs();
                if crate::store::now() < sent.since.saturating_add(overdue) {
                    debug!(%contract, id, %tx, "the answer is not mined yet");
                    return Ok(());
                }
                warn!(%contract, id, %tx, nonce, "the answer is not mined after {overdue}s: replacing it with higher fees");
                self.replace_answer(contract, id, &sent).await
            }
            TxState::Dropped => {
                warn!(%contract, id, %tx, nonce, "the answer's transaction was dropped: replacing it at its nonce");
                self.replace_answer(contract, id, &sent).await
            }
            TxState::NonceTaken => {
                if self.chain.response_on_chain(contract, id).await?.is_some() {
                    info!(%contract, id, "already answered on chain (by a replaced transaction)");
                    return Ok(self
                        .store
                        .answered(contract, id, sent.slot, None, timeout)?);
                }
                warn!(%contract, id, %tx, nonce, "another transaction took the answer's nonce: answering again");
                let Some(allocation) = self.allocation_of(contract, id, sent.slot)? else {
                    let reason = "its allocation changed before the answer".into();
                    return Ok(self.store.skip(contract, id, reason)?);
                };
                self.send_answer(contract, id, &allocation, &sent.server_pubkey, None)
                    .await
            }
        }
    }

    /// Request `id`'s allocation in `slot`, unless it went to another
    /// request or back to the pool.
    fn allocation_of(
        &self,
        contract: Address,
        id: u64,
        slot: u128,
    ) -> anyhow::Result<Option<Allocation>> {
        Ok(self
            .store
            .allocation(slot)?
            .filter(|a| a.contract == contract && a.request_id == id))
    }

    async fn replace_answer(
        &mut self,
        contract: Address,
        id: u64,
        sent: &SentAnswer,
    ) -> anyhow::Result<()> {
        let Some(allocation) = self.allocation_of(contract, id, sent.slot)? else {
            let reason = "its allocation changed before the answer".into();
            return Ok(self.store.skip(contract, id, reason)?);
        };
        self.send_answer(
            contract,
            id,
            &allocation,
            &sent.server_pubkey,
            Some(sent.tx),
        )
        .await
    }

    async fn answer(
        &mut self,
        contract: Address,
        id: u64,
        allocation: &Allocation,
        server_pubkey: &[u8; 65],
    ) -> anyhow::Result<()> {
        let timeout = self.config.wireguard.handshake_timeout_secs;
        let slot = allocation.slot;
        if self.chain.response_on_chain(contract, id).await?.is_some() {
            info!(%contract, id, "already answered on chain (an earlier run sent it)");
            return Ok(self.store.answered(contract, id, slot, None, timeout)?);
        }
        self.send_answer(contract, id, allocation, server_pubkey, None)
            .await
    }

    /// Sends request `id`'s answer: simulated, signed, recorded as `Sent`,
    /// broadcast, and added to the poll's run, whose receipts
    /// [`Daemon::settle_run`] awaits (at once when answers are not
    /// pipelined). `replacing`: an earlier transaction of the same answer,
    /// replaced at its nonce with higher fees.
    async fn send_answer(
        &mut self,
        contract: Address,
        id: u64,
        allocation: &Allocation,
        server_pubkey: &[u8; 65],
        replacing: Option<SentTx>,
    ) -> anyhow::Result<()> {
        let call = response_call(contract, id);
        let slot = allocation.slot;
        let payload = ResponsePayload {
            prefix: allocation.prefix.to_string(),
            gateway: self.config.broker.pool.broker_address().to_string(),
            broker_pubkey: self.kernel.tunnel.public_key().to_base64(),
            broker_endpoint: self.config.wireguard.endpoint.clone(),
            dns_zone: self.config.broker.dns_zone.clone(),
        };
        let ciphertext = protocol::encrypt(server_pubkey, payload.to_json().as_bytes())?;
        let framed = protocol::frame_response(id, &ciphertext);
        let replacement = replacing.is_some();
        let prepared = match self
            .chain
            .prepare_response(contract, id, framed, replacement)
            .await
        {
            Ok(prepared) => prepared,
            Err(e) if e.is_reverted() => {
                return self
                    .answer_reverted(contract, id, slot, &e.to_string())
                    .await;
            }
            Err(e) => return Err(e.into()),
        };
        let store = &self.store;
        let record = |tx| store.sent(contract, id, slot, *server_pubkey, tx);
        let signed = self
            .sign_record_send(&call, prepared, replacing.as_ref(), record)
            .await?;
        crash_point!("after-send");
        let tx = signed.hash;
        info!(%contract, id, %tx, nonce = signed.nonce, "answer sent");
        self.run.push(InFlight {
            contract,
            id,
            slot,
            prefix: allocation.prefix,
            call,
            signed,
        });
        if !self.config.broker.pipeline_answers {
            self.settle_run().await;
        }
        Ok(())
    }

    /// Awaits the receipts of the poll's run, all within [`RECEIPT_WAIT`]
    /// together (once it has passed, one look each): mined answers are
    /// recorded answered, reverted ones looked into; the others stay `Sent`
    /// for the next polls to follow up at their nonces. A failure with one
    /// answer never stops the others.
    pub(super) async fn settle_run(&mut self) {
        if self.run.is_empty() {
            return;
        }
        crash_point!("before-receipts");
        let run = std::mem::take(&mut self.run);
        let deadline = tokio::time::Instant::now() + RECEIPT_WAIT;
        let mut mined = Vec::new();
        for sent in run {
            let (contract, id) = (sent.contract, sent.id);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.settle(sent, left).await {
                Ok(Some(answer)) => mined.push(answer),
                Ok(None) => {}
                Err(e) => {
                    warn!(%contract, id, "answer not recorded, followed up by the next polls: {e:#}");
                }
            }
        }
        if mined.is_empty() {
            return;
        }
        crash_point!("before-answered");
        let timeout = self.config.wireguard.handshake_timeout_secs;
        let answers: Vec<_> = mined
            .iter()
            .map(|a| (a.contract, a.id, a.slot, a.tx))
            .collect();
        match self.store.answered_all(&answers, timeout) {
            Ok(()) => {
                for a in &mined {
                    info!(contract = %a.contract, id = a.id, tx = %a.tx, prefix = %a.prefix, "answered");
                }
            }
            Err(e) => warn!(
                "{} mined answers not recorded, followed up by the next polls: {e:#}",
                mined.len()
            ),
        }
    }

    /// One answer of the run: mined (to record), reverted (looked into), or
    /// not mined yet (left to the next polls).
    async fn settle(&mut self, sent: InFlight, within: Duration) -> anyhow::Result<Option<Mined>> {
        let InFlight {
            contract,
            id,
            slot,
            prefix,
            call,
            signed,
        } = sent;
        let tx = signed.hash;
        match self.chain.wait_mined(&call, &signed, within).await {
            Ok(tx) => Ok(Some(Mined {
                contract,
                id,
                slot,
                prefix,
                tx,
            })),
            Err(ChainError::Reverted { reason, .. }) => {
                self.answer_reverted(contract, id, slot, &reason).await?;
                Ok(None)
            }
            Err(e) => {
                info!(%contract, id, %tx, "answer not mined yet, followed up by the next polls: {e}");
                Ok(None)
            }
        }
    }

    /// The chain refused request `id`'s answer (`why`): answered after all
    /// (by an earlier transaction), or no longer answerable.
    async fn answer_reverted(
        &mut self,
        contract: Address,
        id: u64,
        slot: u128,
        why: &str,
    ) -> anyhow::Result<()> {
        let timeout = self.config.wireguard.handshake_timeout_secs;
        if self.chain.response_on_chain(contract, id).await?.is_some() {
            return Ok(self.store.answered(contract, id, slot, None, timeout)?);
        }
        // No longer answerable (expired or superseded meanwhile).
        warn!(%contract, id, "the answer was refused: {why}");
        let reason = format!("answer refused on chain: {why}");
        Ok(self.store.refused(contract, id, slot, reason, timeout)?)
    }
}
