//! The operator's wallet: the key file the broker answers requests from,
//! made or read here, and its balance on chain. `blockhost-broker wallet`
//! and the setup wizard use it.

use std::{io, path::Path};

use alloy::{
    primitives::{Address, U256},
    providers::Provider as _,
    signers::local::PrivateKeySigner,
};
use broker_contracts::{
    chain::{ChainError, ChainOptions, Connection},
    keys::{self, KeyError},
};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum WalletError {
    /// `holder`: the address of the key already there, when it is one.
    #[error("{} exists{}", path.display(), holder.map(|a| format!(" (the key of {a})")).unwrap_or_default())]
    Exists {
        path: std::path::PathBuf,
        holder: Option<Address>,
    },
    #[error("writing {}", path.display())]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// A key written by [`generate`].
#[derive(Clone, Copy, Debug)]
pub struct Generated {
    pub address: Address,
    /// The address of the key it replaced, if it replaced one.
    pub replaced: Option<Address>,
}

/// Writes a new secp256k1 key to `path` (64 hex digits, mode 0600, written
/// atomically). An existing file is replaced only when `replace`: whatever
/// its address holds is lost with it.
pub fn generate(path: &Path, replace: bool) -> Result<Generated, WalletError> {
    let holder = || keys::read_signer(path).ok().map(|s| s.address());
    let signer = PrivateKeySigner::random();
    let secret = signer.to_bytes().0;
    let replaced = if replace && path.exists() {
        holder()
    } else {
        None
    };
    let written = if replace {
        keys::write_secret(path, &secret)
    } else {
        keys::create_secret(path, &secret)
    };
    match written {
        Ok(()) => Ok(Generated {
            address: signer.address(),
            replaced,
        }),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(WalletError::Exists {
            path: path.to_path_buf(),
            holder: holder(),
        }),
        Err(source) => Err(WalletError::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The address of the key in `path`, a file only its owner may read.
pub fn address(path: &Path) -> Result<Address, WalletError> {
    Ok(keys::read_private_signer(path)?.address())
}

/// A balance as read from the chain.
#[derive(Clone, Debug)]
pub struct Balance {
    pub wei: U256,
    /// The endpoint it was read from, as errors show it (scheme, host and
    /// port: a hosted endpoint's path carries its API key).
    pub endpoint: String,
}

/// The balance of `address` on `rpc_url`, which must serve `chain_id`
/// (a balance on another network would mislead).
pub async fn balance(
    rpc_url: &str,
    chain_id: u64,
    address: Address,
) -> Result<Balance, ChainError> {
    let chain = Connection::connect(rpc_url, chain_id, None, ChainOptions::default()).await?;
    let wei = chain
        .rpc(
            &format!("eth_getBalance({address})"),
            chain.provider().get_balance(address),
        )
        .await?;
    Ok(Balance {
        wei,
        endpoint: chain.endpoint().shown().to_string(),
    })
}
