//! The audit log: every allocation, rotation, rejection and release, in
//! order, never rewritten.

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{Reads, Store, StoreError, collect, decode, encode, now};

const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Allocated {
        contract: String,
        request_id: u64,
        nft: String,
        prefix: String,
    },
    Rotated {
        contract: String,
        request_id: u64,
        nft: String,
        prefix: String,
    },
    Rejected {
        contract: String,
        request_id: u64,
        reason: String,
    },
    Answered {
        contract: String,
        request_id: u64,
        transaction: String,
    },
    Released {
        nft: String,
        prefix: String,
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub at: u64,
    #[serde(flatten)]
    pub event: Event,
}

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(AUDIT)?;
    Ok(())
}

/// Appends `event` (inside the transaction making the change it records).
pub(super) fn record(txn: &WriteTransaction, event: Event) -> Result<(), StoreError> {
    let mut table = txn.open_table(AUDIT)?;
    let next = table.last()?.map_or(0, |(k, _)| k.value() + 1);
    table.insert(next, encode(&Entry { at: now(), event }).as_slice())?;
    Ok(())
}

impl Store {
    /// The last `n` entries, oldest first.
    pub fn audit_tail(&self, n: usize) -> Result<Vec<Entry>, StoreError> {
        self.read(|txn| {
            let table = txn.table(AUDIT)?;
            let from = table.len()?.saturating_sub(n as u64);
            collect(table.range(from..)?, |k, v| decode("audit", k, v))
        })
    }
}
