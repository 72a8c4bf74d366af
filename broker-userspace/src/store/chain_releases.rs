//! On-chain releases still to send (`releaseAllocation`): recorded with the
//! local release, in the same transaction, and removed once mined, so an RPC
//! outage or a crash never loses one. The release's transaction is recorded
//! before it is broadcast, so a crash or a slow chain never leads to a
//! second one at another nonce.

use alloy::primitives::Address;
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{
    Reads, Store, StoreError, allocations::Allocation, collect, decode, encode, now,
    requests::SentTx,
};

/// (requests contract ‖ NFT contract) → the request whose allocation was
/// released (so a newer request of the NFT is never ended by it).
const PENDING: TableDefinition<[u8; 40], u64> = TableDefinition::new("chain_releases_pending");
/// Same key → the owed release's transaction, once one was signed.
const SENT: TableDefinition<[u8; 40], &[u8]> = TableDefinition::new("chain_releases_sent");

/// The transaction of an owed release, and when it was recorded (seconds
/// since the epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentRelease {
    pub request_id: u64,
    pub tx: SentTx,
    pub at: u64,
}

/// A `releaseAllocation(nft)` the chain is owed on `contract`, for the
/// allocation of request `request_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwedRelease {
    pub contract: Address,
    pub nft: Address,
    pub request_id: u64,
    /// Its transaction, when one was sent for this request's release.
    pub sent: Option<SentRelease>,
}

fn key(contract: Address, nft: Address) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..20].copy_from_slice(contract.as_slice());
    k[20..].copy_from_slice(nft.as_slice());
    k
}

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(PENDING)?;
    txn.open_table(SENT)?;
    Ok(())
}

/// Records the on-chain release of (released) `allocation` as owed.
pub(super) fn owe(txn: &WriteTransaction, allocation: &Allocation) -> Result<(), StoreError> {
    let k = key(allocation.contract, allocation.nft);
    txn.open_table(PENDING)?.insert(k, allocation.request_id)?;
    // A transaction sent for an earlier request's release is not this one's.
    txn.open_table(SENT)?.remove(k)?;
    Ok(())
}

impl Store {
    /// Every on-chain release still owed, in (contract, NFT) order.
    pub fn owed_releases(&self) -> Result<Vec<OwedRelease>, StoreError> {
        self.read(|txn| {
            let table = txn.table(PENDING)?;
            let sent_table = txn.table(SENT)?;
            collect(table.iter()?, |k, request_id| {
                let sent = sent_table
                    .get(k)?
                    .map(|v| {
                        decode::<SentRelease>("chain_releases_sent", hex::encode(k), v.value())
                    })
                    .transpose()?
                    .filter(|s| s.request_id == request_id);
                Ok(OwedRelease {
                    contract: Address::from_slice(&k[..20]),
                    nft: Address::from_slice(&k[20..]),
                    request_id,
                    sent,
                })
            })
        })
    }

    /// The chain is no longer owed the release of `nft` on `contract`: it
    /// was mined, refused, or is no longer wanted.
    pub fn chain_release_done(&self, contract: Address, nft: Address) -> Result<(), StoreError> {
        self.transition(|txn| {
            txn.open_table(PENDING)?.remove(key(contract, nft))?;
            txn.open_table(SENT)?.remove(key(contract, nft))?;
            Ok(())
        })
    }

    /// The owed release of `nft` on `contract` (for request `request_id`)
    /// is signed as `tx`: recorded before it is broadcast.
    pub fn release_sent(
        &self,
        contract: Address,
        nft: Address,
        request_id: u64,
        tx: SentTx,
    ) -> Result<(), StoreError> {
        self.transition(|txn| {
            let k = key(contract, nft);
            let owed = txn.open_table(PENDING)?.get(k)?.map(|v| v.value());
            if owed != Some(request_id) {
                return Err(StoreError::Conflict(format!(
                    "no release of request {request_id} of {nft} is owed on {contract}"
                )));
            }
            let sent = SentRelease {
                request_id,
                tx,
                at: now(),
            };
            txn.open_table(SENT)?.insert(k, encode(&sent).as_slice())?;
            Ok(())
        })
    }
}
