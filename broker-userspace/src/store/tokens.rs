//! The HTTP API's bearer tokens (`crate::api::auth`): each by its name, with
//! the SHA-256 of its secret (the secret itself is shown once, at creation,
//! and never stored).

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{Reads, Store, StoreError, collect, decode, encode};

/// name → [`Token`] (JSON).
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_tokens");

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub name: String,
    /// SHA-256 of the secret.
    #[serde(with = "super::hex_bytes")]
    pub hash: [u8; 32],
    /// May read, not release.
    pub read_only: bool,
    /// Seconds since the epoch.
    pub created_at: u64,
}

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(TOKENS)?;
    Ok(())
}

impl Store {
    /// Stores `token`: false (and nothing stored) when its name is taken.
    pub fn create_token(&self, token: &Token) -> Result<bool, StoreError> {
        self.transition(|txn| {
            let mut table = txn.open_table(TOKENS)?;
            if table.get(token.name.as_str())?.is_some() {
                return Ok(false);
            }
            table.insert(token.name.as_str(), encode(token).as_slice())?;
            Ok(true)
        })
    }

    /// Every token, by name.
    pub fn tokens(&self) -> Result<Vec<Token>, StoreError> {
        self.read(|txn| {
            let table = txn.table(TOKENS)?;
            collect(table.iter()?, |name, bytes| {
                decode("api_tokens", name, bytes)
            })
        })
    }

    /// Removes the token `name`: false when there is none.
    pub fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        self.transition(|txn| Ok(txn.open_table(TOKENS)?.remove(name)?.is_some()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::open;

    fn token(name: &str, byte: u8) -> Token {
        Token {
            name: name.into(),
            hash: [byte; 32],
            read_only: byte % 2 == 1,
            created_at: 100,
        }
    }

    #[test]
    fn tokens_are_created_once_by_name_listed_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        assert_eq!(store.tokens().unwrap(), []);
        assert!(store.create_token(&token("b", 1)).unwrap());
        assert!(store.create_token(&token("a", 2)).unwrap());
        // A taken name keeps its token.
        assert!(!store.create_token(&token("a", 3)).unwrap());
        assert_eq!(store.tokens().unwrap(), [token("a", 2), token("b", 1)]);
        assert!(store.revoke_token("a").unwrap());
        assert!(!store.revoke_token("a").unwrap());
        assert_eq!(store.tokens().unwrap(), [token("b", 1)]);
    }

    #[test]
    fn tokens_survive_a_reopening_and_read_only_stores_list_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store.create_token(&token("ops", 4)).unwrap();
        drop(store);
        let path = dir.path().join("state/broker.redb");
        let read_only = Store::open_read_only(&path, crate::store::tests::pool()).unwrap();
        assert_eq!(read_only.tokens().unwrap(), [token("ops", 4)]);
        assert!(matches!(
            read_only.revoke_token("ops"),
            Err(StoreError::ReadOnly)
        ));
    }
}
