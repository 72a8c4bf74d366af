//! Allocations: which prefix belongs to which NFT contract, under which
//! WireGuard key, answered when, and released unless a handshake comes by
//! when. Indexed by NFT contract (a new request from it rotates its key and
//! keeps its prefix) and by WireGuard key (one key, one allocation).

use alloy::primitives::Address;
use ipnet::Ipv6Net;
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{
    DbError,
    audit::{self, Event},
    decode, encode, now,
};
use crate::ipam::{self, Pool};

const ALLOCATIONS: TableDefinition<u128, &[u8]> = TableDefinition::new("allocations");
const BY_NFT: TableDefinition<[u8; 20], u128> = TableDefinition::new("allocations_by_nft");
const BY_WG_KEY: TableDefinition<[u8; 32], u128> = TableDefinition::new("allocations_by_wg_key");

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    #[serde(with = "super::slot_string")]
    pub slot: u128,
    pub prefix: Ipv6Net,
    pub nft: Address,
    /// The requests contract and request that last (re)configured it.
    pub contract: Address,
    pub request_id: u64,
    #[serde(with = "hex_key")]
    pub wg_key: [u8; 32],
    pub created_at: u64,
    /// When its current WireGuard key was decided (the allocation made, or
    /// rotated to that key). The key's peer is configured after this, so a
    /// handshake of that peer since then shows the tunnel up — also one
    /// that came before `answered_at` (the client can read the answer on
    /// chain before the broker has recorded sending it).
    #[serde(default)]
    pub key_set_at: Option<u64>,
    pub answered_at: Option<u64>,
    /// Released if no handshake is seen by then (set when answered, cleared
    /// by the first handshake).
    pub handshake_deadline: Option<u64>,
}

mod hex_key {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(k: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(k))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut k = [0u8; 32];
        hex::decode_to_slice(&s, &mut k).map_err(D::Error::custom)?;
        Ok(k)
    }
}

/// What a valid request gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A new prefix.
    New(Allocation),
    /// The NFT's existing prefix, under a new WireGuard key.
    Rotated {
        allocation: Allocation,
        old_wg_key: [u8; 32],
    },
    /// Another allocation holds this WireGuard key.
    KeyInUse,
    /// No prefix left.
    PoolFull,
}

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), DbError> {
    txn.open_table(ALLOCATIONS)?;
    txn.open_table(BY_NFT)?;
    txn.open_table(BY_WG_KEY)?;
    Ok(())
}

pub fn get(txn: &WriteTransaction, slot: u128) -> Result<Option<Allocation>, DbError> {
    let table = txn.open_table(ALLOCATIONS)?;
    let value = table.get(slot)?;
    value
        .map(|v| decode("allocations", slot, v.value()))
        .transpose()
}

pub fn by_nft(txn: &WriteTransaction, nft: Address) -> Result<Option<Allocation>, DbError> {
    let slot = txn.open_table(BY_NFT)?.get(nft.0.0)?.map(|v| v.value());
    match slot {
        Some(slot) => get(txn, slot),
        None => Ok(None),
    }
}

/// Every allocation, in prefix order.
pub fn all(txn: &redb::ReadTransaction) -> Result<Vec<Allocation>, DbError> {
    let table = txn.open_table(ALLOCATIONS)?;
    let mut out = Vec::new();
    for item in table.iter()? {
        let (k, v) = item?;
        out.push(decode("allocations", k.value(), v.value())?);
    }
    Ok(out)
}

/// Stores a changed allocation (its slot, NFT and key unchanged).
pub fn update(txn: &WriteTransaction, allocation: &Allocation) -> Result<(), DbError> {
    txn.open_table(ALLOCATIONS)?
        .insert(allocation.slot, encode(allocation).as_slice())?;
    Ok(())
}

/// Decides a valid request from `nft` with `wg_key`: rotation when the NFT
/// already has a prefix, else the lowest free one, and records it (with its
/// audit entry) in `txn`.
pub fn allocate(
    txn: &WriteTransaction,
    pool: &Pool,
    contract: Address,
    request_id: u64,
    nft: Address,
    wg_key: [u8; 32],
) -> Result<Decision, DbError> {
    let key_holder = txn.open_table(BY_WG_KEY)?.get(wg_key)?.map(|v| v.value());
    if let Some(mut allocation) = by_nft(txn, nft)? {
        if key_holder.is_some_and(|slot| slot != allocation.slot) {
            return Ok(Decision::KeyInUse);
        }
        let old_wg_key = allocation.wg_key;
        let mut by_key = txn.open_table(BY_WG_KEY)?;
        by_key.remove(old_wg_key)?;
        by_key.insert(wg_key, allocation.slot)?;
        drop(by_key);
        allocation.wg_key = wg_key;
        allocation.contract = contract;
        allocation.request_id = request_id;
        allocation.key_set_at = Some(now());
        allocation.answered_at = None;
        allocation.handshake_deadline = None;
        update(txn, &allocation)?;
        audit::record(
            txn,
            Event::Rotated {
                contract: contract.to_string(),
                request_id,
                nft: nft.to_string(),
                prefix: allocation.prefix.to_string(),
            },
        )?;
        return Ok(Decision::Rotated {
            allocation,
            old_wg_key,
        });
    }
    if key_holder.is_some() {
        return Ok(Decision::KeyInUse);
    }
    let Some(slot) = ipam::take_lowest(txn)? else {
        return Ok(Decision::PoolFull);
    };
    let prefix = pool.prefix(slot).expect("IPAM hands out slots of its pool");
    let allocation = Allocation {
        slot,
        prefix,
        nft,
        contract,
        request_id,
        wg_key,
        created_at: now(),
        key_set_at: Some(now()),
        answered_at: None,
        handshake_deadline: None,
    };
    update(txn, &allocation)?;
    txn.open_table(BY_NFT)?.insert(nft.0.0, slot)?;
    txn.open_table(BY_WG_KEY)?.insert(wg_key, slot)?;
    audit::record(
        txn,
        Event::Allocated {
            contract: contract.to_string(),
            request_id,
            nft: nft.to_string(),
            prefix: prefix.to_string(),
        },
    )?;
    Ok(Decision::New(allocation))
}

/// Frees an allocation: record, indexes, slot, and an audit entry saying
/// why. Returns it, or None when there was none.
pub fn release(
    txn: &WriteTransaction,
    pool: &Pool,
    slot: u128,
    reason: &str,
) -> Result<Option<Allocation>, DbError> {
    let Some(allocation) = get(txn, slot)? else {
        return Ok(None);
    };
    txn.open_table(ALLOCATIONS)?.remove(slot)?;
    txn.open_table(BY_NFT)?.remove(allocation.nft.0.0)?;
    txn.open_table(BY_WG_KEY)?.remove(allocation.wg_key)?;
    ipam::give_back(txn, pool, slot)?;
    audit::record(
        txn,
        Event::Released {
            nft: allocation.nft.to_string(),
            prefix: allocation.prefix.to_string(),
            reason: reason.to_string(),
        },
    )?;
    Ok(Some(allocation))
}
