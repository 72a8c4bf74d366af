//! Allocations: which prefix belongs to which NFT contract, under which
//! WireGuard key, answered when, and released unless a handshake comes by
//! when. Indexed by NFT contract (a new request from it rotates its key and
//! keeps its prefix) and by WireGuard key (one key, one allocation).

use alloy::primitives::Address;
use ipnet::Ipv6Net;
use redb::{ReadableTable, ReadableTableMetadata as _, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{
    Reads, Store, StoreError,
    audit::{self, Event},
    chain_releases, collect, decode, encode, now,
};
use crate::ipam::{self, Pool};

const ALLOCATIONS: TableDefinition<u128, &[u8]> = TableDefinition::new("allocations");
const BY_NFT: TableDefinition<[u8; 20], u128> = TableDefinition::new("allocations_by_nft");
const BY_WG_KEY: TableDefinition<[u8; 32], u128> = TableDefinition::new("allocations_by_wg_key");

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    #[serde(with = "super::slot_string")]
    pub slot: u128,
    pub prefix: Ipv6Net,
    pub nft: Address,
    /// The requests contract and request that last (re)configured it.
    pub contract: Address,
    pub request_id: u64,
    #[serde(with = "super::hex_bytes")]
    pub wg_key: [u8; 32],
    pub created_at: u64,
    /// When its current WireGuard key was decided (the allocation made, or
    /// rotated to that key). The key's peer is configured after this, so a
    /// handshake of that peer since then shows the tunnel up — also one
    /// that came before `answered_at` (the client can read the answer on
    /// chain before the broker has recorded sending it).
    #[serde(default)]
    pub key_set_at: Option<u64>,
    pub answered_at: Option<u64>,
    /// Released if no handshake is seen by then (set when answered, cleared
    /// by the first handshake).
    pub handshake_deadline: Option<u64>,
}

/// What [`allocate`] did for a valid request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Allocate {
    /// A new prefix.
    New(Allocation),
    /// The NFT's existing prefix, under a new WireGuard key.
    Rotated {
        allocation: Allocation,
        old_wg_key: [u8; 32],
    },
    /// Another allocation holds this WireGuard key.
    KeyInUse,
    /// No prefix left, or as many allocations as the store may hold.
    PoolFull,
}

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(ALLOCATIONS)?;
    txn.open_table(BY_NFT)?;
    txn.open_table(BY_WG_KEY)?;
    Ok(())
}

fn get(txn: &impl Reads, slot: u128) -> Result<Option<Allocation>, StoreError> {
    let table = txn.table(ALLOCATIONS)?;
    let value = table.get(slot)?;
    value
        .map(|v| decode("allocations", slot, v.value()))
        .transpose()
}

fn by_nft(txn: &impl Reads, nft: Address) -> Result<Option<Allocation>, StoreError> {
    let slot = txn.table(BY_NFT)?.get(nft.0.0)?.map(|v| v.value());
    match slot {
        Some(slot) => get(txn, slot),
        None => Ok(None),
    }
}

/// Stores a changed allocation (its slot, NFT and key unchanged).
fn update(txn: &WriteTransaction, allocation: &Allocation) -> Result<(), StoreError> {
    txn.open_table(ALLOCATIONS)?
        .insert(allocation.slot, encode(allocation).as_slice())?;
    Ok(())
}

/// Decides a valid request from `nft` with `wg_key`: rotation when the NFT
/// already has a prefix, else the lowest free one, and records it (with its
/// audit entry) in `txn`.
#[allow(clippy::too_many_arguments)]
pub(super) fn allocate(
    txn: &WriteTransaction,
    pool: &Pool,
    max_allocations: u64,
    contract: Address,
    request_id: u64,
    nft: Address,
    wg_key: [u8; 32],
) -> Result<Allocate, StoreError> {
    let key_holder = txn.open_table(BY_WG_KEY)?.get(wg_key)?.map(|v| v.value());
    if let Some(mut allocation) = by_nft(txn, nft)? {
        if key_holder.is_some_and(|slot| slot != allocation.slot) {
            return Ok(Allocate::KeyInUse);
        }
        let old_wg_key = allocation.wg_key;
        let mut by_key = txn.open_table(BY_WG_KEY)?;
        by_key.remove(old_wg_key)?;
        by_key.insert(wg_key, allocation.slot)?;
        drop(by_key);
        allocation.wg_key = wg_key;
        allocation.contract = contract;
        allocation.request_id = request_id;
        allocation.key_set_at = Some(now());
        allocation.answered_at = None;
        allocation.handshake_deadline = None;
        update(txn, &allocation)?;
        audit::record(
            txn,
            Event::Rotated {
                contract: contract.to_string(),
                request_id,
                nft: nft.to_string(),
                prefix: allocation.prefix.to_string(),
            },
        )?;
        return Ok(Allocate::Rotated {
            allocation,
            old_wg_key,
        });
    }
    if key_holder.is_some() {
        return Ok(Allocate::KeyInUse);
    }
    if txn.open_table(ALLOCATIONS)?.len()? >= max_allocations {
        return Ok(Allocate::PoolFull);
    }
    let Some(slot) = ipam::take_lowest(txn)? else {
        return Ok(Allocate::PoolFull);
    };
    let prefix = pool.prefix(slot).expect("IPAM hands out slots of its pool");
    let allocation = Allocation {
        slot,
        prefix,
        nft,
        contract,
        request_id,
        wg_key,
        created_at: now(),
        key_set_at: Some(now()),
        answered_at: None,
        handshake_deadline: None,
    };
    update(txn, &allocation)?;
    txn.open_table(BY_NFT)?.insert(nft.0.0, slot)?;
    txn.open_table(BY_WG_KEY)?.insert(wg_key, slot)?;
    audit::record(
        txn,
        Event::Allocated {
            contract: contract.to_string(),
            request_id,
            nft: nft.to_string(),
            prefix: prefix.to_string(),
        },
    )?;
    Ok(Allocate::New(allocation))
}

/// Gives the allocation in `slot` (if any is left) `handshake_timeout`
/// seconds from now for its tunnel to come up, recording it answered now
/// when `answered`.
pub(super) fn await_handshake(
    txn: &WriteTransaction,
    slot: u128,
    handshake_timeout: u64,
    answered: bool,
) -> Result<(), StoreError> {
    if let Some(mut a) = get(txn, slot)? {
        if answered {
            a.answered_at = Some(now());
        }
        a.handshake_deadline = Some(now() + handshake_timeout);
        update(txn, &a)?;
    }
    Ok(())
}

impl Store {
    /// Every allocation, in prefix order.
    pub fn allocations(&self) -> Result<Vec<Allocation>, StoreError> {
        self.read(|txn| {
            let table = txn.table(ALLOCATIONS)?;
            collect(table.iter()?, |slot, v| decode("allocations", slot, v))
        })
    }

    pub fn allocation(&self, slot: u128) -> Result<Option<Allocation>, StoreError> {
        self.read(|txn| get(txn, slot))
    }

    /// How many allocations there are, without reading them.
    pub fn allocation_count(&self) -> Result<u64, StoreError> {
        self.read(|txn| Ok(txn.table(ALLOCATIONS)?.len()?))
    }

    pub fn allocation_of_nft(&self, nft: Address) -> Result<Option<Allocation>, StoreError> {
        self.read(|txn| by_nft(txn, nft))
    }

    /// Frees the allocation in `slot`: record, indexes, slot, and an audit
    /// entry saying why; with `owe_chain_release`, records that the chain
    /// is owed its `releaseAllocation`, in the same transaction, so that no
    /// crash loses it. Returns the allocation, or None when there was none.
    pub fn release(
        &self,
        slot: u128,
        reason: &str,
        owe_chain_release: bool,
    ) -> Result<Option<Allocation>, StoreError> {
        self.transition(|txn| {
            let Some(allocation) = get(txn, slot)? else {
                return Ok(None);
            };
            txn.open_table(ALLOCATIONS)?.remove(slot)?;
            txn.open_table(BY_NFT)?.remove(allocation.nft.0.0)?;
            txn.open_table(BY_WG_KEY)?.remove(allocation.wg_key)?;
            ipam::give_back(txn, &self.pool, slot)?;
            audit::record(
                txn,
                Event::Released {
                    nft: allocation.nft.to_string(),
                    prefix: allocation.prefix.to_string(),
                    reason: reason.to_string(),
                },
            )?;
            if owe_chain_release {
                chain_releases::owe(txn, &allocation)?;
            }
            Ok(Some(allocation))
        })
    }

    /// The tunnel of the allocation in `slot` came up: it is no longer
    /// released for want of a handshake. Returns it, or None when it is
    /// gone.
    pub fn tunnel_up(&self, slot: u128) -> Result<Option<Allocation>, StoreError> {
        self.transition(|txn| {
            let Some(mut a) = get(txn, slot)? else {
                return Ok(None);
            };
            a.handshake_deadline = None;
            update(txn, &a)?;
            Ok(Some(a))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{
        super::{
            requests::tests::grant,
            tests::{CONTRACT, nft, open},
        },
        *,
    };

    #[test]
    fn a_release_frees_slot_and_key_and_can_owe_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let a = grant(&store, 1, 1, 1).allocation;
        let b = grant(&store, 2, 2, 2).allocation;
        assert_eq!(store.allocations().unwrap(), [a.clone(), b.clone()]);
        assert_eq!(store.allocation_of_nft(nft(2)).unwrap(), Some(b.clone()));

        let released = store.release(b.slot, "test", true).unwrap();
        assert_eq!(released, Some(b.clone()));
        assert_eq!(store.allocation_of_nft(nft(2)).unwrap(), None);
        assert_eq!(store.allocation(b.slot).unwrap(), None);
        assert_eq!(store.allocations().unwrap(), std::slice::from_ref(&a));
        let owed = store.owed_releases().unwrap();
        assert_eq!(
            owed,
            [chain_releases::OwedRelease {
                contract: CONTRACT,
                nft: nft(2),
                request_id: 2,
                sent: None,
            }]
        );
        let Event::Released { reason, prefix, .. } = store.audit_tail(1).unwrap().remove(0).event
        else {
            panic!("a release is audited")
        };
        assert_eq!((reason.as_str(), prefix), ("test", b.prefix.to_string()));
        // Again: nothing left to release, nothing more owed.
        assert_eq!(store.release(b.slot, "again", true).unwrap(), None);
        assert_eq!(store.owed_releases().unwrap(), owed);

        // Slot and key are free again.
        let c = grant(&store, 3, 2, 2).allocation;
        assert_eq!((c.slot, c.wg_key), (b.slot, b.wg_key));
        store.chain_release_done(CONTRACT, nft(2)).unwrap();
        assert_eq!(store.owed_releases().unwrap(), []);

        // A release the chain is not owed (the owner released on chain).
        store
            .release(a.slot, "released by the owner", false)
            .unwrap();
        assert_eq!(store.owed_releases().unwrap(), []);
        assert_eq!(store.allocations().unwrap(), [c]);
    }

    #[test]
    fn a_tunnel_up_clears_the_handshake_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let a = grant(&store, 1, 1, 1).allocation;
        store.answered(CONTRACT, 1, a.slot, None, 120).unwrap();
        assert!(
            store
                .allocation(a.slot)
                .unwrap()
                .unwrap()
                .handshake_deadline
                .is_some()
        );
        let up = store.tunnel_up(a.slot).unwrap().unwrap();
        assert_eq!(up.handshake_deadline, None);
        assert!(up.answered_at.is_some());
        assert_eq!(store.allocation(a.slot).unwrap(), Some(up));
        store.release(a.slot, "test", false).unwrap();
        assert_eq!(store.tunnel_up(a.slot).unwrap(), None);
    }

    /// At the limit a new NFT waits as for a full pool; a known NFT's new
    /// key still takes its prefix, and a release makes room again.
    #[test]
    fn a_limited_store_allocates_no_more_than_its_limit() {
        use super::super::requests::{Decision, tests::valid};
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).limit_allocations(2);
        let a = grant(&store, 1, 1, 1).allocation;
        grant(&store, 2, 2, 2);
        let third = store.decide(CONTRACT, 3, valid(nft(3), [3; 32]), true);
        assert!(
            matches!(&third, Ok(Decision::Retry { last_error, .. }) if last_error == "no prefix free"),
            "{third:?}"
        );
        assert_eq!(store.allocations().unwrap().len(), 2);
        let rotated = grant(&store, 4, 1, 9).allocation;
        assert_eq!(rotated.prefix, a.prefix);
        store.release(a.slot, "test", false).unwrap();
        grant(&store, 5, 3, 3);
        assert_eq!(store.allocations().unwrap().len(), 2);
    }
}
