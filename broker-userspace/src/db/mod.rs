//! The broker's state in one redb file: the source of truth that the kernel
//! (WireGuard peers, routes, NDP map) is made to match at every start.
//!
//! One file per stored entity. Every change the daemon makes to its state is
//! one write transaction: a request's decision, the slot it takes and the
//! audit entry commit together or not at all, and they commit *before* the
//! kernel or the chain is touched, so a crash at any point leaves state the
//! next start can finish or undo.

pub mod allocations;
pub mod audit;
pub mod chain_releases;
pub mod cursors;
pub mod requests;

use std::{os::unix::fs::DirBuilderExt as _, path::Path};

use redb::{Database, ReadTransaction, ReadableDatabase as _, WriteTransaction};
use thiserror::Error;

use crate::ipam::{self, IpamError, Pool};

#[derive(Debug, Error)]
pub enum DbError {
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
    #[error("database record {table}/{key} is corrupt: {reason}")]
    Corrupt {
        table: &'static str,
        key: String,
        reason: String,
    },
}

macro_rules! storage_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for DbError {
            fn from(e: $t) -> Self {
                DbError::Storage(e.into())
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

pub struct Db {
    db: Database,
    pool: Pool,
}

impl Db {
    /// Opens (or creates, with a 0700 parent directory) the database for
    /// `pool`; refuses a database made for another pool.
    pub fn open(path: &Path, pool: Pool) -> Result<Db, DbError> {
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| DbError::CreateDir {
                    path: dir.display().to_string(),
                    source,
                })?;
        }
        let db = Database::create(path).map_err(|source| DbError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let txn = db.begin_write()?;
        ipam::init(&txn, &pool)?;
        allocations::create_tables(&txn)?;
        requests::create_tables(&txn)?;
        cursors::create_tables(&txn)?;
        audit::create_tables(&txn)?;
        chain_releases::create_tables(&txn)?;
        txn.commit()?;
        Ok(Db { db, pool })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn write(&self) -> Result<WriteTransaction, DbError> {
        Ok(self.db.begin_write()?)
    }

    pub fn read(&self) -> Result<ReadTransaction, DbError> {
        Ok(self.db.begin_read()?)
    }
}

/// Records are stored as JSON: readable with any redb tool when debugging a
/// broker, and tolerant of fields added later.
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
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

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    table: &'static str,
    key: impl std::fmt::Display,
    bytes: &[u8],
) -> Result<T, DbError> {
    serde_json::from_slice(bytes).map_err(|e| DbError::Corrupt {
        table,
        key: key.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use alloy::primitives::Address;

    use super::{
        allocations::{self, Decision},
        audit::{self, Event},
        requests::{self, Stage},
        *,
    };

    const CONTRACT: Address = Address::repeat_byte(0xc0);

    fn nft(n: u8) -> Address {
        Address::repeat_byte(n)
    }

    fn allocated(slot: u128) -> Stage {
        Stage::Allocated {
            slot,
            server_pubkey: "04ab".into(),
        }
    }

    fn open(dir: &tempfile::TempDir) -> Db {
        let pool = Pool::new("2001:db8:100::/124".parse().unwrap(), 126).unwrap();
        Db::open(&dir.path().join("state/broker.redb"), pool).unwrap()
    }

    #[test]
    fn allocates_rotates_refuses_and_releases() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let pool = *db.pool();
        let t = db.write().unwrap();
        let Decision::New(a) =
            allocations::allocate(&t, &pool, CONTRACT, 1, nft(1), [1; 32]).unwrap()
        else {
            panic!("a new allocation")
        };
        assert_eq!(
            a.prefix.to_string(),
            "2001:db8:100::4/126",
            "slot 0 is the broker's"
        );
        // The same NFT again, new key: same prefix.
        let d = allocations::allocate(&t, &pool, CONTRACT, 2, nft(1), [2; 32]).unwrap();
        let Decision::Rotated {
            allocation,
            old_wg_key,
        } = d
        else {
            panic!("{d:?}")
        };
        assert_eq!(
            (allocation.prefix, allocation.request_id, old_wg_key),
            (a.prefix, 2, [1; 32])
        );
        // Keys belong to one allocation only.
        assert_eq!(
            allocations::allocate(&t, &pool, CONTRACT, 3, nft(2), [2; 32]).unwrap(),
            Decision::KeyInUse
        );
        let Decision::New(b) =
            allocations::allocate(&t, &pool, CONTRACT, 4, nft(2), [1; 32]).unwrap()
        else {
            panic!("the first key is free again after the rotation")
        };
        assert_eq!(
            allocations::allocate(&t, &pool, CONTRACT, 5, nft(1), [1; 32]).unwrap(),
            Decision::KeyInUse
        );
        let Decision::New(_) =
            allocations::allocate(&t, &pool, CONTRACT, 6, nft(3), [3; 32]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            allocations::allocate(&t, &pool, CONTRACT, 7, nft(4), [4; 32]).unwrap(),
            Decision::PoolFull,
            "a /124 holds four /126s, the first being the broker's"
        );
        let released = allocations::release(&t, &pool, b.slot, "test")
            .unwrap()
            .unwrap();
        assert_eq!(released.nft, nft(2));
        assert_eq!(allocations::by_nft(&t, nft(2)).unwrap(), None);
        assert!(
            allocations::release(&t, &pool, b.slot, "again")
                .unwrap()
                .is_none()
        );
        let Decision::New(c) =
            allocations::allocate(&t, &pool, CONTRACT, 8, nft(4), [1; 32]).unwrap()
        else {
            panic!("the released key and slot are reusable")
        };
        assert_eq!(c.slot, b.slot);
        t.commit().unwrap();

        let r = db.read().unwrap();
        let kinds: Vec<&str> = audit::tail(&r, 100)
            .unwrap()
            .iter()
            .map(|e| match e.event {
                Event::Allocated { .. } => "allocated",
                Event::Rotated { .. } => "rotated",
                Event::Released { .. } => "released",
                _ => "other",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "allocated",
                "rotated",
                "allocated",
                "allocated",
                "released",
                "allocated"
            ]
        );
        assert_eq!(allocations::all(&r).unwrap().len(), 3);
    }

    #[test]
    fn an_uncommitted_decision_leaves_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open(&dir);
            let pool = *db.pool();
            let t = db.write().unwrap();
            allocations::allocate(&t, &pool, CONTRACT, 1, nft(1), [1; 32]).unwrap();
            requests::set(&t, CONTRACT, 1, allocated(1)).unwrap();
            // Dropped without commit: a crash before the commit.
            drop(t);
        }
        let db = open(&dir);
        let t = db.write().unwrap();
        assert_eq!(requests::get(&t, CONTRACT, 1).unwrap(), None);
        assert_eq!(allocations::by_nft(&t, nft(1)).unwrap(), None);
        assert_eq!(ipam::free_slots(&t).unwrap(), 3, "the slot went back");
    }

    #[test]
    fn unfinished_requests_are_found_without_scanning_history() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir);
        let t = db.write().unwrap();
        for id in 1..=50 {
            requests::set(
                &t,
                CONTRACT,
                id,
                Stage::Skipped {
                    reason: "expired".into(),
                },
            )
            .unwrap();
        }
        requests::set(&t, CONTRACT, 51, allocated(1)).unwrap();
        let retry = Stage::Retry {
            attempts: 1,
            next_at: 0,
            last_error: "rpc".into(),
        };
        requests::set(&t, CONTRACT, 52, retry).unwrap();
        let ids: Vec<u64> = requests::unfinished(&t)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, [51, 52]);
        let answered = Stage::Answered {
            slot: 1,
            transaction: "0xab".into(),
        };
        requests::set(&t, CONTRACT, 51, answered.clone()).unwrap();
        let ids: Vec<u64> = requests::unfinished(&t)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, [52]);
        assert_eq!(
            requests::get(&t, CONTRACT, 51).unwrap().unwrap().stage,
            answered
        );
        t.commit().unwrap();
    }

    #[test]
    fn cursors_start_where_configured_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open(&dir);
            let t = db.write().unwrap();
            assert_eq!(cursors::next_request(&t, CONTRACT, 1000).unwrap(), 1000);
            cursors::set_next_request(&t, CONTRACT, 1007).unwrap();
            t.commit().unwrap();
        }
        let db = open(&dir);
        let t = db.write().unwrap();
        assert_eq!(cursors::next_request(&t, CONTRACT, 1000).unwrap(), 1007);
        assert_eq!(cursors::next_event_block(&t, CONTRACT, 5).unwrap(), 5);
    }

    #[test]
    fn refuses_a_database_of_another_pool() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(&dir));
        let other = Pool::new("2001:db8:100::/124".parse().unwrap(), 125).unwrap();
        let e = Db::open(&dir.path().join("state/broker.redb"), other)
            .err()
            .unwrap();
        assert!(e.to_string().contains("the pool cannot change"), "{e}");
    }
}
