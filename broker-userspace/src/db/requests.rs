//! What the daemon decided for each on-chain request, and how far it got.
//!
//! A request's record moves forward only: `Allocated` (a prefix is reserved
//! and the kernel is being set up) → `Sent` (the response transaction left)
//! → `Answered`; or it ends at once as `Rejected` (invalid: silent, never
//! answered, never retried) or `Skipped` (no longer pending when read). A
//! transient failure parks it in `Retry` without holding up the requests
//! behind it. Unfinished requests are also listed in a small table of their
//! own, so a restart resumes them without scanning the whole history.

use alloy::primitives::Address;
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{DbError, decode, encode, now};

const REQUESTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("requests");
const UNFINISHED: TableDefinition<&[u8], ()> = TableDefinition::new("requests_unfinished");

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    /// Invalid: never answered, never retried.
    Rejected { reason: String },
    /// Nothing to do: not pending, expired or superseded when read.
    Skipped { reason: String },
    /// A prefix is reserved; the response is still to be sent (to
    /// `server_pubkey`, hex, kept so that a restart can still send it).
    Allocated {
        #[serde(with = "super::slot_string")]
        slot: u128,
        server_pubkey: String,
    },
    /// The response transaction was sent; waiting for its receipt.
    Sent {
        #[serde(with = "super::slot_string")]
        slot: u128,
        transaction: String,
    },
    Answered {
        #[serde(with = "super::slot_string")]
        slot: u128,
        transaction: String,
    },
    /// Waiting after a transient failure (RPC, nonce, gas).
    Retry {
        attempts: u32,
        next_at: u64,
        last_error: String,
    },
}

impl Stage {
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            Stage::Rejected { .. } | Stage::Skipped { .. } | Stage::Answered { .. }
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub contract: Address,
    pub id: u64,
    pub stage: Stage,
    pub updated_at: u64,
}

fn key(contract: Address, id: u64) -> [u8; 28] {
    let mut k = [0u8; 28];
    k[..20].copy_from_slice(contract.as_slice());
    k[20..].copy_from_slice(&id.to_be_bytes());
    k
}

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), DbError> {
    txn.open_table(REQUESTS)?;
    txn.open_table(UNFINISHED)?;
    Ok(())
}

pub fn get(txn: &WriteTransaction, contract: Address, id: u64) -> Result<Option<Record>, DbError> {
    let table = txn.open_table(REQUESTS)?;
    let k = key(contract, id);
    let value = table.get(k.as_slice())?;
    value
        .map(|v| decode("requests", format!("{contract}/{id}"), v.value()))
        .transpose()
}

/// Records a request's new stage.
pub fn set(
    txn: &WriteTransaction,
    contract: Address,
    id: u64,
    stage: Stage,
) -> Result<(), DbError> {
    let k = key(contract, id);
    let finished = stage.is_finished();
    let record = Record {
        contract,
        id,
        stage,
        updated_at: now(),
    };
    txn.open_table(REQUESTS)?
        .insert(k.as_slice(), encode(&record).as_slice())?;
    let mut unfinished = txn.open_table(UNFINISHED)?;
    if finished {
        unfinished.remove(k.as_slice())?;
    } else {
        unfinished.insert(k.as_slice(), ())?;
    }
    Ok(())
}

/// Every request not finished yet, in (contract, id) order.
pub fn unfinished(txn: &WriteTransaction) -> Result<Vec<Record>, DbError> {
    let keys: Vec<Vec<u8>> = txn
        .open_table(UNFINISHED)?
        .iter()?
        .map(|item| item.map(|(k, _)| k.value().to_vec()))
        .collect::<Result<_, _>>()?;
    let table = txn.open_table(REQUESTS)?;
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        if let Some(v) = table.get(k.as_slice())? {
            out.push(decode("requests", hex::encode(&k), v.value())?);
        }
    }
    Ok(out)
}
