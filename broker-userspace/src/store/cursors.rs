//! Where the daemon is in each contract's history: the next request id to
//! look at, and the next block to read release events from.

use alloy::primitives::Address;
use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::{Reads, Store, StoreError};

const NEXT_REQUEST: TableDefinition<[u8; 20], u64> = TableDefinition::new("cursor_next_request");
const NEXT_EVENT_BLOCK: TableDefinition<[u8; 20], u64> =
    TableDefinition::new("cursor_next_event_block");

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(NEXT_REQUEST)?;
    txn.open_table(NEXT_EVENT_BLOCK)?;
    Ok(())
}

/// Moves the request cursor of `contract` to `next` (inside the transaction
/// recording the decision on the request before it).
pub(super) fn set_next_request(
    txn: &WriteTransaction,
    contract: Address,
    next: u64,
) -> Result<(), StoreError> {
    txn.open_table(NEXT_REQUEST)?.insert(contract.0.0, next)?;
    Ok(())
}

/// Moves the request cursor of `contract` back to `next` (never forward; a
/// contract without a cursor keeps its configured start).
pub(super) fn rewind_next_request(
    txn: &WriteTransaction,
    contract: Address,
    next: u64,
) -> Result<(), StoreError> {
    rewind(txn, NEXT_REQUEST, contract, next)
}

/// Moves the release-event cursor of `contract` back to `from`, likewise.
pub(super) fn rewind_next_event_block(
    txn: &WriteTransaction,
    contract: Address,
    from: u64,
) -> Result<(), StoreError> {
    rewind(txn, NEXT_EVENT_BLOCK, contract, from)
}

fn rewind(
    txn: &WriteTransaction,
    cursor: TableDefinition<[u8; 20], u64>,
    contract: Address,
    to: u64,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(cursor)?;
    let current = table.get(contract.0.0)?.map(|v| v.value());
    if current.is_some_and(|c| c > to) {
        table.insert(contract.0.0, to)?;
    }
    Ok(())
}

impl Store {
    /// The next request id of `contract` to process; `start` for a contract
    /// the database has not seen (so a fresh database does not replay
    /// history).
    pub fn next_request(&self, contract: Address, start: u64) -> Result<u64, StoreError> {
        self.read(|txn| {
            let table = txn.table(NEXT_REQUEST)?;
            Ok(table.get(contract.0.0)?.map_or(start, |v| v.value()))
        })
    }

    /// The next block to read `contract`'s release events from; `start` for
    /// a contract the database has not seen.
    pub fn next_event_block(&self, contract: Address, start: u64) -> Result<u64, StoreError> {
        self.read(|txn| {
            let table = txn.table(NEXT_EVENT_BLOCK)?;
            Ok(table.get(contract.0.0)?.map_or(start, |v| v.value()))
        })
    }

    /// `contract`'s release events up to `block` (included) are handled.
    pub fn events_read(&self, contract: Address, block: u64) -> Result<(), StoreError> {
        self.transition(|txn| {
            txn.open_table(NEXT_EVENT_BLOCK)?
                .insert(contract.0.0, block + 1)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{
        super::tests::{CONTRACT, open},
        *,
    };

    #[test]
    fn cursors_start_where_configured_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(&dir);
            assert_eq!(store.next_request(CONTRACT, 1000).unwrap(), 1000);
            assert_eq!(store.next_event_block(CONTRACT, 5).unwrap(), 5);
            store
                .transition(|t| set_next_request(t, CONTRACT, 1007))
                .unwrap();
            store.events_read(CONTRACT, 41).unwrap();
        }
        let store = open(&dir);
        assert_eq!(store.next_request(CONTRACT, 1000).unwrap(), 1007);
        assert_eq!(store.next_event_block(CONTRACT, 5).unwrap(), 42);
        let other = Address::repeat_byte(0xc1);
        assert_eq!(store.next_request(other, 3).unwrap(), 3, "per contract");
    }
}
