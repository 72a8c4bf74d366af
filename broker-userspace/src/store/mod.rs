//! The broker's state in one redb file: the source of truth that the kernel
//! (WireGuard peers, routes, NDP map) is made to match at every start.
//!
//! One file per stored entity: its records and tables, and the [`Store`]
//! methods that start from it. Every public method of [`Store`] is one
//! transaction. A change (a transition) is one write transaction: a
//! request's decision, the slot it takes, the audit entry and the cursor
//! commit together or not at all, and they commit *before* the kernel or
//! the chain is touched, so a crash at any point leaves state the next start
//! can finish or undo. A read is one read transaction: it never waits for,
//! nor holds up, a write.

pub mod allocations;
pub mod audit;
pub mod chain_releases;
pub mod cursors;
pub mod expiries;
pub mod reorgs;
pub mod requests;
pub mod tokens;

use std::{os::unix::fs::DirBuilderExt as _, path::Path};

use redb::{
    Database, Key, Range, ReadOnlyDatabase, ReadTransaction, ReadableDatabase as _, ReadableTable,
    TableDefinition, Value, WriteTransaction,
};
use thiserror::Error;

use crate::ipam::{self, IpamError, Pool};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database {path}")]
    Open {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("creating {path}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("database: {0}")]
    Storage(#[from] redb::Error),
    #[error("the database is open read-only")]
    ReadOnly,
    /// A transition the record's stage does not allow (a bug, or a record
    /// changed by another writer).
    #[error("{0}")]
    Conflict(String),
    #[error("database record {table}/{key} is corrupt: {reason}")]
    Corrupt {
        table: &'static str,
        key: String,
        reason: String,
    },
}

macro_rules! storage_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Storage(e.into())
            }
        }
    )*};
}
storage_errors!(
    redb::TableError,
    redb::StorageError,
    redb::TransactionError,
    redb::CommitError
);

/// Seconds since the Unix epoch: how times are stored.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub struct Store {
    db: Db,
    pool: Pool,
    /// Allocations at most, whatever the pool's size: what the WireGuard
    /// implementation holds (see [`Store::limit_allocations`]).
    max_allocations: u64,
}

enum Db {
    ReadWrite(Database),
    /// Beside no writer (redb locks the file while the daemon has it): for
    /// the operator's commands when no daemon runs.
    ReadOnly(ReadOnlyDatabase),
}

/// redb's page cache (its default is 1 GiB): bounded, so that the daemon's
/// memory does not grow with the database. The hot pages (the allocation
/// tables, the unfinished requests) fit many times over.
const CACHE_BYTES: usize = 1024 * 1024;

impl Store {
    /// Opens (or creates, with a 0700 parent directory) the database for
    /// `pool`; refuses a database made for another pool.
    pub fn open(path: &Path, pool: Pool) -> Result<Store, StoreError> {
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StoreError::CreateDir {
                    path: dir.display().to_string(),
                    source,
                })?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })?;
        let store = Store {
            db: Db::ReadWrite(db),
            pool,
            max_allocations: u64::MAX,
        };
        // Every table exists from here on: read transactions, which cannot
        // create one, can open them all.
        store.transition(|txn| {
            ipam::init(txn, &pool)?;
            allocations::create_tables(txn)?;
            requests::create_tables(txn)?;
            cursors::create_tables(txn)?;
            audit::create_tables(txn)?;
            chain_releases::create_tables(txn)?;
            expiries::create_tables(txn)?;
            tokens::create_tables(txn)?;
            reorgs::create_tables(txn)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Opens an existing database for reading only: its read methods work,
    /// every change fails with [`StoreError::ReadOnly`]. Fails while
    /// another process (the daemon) has the file open, and after an unclean
    /// shutdown (the daemon's next start repairs the file).
    pub fn open_read_only(path: &Path, pool: Pool) -> Result<Store, StoreError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .open_read_only(path)
            .map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Store {
            db: Db::ReadOnly(db),
            pool,
            max_allocations: u64::MAX,
        })
    }

    pub fn pool(&self) -> Pool {
        self.pool
    }

    /// No new allocation once there are `max` (a request then waits as for
    /// a full pool): wireguard-go holds 65,536 peers at most, however large
    /// the pool.
    pub fn limit_allocations(mut self, max: u64) -> Store {
        self.max_allocations = max;
        self
    }

    /// Removes finished requests' records and audit entries from before
    /// `cutoff` (seconds since the epoch), in one transaction.
    ///
    /// What else anyone on chain can make the database hold is bounded
    /// already: allocations (and the releases owed for them) by the pool
    /// and the advertised capacity, unfinished requests by the on-chain
    /// expiry that finishes them, cursors by the configured contracts;
    /// tokens are the operator's. Requests' records and audit entries grow
    /// with every request anyone submits, hence this.
    pub fn prune(&self, cutoff: u64) -> Result<Pruned, StoreError> {
        self.transition(|txn| {
            Ok(Pruned {
                requests: requests::prune(txn, cutoff)?,
                audit: audit::prune(txn, cutoff)?,
            })
        })
    }

    /// Runs `change` in one write transaction and commits it; an error
    /// drops the transaction, which aborts it: nothing of it is stored.
    fn transition<T>(
        &self,
        change: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Db::ReadWrite(db) = &self.db else {
            return Err(StoreError::ReadOnly);
        };
        let txn = db.begin_write()?;
        let out = change(&txn)?;
        txn.commit()?;
        Ok(out)
    }

    /// Runs `read` in one read transaction: a consistent snapshot.
    fn read<T>(
        &self,
        read: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = match &self.db {
            Db::ReadWrite(db) => db.begin_read()?,
            Db::ReadOnly(db) => db.begin_read()?,
        };
        read(&txn)
    }
}

/// What [`Store::prune`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub requests: u64,
    pub audit: u64,
}

/// Either kind of transaction, to read from: the entity files' lookups serve
/// both the read methods and the transitions that read before they write.
pub(crate) trait Reads {
    fn table<K: Key + 'static, V: Value + 'static>(
        &self,
        table: TableDefinition<K, V>,
    ) -> Result<impl ReadableTable<K, V>, StoreError>;
}

macro_rules! reads {
    ($($t:ty),*) => {$(
        impl Reads for $t {
            fn table<K: Key + 'static, V: Value + 'static>(
                &self,
                table: TableDefinition<K, V>,
            ) -> Result<impl ReadableTable<K, V>, StoreError> {
                Ok(self.open_table(table)?)
            }
        }
    )*};
}
reads!(ReadTransaction, WriteTransaction);

/// The entries of a table (or of a range of it), each made into a `T`.
fn collect<K: Key + 'static, V: Value + 'static, T>(
    entries: Range<'_, K, V>,
    mut make: impl FnMut(K::SelfType<'_>, V::SelfType<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    entries
        .map(|entry| {
            let (k, v) = entry?;
            make(k.value(), v.value())
        })
        .collect()
}

/// Records are stored as JSON: readable with any redb tool when debugging a
/// broker, and tolerant of fields added later.
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    table: &'static str,
    key: impl std::fmt::Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table,
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// Slots are u128, which JSON numbers cannot carry: stored as decimal strings.
pub(crate) mod slot_string {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(slot: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&slot.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// Keys (a WireGuard key's 32 bytes, a server's 65-byte public key) are
/// `[u8; N]` in memory and lowercase hex, without `0x`, in records.
pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(d)?;
        let mut bytes = [0u8; N];
        hex::decode_to_slice(&text, &mut bytes).map_err(D::Error::custom)?;
        Ok(bytes)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use alloy::primitives::Address;

    use super::*;

    pub const CONTRACT: Address = Address::repeat_byte(0xc0);

    pub fn nft(n: u8) -> Address {
        Address::repeat_byte(n)
    }

    /// A /124 cut into /126s: four slots, the first being the broker's.
    pub fn pool() -> Pool {
        Pool::new("2001:db8:100::/124".parse().unwrap(), 126).unwrap()
    }

    /// A store in a fresh file under `dir` (a directory it creates).
    pub fn open(dir: &tempfile::TempDir) -> Store {
        Store::open(&dir.path().join("state/broker.redb"), pool()).unwrap()
    }

    /// Finished requests' records and audit entries from before the cutoff
    /// go; unfinished requests, allocations and everything newer stay, in
    /// the file itself (checked after reopening it).
    #[test]
    fn prune_removes_old_finished_records_and_audit_entries_only() {
        use requests::{Verdict, tests::grant};
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        // Old: answered, rejected, skipped, and one waiting for a retry.
        let a = grant(&store, 1, 1, 1).allocation;
        store.answered(CONTRACT, 1, a.slot, None, 120).unwrap();
        let reject = |id| Verdict::Reject(format!("bad {id}"));
        store.decide(CONTRACT, 2, reject(2), true).unwrap();
        let skip = Verdict::Skip("gone".into());
        store.decide(CONTRACT, 3, skip, true).unwrap();
        let unknown = Verdict::Unknown("rpc".into());
        store.decide(CONTRACT, 4, unknown, true).unwrap();
        let old_audit = store.audit_tail(100).unwrap().len();
        assert_eq!(old_audit, 3, "allocated 1, answered 1, rejected 2");
        // Times are whole seconds: the cutoff is the next one.
        let started = now();
        while now() == started {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let cutoff = now();
        // New: a rejection and a grant.
        store.decide(CONTRACT, 5, reject(5), true).unwrap();
        grant(&store, 6, 2, 2);

        let pruned = store.prune(cutoff).unwrap();
        assert_eq!(
            pruned,
            Pruned {
                requests: 3,
                audit: 3
            }
        );
        assert_eq!(store.prune(cutoff).unwrap(), Pruned::default());
        drop(store);

        let store = open(&dir);
        let kept = |id| store.request(CONTRACT, id).unwrap().is_some();
        assert_eq!(
            (1..=6).map(kept).collect::<Vec<_>>(),
            [false, false, false, true, true, true]
        );
        let ids: Vec<u64> = store.unfinished().unwrap().iter().map(|r| r.id).collect();
        assert_eq!(ids, [4, 6]);
        // The allocation of a pruned request is the NFT's still.
        let held: Vec<u64> = store
            .allocations()
            .unwrap()
            .iter()
            .map(|a| a.request_id)
            .collect();
        assert_eq!(held, [1, 6]);
        // The log keeps its order and its newest entries, counted from its
        // end (its first key is no longer 0).
        let tail = store.audit_tail(100).unwrap();
        assert_eq!(tail.len(), 2, "{tail:?}");
        assert!(tail.iter().all(|e| e.at >= cutoff), "{tail:?}");
        let last = store.audit_tail(1).unwrap();
        assert_eq!(last.len(), 1, "{last:?}");
        assert_eq!(last[0], tail[1]);
        assert!(
            matches!(&tail[0].event, audit::Event::Rejected { request_id: 5, .. }),
            "{tail:?}"
        );
    }

    #[test]
    fn refuses_a_database_of_another_pool() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(&dir));
        let other = Pool::new("2001:db8:100::/124".parse().unwrap(), 125).unwrap();
        let e = Store::open(&dir.path().join("state/broker.redb"), other)
            .err()
            .unwrap();
        assert!(e.to_string().contains("the pool cannot change"), "{e}");
    }

    #[test]
    fn a_failed_transition_leaves_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(&dir);
            let e = store
                .transition(|t| {
                    allocations::allocate(t, &store.pool, u64::MAX, CONTRACT, 1, nft(1), [1; 32])?;
                    requests::set(
                        t,
                        CONTRACT,
                        1,
                        requests::Stage::Skipped { reason: "".into() },
                    )?;
                    // Anything failing after the writes: a crash before the
                    // commit leaves the same.
                    Err::<(), _>(StoreError::Corrupt {
                        table: "test",
                        key: "1".into(),
                        reason: "failing on purpose".into(),
                    })
                })
                .unwrap_err();
            assert!(e.to_string().contains("failing on purpose"));
        }
        let store = open(&dir);
        assert_eq!(store.request(CONTRACT, 1).unwrap(), None);
        assert_eq!(store.allocation_of_nft(nft(1)).unwrap(), None);
        assert_eq!(store.audit_tail(10).unwrap(), []);
        // The slot went back: all three are free.
        for n in 1..=3 {
            requests::tests::grant(&store, n.into(), n, n);
        }
    }

    #[test]
    fn a_read_only_store_reads_and_refuses_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/broker.redb");
        let a = {
            let store = open(&dir);
            let a = requests::tests::grant(&store, 1, 1, 1).allocation;
            // Not beside a writer: redb locks the file.
            let e = Store::open_read_only(&path, pool()).err().unwrap();
            assert!(e.to_string().contains("database"), "{e}");
            a
        };
        let store = Store::open_read_only(&path, pool()).unwrap();
        assert_eq!(store.allocations().unwrap(), std::slice::from_ref(&a));
        let e = store.release(a.slot, "test", false).unwrap_err();
        assert!(matches!(e, StoreError::ReadOnly), "{e}");
        assert_eq!(store.allocations().unwrap(), [a]);
        let missing = Store::open_read_only(&dir.path().join("none.redb"), pool());
        assert!(missing.is_err());
    }

    #[test]
    fn keys_are_stored_as_hex() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Keys {
            #[serde(with = "hex_bytes")]
            wg: [u8; 32],
            #[serde(with = "hex_bytes")]
            server: [u8; 65],
        }
        let keys = Keys {
            wg: [0xab; 32],
            server: [0x04; 65],
        };
        let json = String::from_utf8(encode(&keys)).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"wg":"{}","server":"{}"}}"#,
                "ab".repeat(32),
                "04".repeat(65)
            )
        );
        assert_eq!(decode::<Keys>("test", 0, json.as_bytes()).unwrap(), keys);
        let short = format!(r#"{{"wg":"{}","server":"04"}}"#, "ab".repeat(32));
        let e = decode::<Keys>("test", 0, short.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("test/0 is corrupt"), "{e}");
    }
}
