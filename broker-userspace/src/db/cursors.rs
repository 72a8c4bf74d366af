//! Where the daemon is in each contract's history: the next request id to
//! look at, and the next block to read release events from.

use alloy::primitives::Address;
use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::DbError;

const NEXT_REQUEST: TableDefinition<[u8; 20], u64> = TableDefinition::new("cursor_next_request");
const NEXT_EVENT_BLOCK: TableDefinition<[u8; 20], u64> =
    TableDefinition::new("cursor_next_event_block");

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), DbError> {
    txn.open_table(NEXT_REQUEST)?;
    txn.open_table(NEXT_EVENT_BLOCK)?;
    Ok(())
}

/// The next request id of `contract` to process; `start` for a contract the
/// database has not seen (so a fresh database does not replay history).
pub fn next_request(txn: &WriteTransaction, contract: Address, start: u64) -> Result<u64, DbError> {
    let table = txn.open_table(NEXT_REQUEST)?;
    Ok(table.get(contract.0.0)?.map_or(start, |v| v.value()))
}

pub fn set_next_request(
    txn: &WriteTransaction,
    contract: Address,
    next: u64,
) -> Result<(), DbError> {
    txn.open_table(NEXT_REQUEST)?.insert(contract.0.0, next)?;
    Ok(())
}

pub fn next_event_block(
    txn: &WriteTransaction,
    contract: Address,
    start: u64,
) -> Result<u64, DbError> {
    let table = txn.open_table(NEXT_EVENT_BLOCK)?;
    Ok(table.get(contract.0.0)?.map_or(start, |v| v.value()))
}

pub fn set_next_event_block(
    txn: &WriteTransaction,
    contract: Address,
    next: u64,
) -> Result<(), DbError> {
    txn.open_table(NEXT_EVENT_BLOCK)?
        .insert(contract.0.0, next)?;
    Ok(())
}
