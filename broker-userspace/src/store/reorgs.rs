//! What the daemon needs to notice a reorg and undo what it did on the
//! blocks that went: the hashes of the blocks it read at (and of the chain's
//! head when each poll ended, which covers the blocks its answers went
//! into), and the requests it decided recently with the block it read them
//! at.
//!
//! Both are bounded: the newest [`KEEP_BLOCKS`] block hashes, and the
//! requests decided at or above the oldest of them. A reorg deeper than
//! that is still noticed (no recorded hash matches) and handled as one
//! reaching past everything remembered.
//!
//! Added tables only: a database of an earlier version opens as it is and
//! gets them, empty, at its first start (`Store::open` creates every table);
//! the first poll then records its block.

use alloy::primitives::{Address, B256};
use redb::{ReadableTable, ReadableTableMetadata as _, TableDefinition, WriteTransaction};

use super::{Reads, Store, StoreError, collect, cursors, requests, requests::key};

/// Block number → hash, one chain (the hashes above a fork are removed when
/// the reorg is handled).
const BLOCKS: TableDefinition<u64, [u8; 32]> = TableDefinition::new("reorg_blocks");
/// (contract, request id) → the block number its decision read the chain at.
const WATCHED: TableDefinition<[u8; 28], u64> = TableDefinition::new("reorg_watched_requests");

/// Block hashes kept: two per poll at most (the block read at and the head
/// at the end), and only when the chain moved; about 1.7 hours of 12-second
/// blocks.
pub const KEEP_BLOCKS: usize = 1024;

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(BLOCKS)?;
    txn.open_table(WATCHED)?;
    Ok(())
}

/// See [`Store::watch`].
pub(super) fn watch(
    txn: &WriteTransaction,
    contract: Address,
    id: u64,
    read_at: u64,
) -> Result<(), StoreError> {
    txn.open_table(WATCHED)?
        .insert(key(contract, id), read_at)?;
    Ok(())
}

/// A request decided at a block the daemon remembers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watched {
    pub contract: Address,
    pub id: u64,
    /// The block its decision read the chain at.
    pub read_at: u64,
}

impl Store {
    /// The block hashes recorded, newest first.
    pub fn recorded_blocks(&self) -> Result<Vec<(u64, B256)>, StoreError> {
        self.read(|txn| {
            let table = txn.table(BLOCKS)?;
            let mut blocks = collect(table.iter()?, |n, h| Ok((n, B256::from(h))))?;
            blocks.reverse();
            Ok(blocks)
        })
    }

    /// Records block `number`'s hash, forgetting the oldest beyond
    /// [`KEEP_BLOCKS`] and the requests decided below what is kept.
    pub fn record_block(&self, number: u64, hash: B256) -> Result<(), StoreError> {
        self.transition(|txn| {
            let mut blocks = txn.open_table(BLOCKS)?;
            blocks.insert(number, hash.0)?;
            let excess = usize::try_from(blocks.len()?)
                .unwrap_or(usize::MAX)
                .saturating_sub(KEEP_BLOCKS);
            for _ in 0..excess {
                blocks.pop_first()?;
            }
            let Some(oldest) = blocks.first()?.map(|(n, _)| n.value()) else {
                return Ok(());
            };
            drop(blocks);
            let mut watched = txn.open_table(WATCHED)?;
            watched.retain(|_, read_at| read_at >= oldest)?;
            Ok(())
        })
    }

    /// The blocks recorded above `ancestor` (None: all of them) went in a
    /// reorg: their hashes are forgotten.
    pub fn forget_blocks_above(&self, ancestor: Option<u64>) -> Result<(), StoreError> {
        self.transition(|txn| {
            let mut blocks = txn.open_table(BLOCKS)?;
            match ancestor {
                Some(n) => blocks.retain(|number, _| number <= n)?,
                None => blocks.retain(|_, _| false)?,
            }
            Ok(())
        })
    }

    /// Request `id` of `contract` is being decided on a read at block
    /// `read_at` (recorded before the decision, so no crash leaves a
    /// decision unwatched).
    pub fn watch(&self, contract: Address, id: u64, read_at: u64) -> Result<(), StoreError> {
        self.transition(|txn| watch(txn, contract, id, read_at))
    }

    /// The requests decided at the blocks remembered, in (contract, id)
    /// order.
    pub fn watched(&self) -> Result<Vec<Watched>, StoreError> {
        self.read(|txn| {
            let table = txn.table(WATCHED)?;
            collect(table.iter()?, |k, read_at| {
                let contract = Address::from_slice(&k[..20]);
                let id = u64::from_be_bytes(k[20..].try_into().expect("8 bytes"));
                Ok(Watched {
                    contract,
                    id,
                    read_at,
                })
            })
        })
    }

    /// The ids of `contract`'s request records from `from` on.
    pub fn request_ids_from(&self, contract: Address, from: u64) -> Result<Vec<u64>, StoreError> {
        self.read(|txn| requests::ids_from(txn, contract, from))
    }

    /// Request `id` of `contract` as the daemon knew it is gone (a reorg
    /// dropped or changed it): its record and its watch entry go, so the
    /// request, if it is on chain now, is examined as a new one. Its
    /// allocation, if any, must have been released before.
    pub fn forget_request(&self, contract: Address, id: u64) -> Result<(), StoreError> {
        self.transition(|txn| {
            requests::remove(txn, contract, id)?;
            txn.open_table(WATCHED)?.remove(key(contract, id))?;
            Ok(())
        })
    }

    /// The next request of `contract` to take is `next` at most (requests
    /// from there on went in a reorg and may come again under the same
    /// ids). A contract the database has not seen keeps its start.
    pub fn rewind_request_cursor(&self, contract: Address, next: u64) -> Result<(), StoreError> {
        self.transition(|txn| cursors::rewind_next_request(txn, contract, next))
    }

    /// `contract`'s release events are read again from block `from` on
    /// (those above went in a reorg; the new ones are still to be seen).
    pub fn rewind_event_block(&self, contract: Address, from: u64) -> Result<(), StoreError> {
        self.transition(|txn| cursors::rewind_next_event_block(txn, contract, from))
    }
}

#[cfg(test)]
mod tests {
    use super::{
        super::{
            requests::tests::grant,
            tests::{CONTRACT, open},
        },
        *,
    };

    fn hash(n: u64) -> B256 {
        B256::left_padding_from(&n.to_be_bytes())
    }

    #[test]
    fn blocks_are_kept_newest_first_bounded_and_forgotten_above_a_fork() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        assert_eq!(store.recorded_blocks().unwrap(), []);
        store.watch(CONTRACT, 1, 3).unwrap();
        store.watch(CONTRACT, 2, 7).unwrap();
        for n in 1..=(KEEP_BLOCKS as u64 + 5) {
            store.record_block(n, hash(n)).unwrap();
        }
        let blocks = store.recorded_blocks().unwrap();
        assert_eq!(blocks.len(), KEEP_BLOCKS);
        assert_eq!(
            blocks[0],
            (KEEP_BLOCKS as u64 + 5, hash(KEEP_BLOCKS as u64 + 5))
        );
        assert_eq!(blocks.last().unwrap().0, 6, "the oldest went");
        // Decided below the oldest block kept: no longer watched.
        let watched = store.watched().unwrap();
        assert_eq!(
            watched,
            [Watched {
                contract: CONTRACT,
                id: 2,
                read_at: 7
            }]
        );
        store.forget_blocks_above(Some(10)).unwrap();
        let numbers: Vec<u64> = store
            .recorded_blocks()
            .unwrap()
            .iter()
            .map(|b| b.0)
            .collect();
        assert_eq!(numbers, [10, 9, 8, 7, 6]);
        store.forget_blocks_above(None).unwrap();
        assert_eq!(store.recorded_blocks().unwrap(), []);
    }

    /// A forgotten request leaves no record, no unfinished entry and no
    /// watch entry behind; the cursors only ever move back.
    #[test]
    fn a_forgotten_request_is_examined_as_new_and_cursors_move_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        grant(&store, 1, 1, 1);
        let b = grant(&store, 2, 2, 2).allocation;
        store.watch(CONTRACT, 2, 5).unwrap();
        assert_eq!(store.request_ids_from(CONTRACT, 2).unwrap(), [2]);
        assert_eq!(store.request_ids_from(CONTRACT, 1).unwrap(), [1, 2]);
        store.release(b.slot, "reorg", false).unwrap();
        store.forget_request(CONTRACT, 2).unwrap();
        assert_eq!(store.request(CONTRACT, 2).unwrap(), None);
        let unfinished: Vec<u64> = store.unfinished().unwrap().iter().map(|r| r.id).collect();
        assert_eq!(unfinished, [1]);
        assert_eq!(store.watched().unwrap(), []);

        assert_eq!(store.next_request(CONTRACT, 1).unwrap(), 3);
        store.rewind_request_cursor(CONTRACT, 2).unwrap();
        assert_eq!(store.next_request(CONTRACT, 1).unwrap(), 2);
        store.rewind_request_cursor(CONTRACT, 9).unwrap();
        assert_eq!(store.next_request(CONTRACT, 1).unwrap(), 2, "never forward");
        let other = Address::repeat_byte(0xc1);
        store.rewind_request_cursor(other, 4).unwrap();
        assert_eq!(
            store.next_request(other, 1).unwrap(),
            1,
            "an unseen contract keeps its start"
        );

        store.events_read(CONTRACT, 20).unwrap();
        store.rewind_event_block(CONTRACT, 15).unwrap();
        assert_eq!(store.next_event_block(CONTRACT, 0).unwrap(), 15);
        store.rewind_event_block(CONTRACT, 30).unwrap();
        assert_eq!(store.next_event_block(CONTRACT, 0).unwrap(), 15);
    }

    /// A database without the reorg tables (an earlier version's) opens,
    /// keeps what it held, and gets them.
    #[test]
    fn a_database_of_the_previous_version_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/broker.redb");
        let a = {
            let store = open(&dir);
            let a = grant(&store, 1, 1, 1).allocation;
            // Back to the previous version's tables.
            store
                .transition(|txn| {
                    assert!(txn.delete_table(BLOCKS)?);
                    assert!(txn.delete_table(WATCHED)?);
                    Ok(())
                })
                .unwrap();
            a
        };
        let read_only = Store::open_read_only(&path, super::super::tests::pool()).unwrap();
        assert_eq!(read_only.allocations().unwrap(), std::slice::from_ref(&a));
        drop(read_only);
        let store = open(&dir);
        assert_eq!(store.allocations().unwrap(), [a]);
        assert_eq!(store.recorded_blocks().unwrap(), []);
        store.record_block(4, hash(4)).unwrap();
        assert_eq!(store.recorded_blocks().unwrap(), [(4, hash(4))]);
    }
}
