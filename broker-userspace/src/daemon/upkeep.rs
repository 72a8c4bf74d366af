//! What each poll does besides new requests: tunnels that never came up,
//! allocations their owners released on chain, on-chain releases still owed.

use std::time::{Duration, UNIX_EPOCH};

use alloy::primitives::Address;
use tracing::{info, warn};

use super::{Daemon, crash_point, kernel::Removed};
use crate::{
    chain::{BlockRef, ChainError, TxState, release_call},
    operator::OnChainRelease,
    store::{Pruned, allocations::Allocation, chain_releases::OwedRelease, now, requests::SentTx},
};

/// How often old records are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

impl Daemon {
    /// Each step on its own: one failing (a provider refusing the event
    /// scan, say) never holds up the others, which it used to do for good.
    /// The failed step runs again at the next poll.
    pub(super) async fn upkeep(&mut self, at: &BlockRef) {
        if let Err(e) = self.watch_owner_releases(at).await {
            warn!("watching for releases by NFT owners (again next poll): {e:#}");
            self.count_chain_error(e.as_ref());
        }
        if let Err(e) = self.check_handshakes().await {
            warn!("checking tunnel handshakes (again next poll): {e:#}");
            self.count_chain_error(e.as_ref());
        }
        self.send_owed_releases().await;
        if let Err(e) = self.expire_rejected().await {
            warn!("expiring rejected requests on chain (again next poll): {e:#}");
            self.count_chain_error(e.as_ref());
        }
        if let Err(e) = self.prune_old_records() {
            warn!("pruning old records (again next poll): {e:#}");
        }
    }

    /// Finished requests' records and audit entries older than the
    /// retention go, at start and then hourly: a scan of the requests
    /// table is not a thing to do every poll.
    fn prune_old_records(&mut self) -> anyhow::Result<()> {
        if self
            .last_pruned
            .is_some_and(|at| at.elapsed() < PRUNE_INTERVAL)
        {
            return Ok(());
        }
        let retention = self.config.database.retention_days.saturating_mul(86_400);
        let pruned = self.store.prune(now().saturating_sub(retention))?;
        self.last_pruned = Some(std::time::Instant::now());
        if pruned != Pruned::default() {
            info!(
                requests = pruned.requests,
                audit = pruned.audit,
                "pruned records older than {} days",
                self.config.database.retention_days
            );
        }
        Ok(())
    }

    /// Frees `allocation` locally (database first, then the kernel); owes
    /// the chain its release when `on_chain` and the allocation is of the
    /// primary contract. Says what the kernel held.
    pub(super) async fn release(
        &mut self,
        allocation: &Allocation,
        reason: &str,
        on_chain: bool,
    ) -> anyhow::Result<Removed> {
        let owe_chain = on_chain && allocation.contract == self.contracts[0];
        self.store.release(allocation.slot, reason, owe_chain)?;
        crash_point!("after-release");
        let removed = self.kernel.remove(allocation).await?;
        info!(prefix = %allocation.prefix, nft = %allocation.nft, "released: {reason}");
        Ok(removed)
    }

    /// Answered allocations whose peer has not completed a handshake by
    /// their deadline are released; a handshake clears the deadline.
    async fn check_handshakes(&mut self) -> anyhow::Result<()> {
        let timeout = self.config.wireguard.handshake_timeout_secs;
        let due: Vec<Allocation> = self
            .store
            .allocations()?
            .into_iter()
            .filter(|a| a.handshake_deadline.is_some())
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        // One read of the device for them all: per allocation it made a
        // poll's cost grow with the square of the tunnels awaiting their
        // first handshake (10,000 of them kept a poll busy for minutes).
        let handshakes = self.kernel.tunnel.last_handshakes()?;
        for a in due {
            // Any handshake of the current key's peer: it may precede the
            // recorded answer (a restart between sending it and recording
            // it), and the next one may come too late (WireGuard renews a
            // session only every two minutes).
            let since = a.key_set_at.or(a.answered_at).unwrap_or(a.created_at);
            let handshake = handshakes
                .get(&a.wg_key)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            if handshake.is_some_and(|h| h >= since) {
                self.store.tunnel_up(a.slot)?;
                info!(prefix = %a.prefix, "tunnel up");
            } else if a
                .handshake_deadline
                .is_some_and(|d| handshake_overdue(d, self.peers_installed_at, timeout, now()))
            {
                self.release(&a, &format!("no handshake within {timeout} s"), true)
                    .await?;
            }
        }
        Ok(())
    }

    /// `AllocationReleased` events of the primary contract not sent by us:
    /// the NFT owner gave the prefix back.
    async fn watch_owner_releases(&mut self, at: &BlockRef) -> anyhow::Result<()> {
        let contract = self.contracts[0];
        let from = self.store.next_event_block(contract, at.number)?;
        if from > at.number {
            return Ok(());
        }
        let events = self
            .chain
            .released_events(contract, from, at.number)
            .await?;
        for ev in events {
            if ev.by == self.chain.operator() {
                continue;
            }
            let allocation = self.store.allocation_of_nft(ev.nft)?;
            // The event ended the request that was current then. An
            // allocation (re)configured by a later request — the NFT asked
            // again after releasing, and this poll already answered it —
            // is not the one released. Ids grow with time.
            let released = |a: &Allocation| a.contract == contract && a.request_id <= ev.request_id;
            if let Some(a) = allocation.filter(released) {
                self.release(&a, "released by the NFT owner on chain", false)
                    .await?;
            }
        }
        self.store.events_read(contract, at.number)?;
        Ok(())
    }

    /// Sends the on-chain releases owed; says what became of each.
    pub(super) async fn send_owed_releases(&mut self) -> Vec<(OwedRelease, OnChainRelease)> {
        let owed = match self.store.owed_releases() {
            Ok(owed) => owed,
            Err(e) => {
                warn!("reading owed releases: {e}");
                return Vec::new();
            }
        };
        let mut outcomes = Vec::new();
        for release in owed {
            let outcome = self.send_owed_release(release).await;
            outcomes.push((release, outcome));
        }
        outcomes
    }

    async fn send_owed_release(&mut self, owed: OwedRelease) -> OnChainRelease {
        let OwedRelease {
            contract,
            nft,
            request_id,
            sent,
        } = owed;
        // A transaction sent earlier for this release is followed up at its
        // nonce, never doubled by another.
        let mut replacing = None;
        if let Some(sent) = sent {
            let call = release_call(contract, nft);
            let SentTx { tx, nonce, .. } = sent.tx;
            match self.chain.tx_state(&call, tx, nonce).await {
                Ok(TxState::Mined(receipt)) if receipt.status() => {
                    info!(%nft, transaction = %tx, "released on chain (sent earlier)");
                    self.forget_owed_release(contract, nft);
                    return OnChainRelease::Sent { transaction: tx };
                }
                Ok(TxState::Mined(_)) => {
                    warn!(%nft, %tx, "on-chain release reverted, dropped");
                    self.forget_owed_release(contract, nft);
                    return OnChainRelease::Refused {
                        reason: format!("transaction {tx} reverted"),
                    };
                }
                Ok(TxState::Pending) => {
                    let overdue = self.chain.receipt_timeout().as_secs();
                    if now() < sent.at.saturating_add(overdue) {
                        return OnChainRelease::Deferred {
                            reason: format!("transaction {tx} is not mined yet"),
                        };
                    }
                    warn!(%nft, %tx, nonce, "the on-chain release is not mined after {overdue}s: replacing it with higher fees");
                    replacing = Some(sent.tx);
                }
                Ok(TxState::Dropped) => {
                    warn!(%nft, %tx, nonce, "the on-chain release was dropped: replacing it at its nonce");
                    replacing = Some(sent.tx);
                }
                // Another transaction took its nonce: the chain decides
                // below whether the release is still wanted.
                Ok(TxState::NonceTaken) => {}
                Err(e) => {
                    warn!(%nft, "on-chain release will be followed up: {e}");
                    self.count_chain_error(&e);
                    return OnChainRelease::Deferred {
                        reason: e.to_string(),
                    };
                }
            }
        }
        // releaseAllocation ends the NFT's *current* request: if the
        // owner has made a newer one meanwhile, that request decides
        // the prefix (it is answered or rotated), and ending it would
        // drop it unanswered.
        let current = match self.chain.latest_block().await {
            Ok(latest) => self.chain.current_request_id(contract, nft, &latest).await,
            Err(e) => Err(e),
        };
        match current {
            // An earlier run's release was mined before it was recorded.
            Ok(0) => {
                info!(%nft, request_id, "already released on chain; dropped");
                self.forget_owed_release(contract, nft);
                return OnChainRelease::AlreadyReleased;
            }
            Ok(current) if current != request_id => {
                info!(%nft, request_id, current, "a newer request of the NFT decides; no on-chain release");
                self.forget_owed_release(contract, nft);
                return OnChainRelease::Superseded {
                    current_request: current,
                };
            }
            Ok(_) => {}
            Err(e) => {
                warn!(%nft, "on-chain release will be retried: {e}");
                self.count_chain_error(&e);
                return OnChainRelease::Deferred {
                    reason: e.to_string(),
                };
            }
        }
        let outcome = match self
            .send_release(contract, nft, request_id, replacing)
            .await
        {
            Ok(Some(transaction)) => {
                crash_point!("before-release-recorded");
                info!(%nft, %transaction, "released on chain");
                OnChainRelease::Sent { transaction }
            }
            Ok(None) => {
                return OnChainRelease::Deferred {
                    reason: "its transaction is not mined yet".into(),
                };
            }
            // Nothing (left) to release there.
            Err(e)
                if e.downcast_ref::<ChainError>()
                    .is_some_and(ChainError::is_reverted) =>
            {
                warn!(%nft, "on-chain release refused, dropped: {e:#}");
                OnChainRelease::Refused {
                    reason: format!("{e:#}"),
                }
            }
            Err(e) => {
                warn!(%nft, "on-chain release will be retried: {e:#}");
                self.count_chain_error(e.as_ref());
                return OnChainRelease::Deferred {
                    reason: format!("{e:#}"),
                };
            }
        };
        self.forget_owed_release(contract, nft);
        outcome
    }

    /// Sends `releaseAllocation(nft)` (replacing `replacing` at its nonce),
    /// recorded before the broadcast; its hash once mined, None when not
    /// mined within the first wait (the next polls follow it up).
    async fn send_release(
        &mut self,
        contract: Address,
        nft: Address,
        request_id: u64,
        replacing: Option<SentTx>,
    ) -> anyhow::Result<Option<alloy::primitives::TxHash>> {
        let call = release_call(contract, nft);
        let prepared = self
            .chain
            .prepare_release(contract, nft, replacing.is_some())
            .await?;
        let store = &self.store;
        let record = |tx| store.release_sent(contract, nft, request_id, tx);
        let signed = self
            .sign_record_send(&call, prepared, replacing.as_ref(), record)
            .await?;
        crash_point!("after-release-send");
        info!(%nft, tx = %signed.hash, nonce = signed.nonce, "on-chain release sent");
        match self
            .chain
            .wait_mined(&call, &signed, super::answer::RECEIPT_WAIT)
            .await
        {
            Ok(tx) => Ok(Some(tx)),
            Err(e) if e.is_reverted() => Err(e.into()),
            Err(e) => {
                info!(%nft, tx = %signed.hash, "on-chain release not mined yet, followed up by the next polls: {e}");
                Ok(None)
            }
        }
    }

    fn forget_owed_release(&self, contract: Address, nft: Address) {
        if let Err(e) = self.store.chain_release_done(contract, nft) {
            warn!("recording the on-chain release: {e}");
        }
    }
}

/// Whether a peer's handshake deadline has passed for good. A deadline that
/// passed while the broker was down (a reboot, a crash, an upgrade) does not
/// count at once: the peers were only just put back on an interface with no
/// handshakes yet, and a client's WireGuard retries on its own schedule. So
/// every peer gets the handshake timeout again from `peers_installed_at`,
/// the same window a new peer gets; the configured timeout rather than a
/// constant of its own, as the operator's choice of how long a client may
/// take holds for both.
fn handshake_overdue(deadline: u64, peers_installed_at: u64, timeout: u64, now: u64) -> bool {
    now >= deadline.max(peers_installed_at.saturating_add(timeout))
}

#[cfg(test)]
mod tests {
    use super::handshake_overdue;

    #[test]
    fn a_deadline_that_passed_while_down_waits_for_the_grace_period() {
        let (timeout, started) = (120, 10_000);
        // Due long before this start: not before start + timeout.
        assert!(!handshake_overdue(5_000, started, timeout, started));
        assert!(!handshake_overdue(5_000, started, timeout, started + 119));
        assert!(handshake_overdue(5_000, started, timeout, started + 120));
        // Due after the grace period: its own deadline.
        assert!(!handshake_overdue(
            started + 300,
            started,
            timeout,
            started + 200
        ));
        assert!(handshake_overdue(
            started + 300,
            started,
            timeout,
            started + 300
        ));
        // No overflow at the ends of the clock.
        assert!(!handshake_overdue(0, u64::MAX, timeout, u64::MAX - 1));
    }
}
