//! Prefix allocation (IPAM): which `allocation_size` prefixes of the
//! upstream prefix are free, stored in redb.
//!
//! The upstream prefix is cut into 2^(allocation_size - upstream length)
//! slots, numbered in address order; slot 0 holds the broker's own address
//! and is never handed out. Free slots are kept as runs (`start → end`,
//! end exclusive) in a B-tree, so the lowest free slot is the first key, and
//! taking or returning a slot touches at most its two neighbouring runs:
//! O(log n) whatever the pool's size — a /48 cut into /120s has 2^72 slots,
//! which no bitmap or scan could handle.
//!
//! Every operation works inside the caller's write transaction, so an
//! allocation commits together with whatever the caller records beside it,
//! or not at all.

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use thiserror::Error;

/// Free runs: first free slot → first slot after the run.
const FREE: TableDefinition<u128, u128> = TableDefinition::new("ipam_free");
/// The pool the runs describe, and how many slots are free.
const META: TableDefinition<&str, u128> = TableDefinition::new("ipam_meta");
const META_NETWORK: &str = "upstream_network";
const META_UPSTREAM_LEN: &str = "upstream_len";
const META_SIZE: &str = "allocation_size";
const META_FREE: &str = "free_slots";

/// The longest allocation the pool gives. Slot 0 is the broker's, and must
/// hold the upstream router's `::1` and the broker's own `::2` (the
/// gateway): with /127 slot 0 ends at `::1` and with /128 at `::0`, so the
/// router's or the gateway's address would be handed to a client.
pub const LONGEST_ALLOCATION: u8 = 126;

#[derive(Debug, Error)]
pub enum IpamError {
    #[error("allocation size /{size} must be longer than the upstream prefix {upstream}")]
    SizeNotLonger { upstream: Ipv6Net, size: u8 },
    #[error(
        "allocation size /{size} is too long: /{LONGEST_ALLOCATION} at most, since the broker's own prefix (the pool's first) must hold the router's ::1 and the gateway ::2, which a /{size} would give to clients"
    )]
    SizeTooLong { size: u8 },
    #[error(
        "the database holds allocations of {stored}, but the configuration says {configured}; the pool cannot change under existing allocations"
    )]
    PoolChanged { stored: String, configured: String },
    #[error("slot {0} is already free")]
    AlreadyFree(u128),
    #[error("slot {0} is outside the pool")]
    OutOfPool(u128),
    #[error("IPAM storage: {0}")]
    Storage(#[from] redb::Error),
}

impl From<redb::TableError> for IpamError {
    fn from(e: redb::TableError) -> Self {
        IpamError::Storage(e.into())
    }
}

impl From<redb::StorageError> for IpamError {
    fn from(e: redb::StorageError) -> Self {
        IpamError::Storage(e.into())
    }
}

/// The upstream prefix and the size of the prefixes cut from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    upstream: Ipv6Net,
    size: u8,
}

impl Pool {
    pub fn new(upstream: Ipv6Net, size: u8) -> Result<Self, IpamError> {
        let upstream = upstream.trunc();
        if size <= upstream.prefix_len() {
            return Err(IpamError::SizeNotLonger { upstream, size });
        }
        // Also keeps the slot count (2^(size - upstream length)) within u128.
        if size > LONGEST_ALLOCATION {
            return Err(IpamError::SizeTooLong { size });
        }
        Ok(Pool { upstream, size })
    }

    pub fn upstream(&self) -> Ipv6Net {
        self.upstream
    }

    pub fn allocation_size(&self) -> u8 {
        self.size
    }

    /// Number of slots, slot 0 included.
    pub fn slots(&self) -> u128 {
        1u128 << (self.size - self.upstream.prefix_len())
    }

    /// The prefix of `slot`, if the pool has it.
    pub fn prefix(&self, slot: u128) -> Option<Ipv6Net> {
        if slot >= self.slots() {
            return None;
        }
        let host_bits = 128 - u32::from(self.size);
        let base = u128::from(self.upstream.network());
        let network = base | slot.checked_shl(host_bits).unwrap_or(0);
        Ipv6Net::new(Ipv6Addr::from(network), self.size).ok()
    }

    /// The slot of `prefix`, if it is one of the pool's.
    pub fn slot(&self, prefix: &Ipv6Net) -> Option<u128> {
        if prefix.prefix_len() != self.size
            || !self.upstream.contains(prefix)
            || prefix.network() != prefix.addr()
        {
            return None;
        }
        let host_bits = 128 - u32::from(self.size);
        let offset = u128::from(prefix.network()) - u128::from(self.upstream.network());
        Some(offset.checked_shr(host_bits).unwrap_or(0))
    }

    /// The broker's own address, in slot 0: the upstream network + 2 (+1 is
    /// by custom the provider's router on the upstream link). Clients get it
    /// as their gateway, reachable through the tunnel.
    pub fn broker_address(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.upstream.network()) + 2)
    }
}

/// Sets the pool up in a new database, or checks it is the one the
/// database was made for.
pub fn init(txn: &WriteTransaction, pool: &Pool) -> Result<(), IpamError> {
    let mut meta = txn.open_table(META)?;
    let stored = (
        meta.get(META_NETWORK)?.map(|v| v.value()),
        meta.get(META_UPSTREAM_LEN)?.map(|v| v.value()),
        meta.get(META_SIZE)?.map(|v| v.value()),
    );
    match stored {
        (Some(network), Some(len), Some(size)) => {
            let stored_pool = (network, len, size);
            let configured = (
                u128::from(pool.upstream.network()),
                u128::from(pool.upstream.prefix_len()),
                u128::from(pool.size),
            );
            if stored_pool != configured {
                return Err(IpamError::PoolChanged {
                    stored: format!("/{size}s of {}/{len}", Ipv6Addr::from(network)),
                    configured: format!("/{}s of {}", pool.size, pool.upstream),
                });
            }
            Ok(())
        }
        _ => {
            meta.insert(META_NETWORK, u128::from(pool.upstream.network()))?;
            meta.insert(META_UPSTREAM_LEN, u128::from(pool.upstream.prefix_len()))?;
            meta.insert(META_SIZE, u128::from(pool.size))?;
            meta.insert(META_FREE, pool.slots() - 1)?;
            let mut free = txn.open_table(FREE)?;
            if pool.slots() > 1 {
                free.insert(1u128, pool.slots())?;
            }
            Ok(())
        }
    }
}

fn adjust_free(txn: &WriteTransaction, delta: i8) -> Result<(), IpamError> {
    let mut meta = txn.open_table(META)?;
    let free = meta.get(META_FREE)?.map(|v| v.value()).unwrap_or(0);
    let free = if delta < 0 { free - 1 } else { free + 1 };
    meta.insert(META_FREE, free)?;
    Ok(())
}

/// Takes the lowest free slot; None when the pool is full.
pub fn take_lowest(txn: &WriteTransaction) -> Result<Option<u128>, IpamError> {
    let mut free = txn.open_table(FREE)?;
    let first = free.first()?.map(|(s, e)| (s.value(), e.value()));
    let Some((start, end)) = first else {
        return Ok(None);
    };
    free.remove(start)?;
    if start + 1 < end {
        free.insert(start + 1, end)?;
    }
    drop(free);
    adjust_free(txn, -1)?;
    Ok(Some(start))
}

/// Takes a given slot (e.g. one the kernel still routes); false when it was
/// not free.
pub fn take(txn: &WriteTransaction, pool: &Pool, slot: u128) -> Result<bool, IpamError> {
    if slot == 0 || slot >= pool.slots() {
        return Err(IpamError::OutOfPool(slot));
    }
    let mut free = txn.open_table(FREE)?;
    let run = free
        .range(..=slot)?
        .next_back()
        .transpose()?
        .map(|(s, e)| (s.value(), e.value()));
    let Some((start, end)) = run.filter(|&(_, end)| slot < end) else {
        return Ok(false);
    };
    free.remove(start)?;
    if start < slot {
        free.insert(start, slot)?;
    }
    if slot + 1 < end {
        free.insert(slot + 1, end)?;
    }
    drop(free);
    adjust_free(txn, -1)?;
    Ok(true)
}

/// Returns a slot to the pool, merging it with the free runs beside it.
pub fn give_back(txn: &WriteTransaction, pool: &Pool, slot: u128) -> Result<(), IpamError> {
    if slot == 0 || slot >= pool.slots() {
        return Err(IpamError::OutOfPool(slot));
    }
    let mut free = txn.open_table(FREE)?;
    let before = free
        .range(..=slot)?
        .next_back()
        .transpose()?
        .map(|(s, e)| (s.value(), e.value()));
    if before.is_some_and(|(_, end)| slot < end) {
        return Err(IpamError::AlreadyFree(slot));
    }
    let after = free.get(slot + 1)?.map(|e| e.value());
    let mut start = slot;
    let mut end = slot + 1;
    if let Some((s, e)) = before
        && e == slot
    {
        free.remove(s)?;
        start = s;
    }
    if let Some(e) = after {
        free.remove(slot + 1)?;
        end = e;
    }
    free.insert(start, end)?;
    drop(free);
    adjust_free(txn, 1)?;
    Ok(())
}

/// How many slots are free.
pub fn free_slots(txn: &WriteTransaction) -> Result<u128, IpamError> {
    let meta = txn.open_table(META)?;
    Ok(meta.get(META_FREE)?.map(|v| v.value()).unwrap_or(0))
}

/// Number of free runs (how fragmented the pool is).
pub fn free_runs(txn: &WriteTransaction) -> Result<u64, IpamError> {
    Ok(txn.open_table(FREE)?.len()?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::{Rng, SeedableRng, rngs::StdRng};
    use redb::Database;

    use super::*;

    fn pool(upstream: &str, size: u8) -> Pool {
        Pool::new(upstream.parse().unwrap(), size).unwrap()
    }

    fn db() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("ipam.redb")).unwrap();
        (dir, db)
    }

    fn with<T>(db: &Database, f: impl FnOnce(&WriteTransaction) -> T) -> T {
        let txn = db.begin_write().unwrap();
        let out = f(&txn);
        txn.commit().unwrap();
        out
    }

    #[test]
    fn slots_and_prefixes_map_both_ways() {
        let p = pool("2001:db8:0:1::/64", 120);
        assert_eq!(p.slots(), 1 << 56);
        assert_eq!(p.prefix(1).unwrap().to_string(), "2001:db8:0:1::100/120");
        assert_eq!(p.slot(&"2001:db8:0:1::100/120".parse().unwrap()), Some(1));
        assert_eq!(p.broker_address().to_string(), "2001:db8:0:1::2");
        let wide = pool("2001:db8::/48", 120);
        let last = wide.slots() - 1;
        let prefix = wide.prefix(last).unwrap();
        assert_eq!(
            prefix.to_string(),
            "2001:db8:0:ffff:ffff:ffff:ffff:ff00/120"
        );
        assert_eq!(wide.slot(&prefix), Some(last));
        assert_eq!(wide.prefix(wide.slots()), None);
        assert_eq!(wide.slot(&"2001:db9::/120".parse().unwrap()), None);
        assert_eq!(wide.slot(&"2001:db8::/64".parse().unwrap()), None);
        assert!(Pool::new("2001:db8::/64".parse().unwrap(), 64).is_err());
        assert_eq!(pool("2001:db8::/120", 126).slots(), 64);
        assert_eq!(pool("::/0", 126).slots(), 1 << 126);
    }

    #[test]
    fn hands_out_the_lowest_free_slot_and_takes_returns() {
        let (_dir, db) = db();
        let p = pool("2001:db8::/120", 124);
        with(&db, |t| init(t, &p).unwrap());
        let got: Vec<u128> = with(&db, |t| {
            (0..15).map(|_| take_lowest(t).unwrap().unwrap()).collect()
        });
        assert_eq!(got, (1..16).collect::<Vec<_>>(), "slot 0 is the broker's");
        assert_eq!(with(&db, |t| take_lowest(t).unwrap()), None, "full");
        with(&db, |t| {
            give_back(t, &p, 7).unwrap();
            give_back(t, &p, 3).unwrap();
            assert!(matches!(
                give_back(t, &p, 3),
                Err(IpamError::AlreadyFree(3))
            ));
            assert!(matches!(give_back(t, &p, 0), Err(IpamError::OutOfPool(0))));
            assert_eq!(free_slots(t).unwrap(), 2);
        });
        assert_eq!(with(&db, |t| take_lowest(t).unwrap()), Some(3));
        assert_eq!(with(&db, |t| take_lowest(t).unwrap()), Some(7));
    }

    #[test]
    fn a_huge_pool_costs_no_more_than_a_small_one() {
        let (_dir, db) = db();
        let p = pool("2001:db8::/48", 120);
        with(&db, |t| {
            init(t, &p).unwrap();
            assert_eq!(free_slots(t).unwrap(), (1u128 << 72) - 1);
            assert_eq!(take_lowest(t).unwrap(), Some(1));
            let last = p.slots() - 1;
            assert!(take(t, &p, last).unwrap());
            assert!(!take(t, &p, last).unwrap());
            assert!(take(t, &p, 1 << 40).unwrap());
            assert_eq!(free_runs(t).unwrap(), 2);
            give_back(t, &p, 1 << 40).unwrap();
            assert_eq!(free_runs(t).unwrap(), 1, "merged with both neighbours");
            assert_eq!(free_slots(t).unwrap(), (1u128 << 72) - 3);
        });
    }

    #[test]
    fn survives_reopening_and_refuses_a_changed_pool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam.redb");
        let p = pool("2001:db8:1::/64", 120);
        {
            let db = Database::create(&path).unwrap();
            with(&db, |t| {
                init(t, &p).unwrap();
                take_lowest(t).unwrap();
                take_lowest(t).unwrap();
            });
        }
        let db = Database::create(&path).unwrap();
        with(&db, |t| init(t, &p).unwrap());
        assert_eq!(with(&db, |t| take_lowest(t).unwrap()), Some(3));
        let other = pool("2001:db8:1::/64", 112);
        let e = with(&db, |t| init(t, &other).unwrap_err());
        assert!(matches!(e, IpamError::PoolChanged { .. }), "{e}");
    }

    /// Random takes and returns against a plain set of used slots.
    #[test]
    fn agrees_with_a_set_over_random_operations() {
        let (_dir, db) = db();
        let p = pool("2001:db8::/112", 120);
        with(&db, |t| init(t, &p).unwrap());
        let mut rng = StdRng::seed_from_u64(7);
        let mut used = BTreeSet::new();
        for _ in 0..3000 {
            let mut txn = db.begin_write().unwrap();
            // What is checked is the logic, not the disk: skip the fsyncs.
            txn.set_durability(redb::Durability::None).unwrap();
            match rng.random_range(0..3) {
                0 => {
                    let got = take_lowest(&txn).unwrap();
                    let want = (1..p.slots()).find(|s| !used.contains(s));
                    assert_eq!(got, want);
                    if let Some(s) = got {
                        used.insert(s);
                    }
                }
                1 => {
                    let s = rng.random_range(1..p.slots());
                    assert_eq!(take(&txn, &p, s).unwrap(), used.insert(s));
                }
                _ => {
                    let s = rng.random_range(1..p.slots());
                    let r = give_back(&txn, &p, s);
                    assert_eq!(r.is_ok(), used.remove(&s), "slot {s}");
                }
            }
            let free = free_slots(&txn).unwrap();
            assert_eq!(free, p.slots() - 1 - used.len() as u128);
            txn.commit().unwrap();
        }
    }
}
