//! On-chain releases still to send (`releaseAllocation`): recorded with the
//! local release, in the same transaction, and removed once mined, so an RPC
//! outage or a crash never loses one.

use alloy::primitives::Address;
use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::{Reads, Store, StoreError, allocations::Allocation, collect};

/// (requests contract ‖ NFT contract) → the request whose allocation was
/// released (so a newer request of the NFT is never ended by it).
const PENDING: TableDefinition<[u8; 40], u64> = TableDefinition::new("chain_releases_pending");

/// A `releaseAllocation(nft)` the chain is owed on `contract`, for the
/// allocation of request `request_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwedRelease {
    pub contract: Address,
    pub nft: Address,
    pub request_id: u64,
}

fn key(contract: Address, nft: Address) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..20].copy_from_slice(contract.as_slice());
    k[20..].copy_from_slice(nft.as_slice());
    k
}

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(PENDING)?;
    Ok(())
}

/// Records the on-chain release of (released) `allocation` as owed.
pub(super) fn owe(txn: &WriteTransaction, allocation: &Allocation) -> Result<(), StoreError> {
    txn.open_table(PENDING)?.insert(
        key(allocation.contract, allocation.nft),
        allocation.request_id,
    )?;
    Ok(())
}

impl Store {
    /// Every on-chain release still owed, in (contract, NFT) order.
    pub fn owed_releases(&self) -> Result<Vec<OwedRelease>, StoreError> {
        self.read(|txn| {
            let table = txn.table(PENDING)?;
            collect(table.iter()?, |k, request_id| {
                Ok(OwedRelease {
                    contract: Address::from_slice(&k[..20]),
                    nft: Address::from_slice(&k[20..]),
                    request_id,
                })
            })
        })
    }

    /// The chain is no longer owed the release of `nft` on `contract`: it
    /// was mined, refused, or is no longer wanted.
    pub fn chain_release_done(&self, contract: Address, nft: Address) -> Result<(), StoreError> {
        self.transition(|txn| {
            txn.open_table(PENDING)?.remove(key(contract, nft))?;
            Ok(())
        })
    }
}
