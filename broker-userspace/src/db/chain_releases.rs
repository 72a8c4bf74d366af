//! On-chain releases still to send (`releaseAllocation`): recorded with the
//! local release, in the same transaction, and removed once mined, so an RPC
//! outage or a crash never loses one.

use alloy::primitives::Address;
use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::DbError;

/// (requests contract ‖ NFT contract) → the request whose allocation was
/// released (so a newer request of the NFT is never ended by it).
const PENDING: TableDefinition<[u8; 40], u64> = TableDefinition::new("chain_releases_pending");

fn key(contract: Address, nft: Address) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..20].copy_from_slice(contract.as_slice());
    k[20..].copy_from_slice(nft.as_slice());
    k
}

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), DbError> {
    txn.open_table(PENDING)?;
    Ok(())
}

pub fn queue(
    txn: &WriteTransaction,
    contract: Address,
    nft: Address,
    request_id: u64,
) -> Result<(), DbError> {
    txn.open_table(PENDING)?
        .insert(key(contract, nft), request_id)?;
    Ok(())
}

pub fn done(txn: &WriteTransaction, contract: Address, nft: Address) -> Result<(), DbError> {
    txn.open_table(PENDING)?.remove(key(contract, nft))?;
    Ok(())
}

/// Owed releases: (requests contract, NFT contract, request id).
pub fn pending(txn: &WriteTransaction) -> Result<Vec<(Address, Address, u64)>, DbError> {
    let table = txn.open_table(PENDING)?;
    let mut out = Vec::new();
    for item in table.iter()? {
        let (k, v) = item?;
        let k = k.value();
        out.push((
            Address::from_slice(&k[..20]),
            Address::from_slice(&k[20..]),
            v.value(),
        ));
    }
    Ok(out)
}
