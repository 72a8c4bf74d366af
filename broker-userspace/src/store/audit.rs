//! The audit log: every allocation, rotation, rejection and release, in
//! order, never rewritten; entries older than the retention are pruned from
//! its start (rejections grow with whatever anyone submits).

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{Reads, Store, StoreError, decode, encode, now};

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

/// Removes the entries recorded before `cutoff` (seconds since the epoch)
/// from the start of the log; says how many. Entries are appended in time
/// order, so the first one recorded at or after `cutoff` ends the pruning
/// (a wall clock stepped back may keep a few older ones a while longer).
pub(super) fn prune(txn: &WriteTransaction, cutoff: u64) -> Result<u64, StoreError> {
    let mut table = txn.open_table(AUDIT)?;
    let mut removed = 0;
    loop {
        let first = match table.first()? {
            Some((k, v)) => (
                k.value(),
                decode::<Entry>("audit", k.value(), v.value())?.at,
            ),
            None => break,
        };
        let (key, at) = first;
        if at >= cutoff {
            break;
        }
        table.remove(key)?;
        removed += 1;
    }
    Ok(removed)
}

impl Store {
    /// The last `n` entries, oldest first. (Keys do not start at 0 once the
    /// log was pruned: counted from the end.)
    pub fn audit_tail(&self, n: usize) -> Result<Vec<Entry>, StoreError> {
        self.read(|txn| {
            let table = txn.table(AUDIT)?;
            let mut tail = table
                .iter()?
                .rev()
                .take(n)
                .map(|entry| {
                    let (k, v) = entry?;
                    decode("audit", k.value(), v.value())
                })
                .collect::<Result<Vec<Entry>, StoreError>>()?;
            tail.reverse();
            Ok(tail)
        })
    }
}
