//! Releasing an allocation by its prefix: which prefixes can name one, and
//! what the release did.
//!
//! The daemon releases the way it releases a tunnel that never came up: the
//! database first (the on-chain release recorded as owed in the same
//! transaction), then the peer, route and NDP entry, then the owed
//! `releaseAllocation`, which a crash anywhere after the commit leaves owed
//! and the next start sends: exactly once.

use alloy::primitives::{Address, TxHash};
use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ipam::Pool;

/// A prefix that cannot be one of the pool's allocations.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PrefixError {
    #[error("{prefix} has host bits set (did you mean {}?)", prefix.trunc())]
    HostBits { prefix: Ipv6Net },
    #[error("{prefix} is not a /{size}, the allocation size")]
    WrongSize { prefix: Ipv6Net, size: u8 },
    #[error("{prefix} is not in the pool {pool}")]
    OutOfPool { prefix: Ipv6Net, pool: Ipv6Net },
    #[error("{prefix} is the broker's own prefix, never allocated")]
    Broker { prefix: Ipv6Net },
}

/// The slot of `prefix`, or why no allocation can have it.
pub fn slot_of(pool: &Pool, prefix: Ipv6Net) -> Result<u128, PrefixError> {
    if prefix.trunc() != prefix {
        return Err(PrefixError::HostBits { prefix });
    }
    if prefix.prefix_len() != pool.allocation_size() {
        return Err(PrefixError::WrongSize {
            prefix,
            size: pool.allocation_size(),
        });
    }
    match pool.slot(&prefix) {
        None => Err(PrefixError::OutOfPool {
            prefix,
            pool: pool.upstream(),
        }),
        Some(0) => Err(PrefixError::Broker { prefix }),
        Some(slot) => Ok(slot),
    }
}

/// What happened on chain after a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum OnChainRelease {
    /// `releaseAllocation` was mined.
    Sent { transaction: TxHash },
    /// Nothing to send: an allocation of a legacy contract.
    NotOwed,
    /// An earlier run's release was mined already.
    AlreadyReleased,
    /// The NFT has a newer request, which decides its prefix.
    Superseded { current_request: u64 },
    /// The contract refused it (nothing left to release there).
    Refused { reason: String },
    /// Not sent yet (the chain failed): the daemon retries every poll.
    Deferred { reason: String },
}

impl std::fmt::Display for OnChainRelease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OnChainRelease::Sent { transaction } => {
                write!(f, "releaseAllocation sent in {transaction}")
            }
            OnChainRelease::NotOwed => f.write_str("nothing to release (a legacy contract)"),
            OnChainRelease::AlreadyReleased => f.write_str("already released on chain"),
            OnChainRelease::Superseded { current_request } => write!(
                f,
                "not released: the NFT's newer request {current_request} decides"
            ),
            OnChainRelease::Refused { reason } => write!(f, "refused by the contract: {reason}"),
            OnChainRelease::Deferred { reason } => {
                write!(f, "not sent yet, retried every poll: {reason}")
            }
        }
    }
}

/// What a release did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub prefix: Ipv6Net,
    pub nft_contract: Address,
    pub contract: Address,
    pub request_id: u64,
    /// What was in the kernel and is gone.
    pub peer_removed: bool,
    pub route_removed: bool,
    pub ndp_entry_removed: bool,
    pub on_chain: OnChainRelease,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pools_allocation_prefixes_have_a_slot() {
        let pool = Pool::new("2001:db8:100::/64".parse().unwrap(), 120).unwrap();
        let slot = |p: &str| slot_of(&pool, p.parse().unwrap());
        assert_eq!(slot("2001:db8:100::200/120"), Ok(2));
        let e = slot("2001:db8:100::201/120").unwrap_err();
        assert_eq!(
            e.to_string(),
            "2001:db8:100::201/120 has host bits set (did you mean 2001:db8:100::200/120?)"
        );
        let e = slot("2001:db8:100::/112").unwrap_err();
        assert_eq!(
            e.to_string(),
            "2001:db8:100::/112 is not a /120, the allocation size"
        );
        let e = slot("2001:db8:200::100/120").unwrap_err();
        assert_eq!(
            e.to_string(),
            "2001:db8:200::100/120 is not in the pool 2001:db8:100::/64"
        );
        assert!(matches!(
            slot("2001:db8:100::/120"),
            Err(PrefixError::Broker { .. })
        ));
    }
}
