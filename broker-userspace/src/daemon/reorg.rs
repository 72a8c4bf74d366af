//! Reorgs: the chain the daemon read before is not the chain any more.
//!
//! Each poll records the hash of the block it reads at, and when it ends
//! the hash of the chain's head (which covers the blocks its answers went
//! into); the store keeps the newest of them, one chain. The next poll
//! first asks the node for the newest recorded block: the same hash, no
//! reorg. Otherwise it finds the newest recorded block still on the chain
//! (the fork is above it: a binary search over the recorded blocks, as
//! they are one chain) and re-examines what it decided since:
//!
//! - a request that is gone (its id above the contract's count now): its
//!   allocation is released (database, then peer, route and NDP entry; no
//!   on-chain release, there is nothing to release), its record forgotten,
//!   the contract's cursor moved back to it, so a new request under the
//!   same id is taken as new;
//! - a request answered with an allocation: read again. Another request
//!   under its id (another NFT or WireGuard key): released as above, then
//!   examined as the new request it is. The same request, pending and
//!   without a response (the answer went with the reorg): examined and
//!   answered again — the chain is asked first, so an answer the reorg
//!   re-included is never sent twice. The same request answered: kept;
//! - any other request decided on a block that went: examined again.
//!
//! Release events are read again from the fork on. A reorg deeper than the
//! blocks remembered is handled as one reaching past all of them (said
//! in the log). Until the re-examination has finished, the recorded hashes
//! stay as they were: a failure or a crash midway makes the next poll do it
//! again, and every step of it can be done twice.
//!
//! An allocation that a dropped request had rotated (the NFT's prefix,
//! under the dropped request's new key) is released whole: the NFT's
//! earlier request is answered already, and its owner asks again.

use std::collections::HashMap;

use alloy::primitives::{Address, B256};
use broker_contracts::protocol::{self, RequestPayload};
use tracing::{info, warn};

use super::Daemon;
use crate::{
    chain::{BlockRef, OnchainRequest, RequestStatus},
    store::{allocations::Allocation, requests::Stage},
};

/// The newest of `recorded` (newest first, one chain; the first is no
/// longer on the chain) whose hash `hash_of` still gives, None if none
/// does. As the blocks recorded are one chain, those below one still on the
/// chain are too: a binary search, a dozen lookups for the most remembered.
async fn newest_on_chain<E>(
    recorded: &[(u64, B256)],
    hash_of: impl AsyncFn(u64) -> Result<Option<B256>, E>,
) -> Result<Option<u64>, E> {
    // Those from `found` on are on the chain, those before `low` not.
    let (mut low, mut found) = (1, recorded.len());
    while low < found {
        let mid = low + (found - low) / 2;
        let (number, hash) = recorded[mid];
        if hash_of(number).await? == Some(hash) {
            found = mid;
        } else {
            low = mid + 1;
        }
    }
    Ok(recorded.get(found).map(|&(number, _)| number))
}

impl Daemon {
    /// First in each poll, at `at`: notices a reorg since the blocks
    /// recorded and undoes what it changed, then records `at`.
    pub(super) async fn follow_reorgs(&mut self, at: &BlockRef) -> anyhow::Result<()> {
        let recorded = self.store.recorded_blocks()?;
        if let Some(&(newest, hash)) = recorded.first()
            && self.chain.block_hash(newest).await? != Some(hash)
        {
            let ancestor = self.last_common_block(&recorded).await?;
            match ancestor {
                Some(n) => warn!(
                    "reorg: block {newest} is no longer {hash}; the chain is the same up to block {n}: re-examining what was decided since"
                ),
                None => warn!(
                    "reorg deeper than the {} blocks remembered (block {newest} is no longer {hash}): re-examining every request remembered",
                    recorded.len()
                ),
            }
            self.undo_reorg(at, ancestor, &recorded).await?;
            self.store.forget_blocks_above(ancestor)?;
            // Counted once handled: a reorg whose undoing failed midway is
            // noticed again (and finished) by the next poll.
            self.counters.reorgs += 1;
            info!("reorg handled");
        }
        self.store.record_block(at.number, at.hash)?;
        Ok(())
    }

    /// Last in each poll: records the head, which covers the blocks this
    /// poll's answers went into, if the block read at is still on its chain
    /// (else the next poll finds the reorg from that block).
    pub(super) async fn record_head(&mut self, at: &BlockRef) -> anyhow::Result<()> {
        let head = self.chain.head().await?;
        if head == *at {
            return Ok(()); // recorded already
        }
        if self.chain.block_hash(at.number).await? == Some(at.hash) {
            self.store.record_block(head.number, head.hash)?;
        }
        Ok(())
    }

    /// The newest of `recorded` still on the chain, None if none is.
    async fn last_common_block(&self, recorded: &[(u64, B256)]) -> anyhow::Result<Option<u64>> {
        let chain = &self.chain;
        Ok(newest_on_chain(recorded, async |number| chain.block_hash(number).await).await?)
    }

    async fn undo_reorg(
        &mut self,
        at: &BlockRef,
        ancestor: Option<u64>,
        recorded: &[(u64, B256)],
    ) -> anyhow::Result<()> {
        let mut counts = HashMap::new();
        for contract in self.contracts.clone() {
            let count = self.chain.request_count(contract, at).await?;
            counts.insert(contract, count);
            for id in self.store.request_ids_from(contract, count + 1)? {
                self.revoke(contract, id, "its request went in a reorg")
                    .await?;
            }
            // Also allocations whose records were pruned (or never
            // watched): a request above the count is gone all the same.
            let gone: Vec<Allocation> = self
                .store
                .allocations()?
                .into_iter()
                .filter(|a| a.contract == contract && a.request_id > count)
                .collect();
            for a in gone {
                self.revoke(contract, a.request_id, "its request went in a reorg")
                    .await?;
            }
            self.store.rewind_request_cursor(contract, count + 1)?;
        }
        // The events of the blocks that went may not be on the chain now,
        // and new ones may be in the blocks that came.
        let from = ancestor.or(recorded.last().map(|b| b.0)).unwrap_or(0);
        self.store.rewind_event_block(self.contracts[0], from + 1)?;

        for w in self.store.watched()? {
            let Some(&count) = counts.get(&w.contract) else {
                continue; // a contract no longer watched
            };
            if w.id > count {
                continue; // revoked above
            }
            let decided_on_a_lost_block = ancestor.is_none_or(|n| w.read_at > n);
            match self.allocation_of_request(w.contract, w.id)? {
                Some(a) => self.recheck_answer(w.contract, w.id, &a, at).await?,
                None if decided_on_a_lost_block => {
                    info!(contract = %w.contract, id = w.id, "decided on a block that went in a reorg: examining it again");
                    self.store.forget_request(w.contract, w.id)?;
                    self.handle(w.contract, w.id, at, false).await?;
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Request `id`, answered (or being answered) with `a` before the reorg,
    /// read again at `at`.
    async fn recheck_answer(
        &mut self,
        contract: Address,
        id: u64,
        a: &Allocation,
        at: &BlockRef,
    ) -> anyhow::Result<()> {
        let request = self.chain.request(contract, id, at).await?;
        if !self.same_request(&request, a) {
            self.revoke(contract, id, "a reorg replaced its request")
                .await?;
            info!(%contract, id, "another request under the same id after the reorg: examining it");
            return self.handle(contract, id, at, false).await;
        }
        let unanswered =
            request.status == RequestStatus::Pending && request.response_payload.is_empty();
        let stage = self.store.request(contract, id)?.map(|r| r.stage);
        // Allocated and Sent are followed up by the polls already (a
        // dropped answer is sent again at its nonce).
        if unanswered && matches!(stage, None | Some(Stage::Answered { .. })) {
            warn!(%contract, id, prefix = %a.prefix, "the answer went in a reorg: answering again");
            self.store.forget_request(contract, id)?;
            self.handle(contract, id, at, false).await?;
        }
        Ok(())
    }

    /// `request` is the one `a` was allocated to: the same NFT contract,
    /// and a payload asking for the same WireGuard key.
    fn same_request(&self, request: &OnchainRequest, a: &Allocation) -> bool {
        request.nft_contract == a.nft
            && protocol::decrypt(&self.ecies_secret, &request.encrypted_payload)
                .ok()
                .and_then(|plain| RequestPayload::parse(&plain).ok())
                .and_then(|p| p.validate().ok())
                .is_some_and(|valid| valid.wg_pubkey == a.wg_key)
    }

    /// The allocation request `id` of `contract` last configured.
    fn allocation_of_request(
        &self,
        contract: Address,
        id: u64,
    ) -> anyhow::Result<Option<Allocation>> {
        Ok(self
            .store
            .allocations()?
            .into_iter()
            .find(|a| a.contract == contract && a.request_id == id))
    }

    /// Request `id` of `contract` is gone or not what it was: its
    /// allocation (if any) is released, locally only, and its record
    /// forgotten.
    async fn revoke(&mut self, contract: Address, id: u64, why: &str) -> anyhow::Result<()> {
        if let Some(a) = self.allocation_of_request(contract, id)? {
            let removed = self.release(&a, why, false).await?;
            self.counters.reorg_releases += 1;
            warn!(
                %contract, id, prefix = %a.prefix, nft = %a.nft,
                peer = removed.peer, route = removed.route, ndp_entry = removed.ndp_entry,
                "reorg: allocation released, {why}"
            );
        }
        self.store.forget_request(contract, id)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn hash(fork: u8, n: u64) -> B256 {
        let mut h = B256::left_padding_from(&n.to_be_bytes());
        h.0[0] = fork;
        h
    }

    /// Recorded blocks 10, 12, …, 40 of fork 0 against chains that forked
    /// after each of them (or before all): the fork point is found, with
    /// at most ⌈log2(16)⌉ + 1 lookups.
    #[tokio::test]
    async fn the_newest_recorded_block_still_on_the_chain_is_found() {
        let recorded: Vec<(u64, B256)> = (5..=20).rev().map(|i| (i * 2, hash(0, i * 2))).collect();
        for fork_after in [0, 9, 10, 11, 20, 25, 38] {
            let lookups = Cell::new(0);
            let chain = async |n: u64| -> Result<Option<B256>, ()> {
                lookups.set(lookups.get() + 1);
                Ok(Some(hash(if n <= fork_after { 0 } else { 1 }, n)))
            };
            let found = newest_on_chain(&recorded, chain).await.unwrap();
            let want = recorded.iter().map(|b| b.0).find(|&n| n <= fork_after);
            assert_eq!(found, want, "forked after {fork_after}");
            assert!(lookups.get() <= 5, "{} lookups", lookups.get());
        }
        // Blocks the node no longer has (a shorter chain) are not on it.
        let shorter =
            async |n: u64| -> Result<Option<B256>, ()> { Ok((n <= 30).then(|| hash(0, n))) };
        assert_eq!(newest_on_chain(&recorded, shorter).await.unwrap(), Some(30));
        // Only the block that went: nothing to search.
        let gone = async |_| -> Result<Option<B256>, ()> { Ok(None) };
        assert_eq!(newest_on_chain(&recorded[..1], gone).await.unwrap(), None);
        // A lookup that fails is the caller's error.
        let failing = async |_| -> Result<Option<B256>, &str> { Err("unreachable") };
        assert_eq!(
            newest_on_chain(&recorded, failing).await,
            Err("unreachable")
        );
    }
}
