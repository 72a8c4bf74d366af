//! Requests rejected silently whose expiry the chain is still to be told
//! (`markExpired`, which the broker may call on any pending request): until
//! then a throwaway request holds a slot of the contract's capacity for a
//! whole expiration time. Recorded with the rejection, in the same
//! transaction, and removed once the node accepted the transaction that
//! expires them (idempotent on chain: a request no longer pending is
//! skipped, so a second one after a crash costs a little gas, nothing else).

use alloy::primitives::Address;
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use super::{Reads, Store, StoreError, requests::key};

/// (requests contract ‖ request id, big-endian) → nothing.
const OWED: TableDefinition<[u8; 28], ()> = TableDefinition::new("expiries_owed");

/// The most owed expiries kept: an outsider grows this table, and past it a
/// rejected request just expires on its own (24 hours by default).
pub const MAX_OWED: u64 = 10_000;

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(OWED)?;
    Ok(())
}

/// Owes the chain the expiry of rejected request `id` of `contract`.
pub(super) fn owe(txn: &WriteTransaction, contract: Address, id: u64) -> Result<(), StoreError> {
    let mut table = txn.open_table(OWED)?;
    if table.len()? < MAX_OWED {
        table.insert(key(contract, id), ())?;
    }
    Ok(())
}

impl Store {
    /// Up to `limit` owed expiries, in (contract, id) order.
    pub fn owed_expiries(&self, limit: usize) -> Result<Vec<(Address, u64)>, StoreError> {
        self.read(|txn| {
            let table = txn.table(OWED)?;
            table
                .iter()?
                .take(limit)
                .map(|entry| {
                    let k = entry?.0.value();
                    let id = u64::from_be_bytes(k[20..].try_into().expect("8 bytes"));
                    Ok((Address::from_slice(&k[..20]), id))
                })
                .collect()
        })
    }

    /// The chain was told (or need not be) of these expiries.
    pub fn expiries_done(&self, done: &[(Address, u64)]) -> Result<(), StoreError> {
        self.transition(|txn| {
            let mut table = txn.open_table(OWED)?;
            for &(contract, id) in done {
                table.remove(key(contract, id))?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        requests::Verdict,
        tests::{CONTRACT, open},
    };

    /// A rejection owes its expiry, with the rejection itself (a crash cannot
    /// part them), until it is done; nothing else does; the table is bounded.
    #[test]
    fn a_rejection_owes_its_expiry_until_done() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let other = Address::repeat_byte(0xd0);
        for (contract, id) in [(CONTRACT, 7), (other, 2), (CONTRACT, 3)] {
            store
                .decide(contract, id, Verdict::Reject("bad".into()), true)
                .unwrap();
        }
        store
            .decide(CONTRACT, 8, Verdict::Skip("not pending".into()), true)
            .unwrap();
        assert_eq!(
            store.owed_expiries(10).unwrap(),
            [(CONTRACT, 3), (CONTRACT, 7), (other, 2)]
        );
        assert_eq!(store.owed_expiries(1).unwrap(), [(CONTRACT, 3)]);
        store.expiries_done(&[(CONTRACT, 3), (other, 2)]).unwrap();
        drop(store);
        let store = open(&dir);
        assert_eq!(store.owed_expiries(10).unwrap(), [(CONTRACT, 7)]);

        store
            .transition(|txn| {
                for id in 100..100 + MAX_OWED {
                    owe(txn, CONTRACT, id)?;
                }
                Ok(())
            })
            .unwrap();
        let owed = store.owed_expiries(usize::MAX).unwrap();
        assert_eq!(owed.len() as u64, MAX_OWED);
        assert!(owed.contains(&(CONTRACT, 7)));
    }
}
