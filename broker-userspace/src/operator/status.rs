//! The status snapshot: the pool, the requests of each watched contract, the
//! chain, the operator wallet, the NDP responder, the WireGuard peers.
//!
//! The database parts come from the store (one read transaction each); the
//! rest only a running daemon knows, and is None without it.

use alloy::primitives::{Address, U256};
use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};

use super::allocation::{AllocationView, PeerState};
use crate::{
    chain::BlockRef,
    config::Config,
    ndp,
    store::{Store, StoreError, requests::RequestCounts},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The broker's version.
    pub version: String,
    /// When the figures were taken (seconds since the epoch).
    pub taken_at: u64,
    /// True when a running daemon gave them; false when read from the
    /// database alone (then `chain`, `wallet` and `peers` are None).
    pub daemon: bool,
    pub pool: PoolStatus,
    /// The primary requests contract first, then the legacy ones.
    pub contracts: Vec<ContractStatus>,
    /// On-chain releases recorded but not sent yet.
    pub owed_releases: usize,
    /// The daemon's last poll.
    pub last_poll: Option<LastPoll>,
    pub chain: Option<ChainStatus>,
    pub wallet: Option<WalletStatus>,
    /// None when no responder is pinned (or its pins cannot be read).
    pub ndp: Option<NdpStatus>,
    pub peers: Option<PeerCounts>,
    /// What the daemon counted since it started (None without it).
    #[serde(default)]
    pub counters: Option<DaemonCounters>,
}

/// The daemon's own counts since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonCounters {
    /// Polls that failed, by the kind of chain error (`transient`,
    /// `reverted`, `bad_data`, `config`, `wrong_chain`; `other` when the
    /// chain was not the cause).
    pub poll_errors: std::collections::BTreeMap<String, u64>,
    /// When a poll last succeeded (seconds since the epoch).
    pub last_poll_success_at: Option<u64>,
    /// Wei paid in gas for the transactions mined.
    pub gas_spent_wei: u128,
    /// Reorgs noticed (a block read at, or the head after a poll, no
    /// longer on the chain).
    #[serde(default)]
    pub reorgs: u64,
    /// Allocations released because a reorg dropped or changed the request
    /// they answered.
    #[serde(default)]
    pub reorg_releases: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub upstream_prefix: Ipv6Net,
    pub allocation_size: u8,
    /// Allocations the pool holds (its first prefix is the broker's own).
    pub total: u128,
    pub used: u128,
    pub free: u128,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContractRole {
    Primary,
    Legacy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractStatus {
    pub address: Address,
    pub role: ContractRole,
    pub requests: RequestCounts,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainStatus {
    /// The latest block.
    pub head: u64,
    pub head_timestamp: u64,
    /// The confirmed block the daemon read at in its last poll.
    pub confirmed: u64,
    pub confirmed_timestamp: u64,
    /// `head - confirmed`, in blocks and in block time.
    pub lag_blocks: u64,
    pub lag_seconds: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastPoll {
    /// When it ended (seconds since the epoch).
    pub finished_at: u64,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

impl ChainStatus {
    pub fn new(head: &BlockRef, confirmed: &BlockRef) -> Self {
        ChainStatus {
            head: head.number,
            head_timestamp: head.timestamp,
            confirmed: confirmed.number,
            confirmed_timestamp: confirmed.timestamp,
            lag_blocks: head.number.saturating_sub(confirmed.number),
            lag_seconds: head.timestamp.saturating_sub(confirmed.timestamp),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletStatus {
    pub address: Address,
    pub balance_wei: U256,
    /// `[onchain] low_balance_eth`, in wei.
    pub low_balance_wei: U256,
    /// The balance is below the threshold: fund the wallet.
    pub low: bool,
}

impl WalletStatus {
    pub fn new(address: Address, balance_wei: U256, low_balance_wei: U256) -> Self {
        WalletStatus {
            address,
            balance_wei,
            low_balance_wei,
            low: balance_wei < low_balance_wei,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NdpStatus {
    /// None when the interface is gone.
    pub interface: Option<String>,
    pub mode: Option<String>,
    /// How the program is held: "XDP link", "TCX link", "netlink clsact
    /// filter" (kernels before 6.6) or "netlink"; None when not attached.
    #[serde(default)]
    pub attachment: Option<String>,
    pub attached: bool,
    /// Prefixes in the responder's map.
    pub prefixes: usize,
    pub counters: NdpCounters,
}

/// The responder's counters, summed over the CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NdpCounters {
    pub seen: u64,
    pub answered: u64,
    pub not_ours: u64,
    pub invalid: u64,
    pub failed: u64,
}

impl NdpStatus {
    /// Read from the responder's pins; None when nothing is pinned there or
    /// the pins cannot be read (not root).
    pub fn read(pins: &ndp::PinDir) -> Option<NdpStatus> {
        let s = ndp::status(pins).ok()??;
        let c = s.counters;
        Some(NdpStatus {
            interface: s.interface,
            mode: s.mode.map(|m| m.to_string()),
            attachment: s
                .mode
                .zip(s.attachment)
                .map(|(m, a)| a.describe(m).to_string()),
            attached: s.attached,
            prefixes: s.prefixes,
            counters: NdpCounters {
                seen: c.seen,
                answered: c.answered,
                not_ours: c.not_ours,
                invalid: c.invalid,
                failed: c.failed,
            },
        })
    }
}

/// WireGuard peers by state (see [`PeerState`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCounts {
    pub active: usize,
    pub idle: usize,
    pub never: usize,
}

impl PeerCounts {
    /// None when the views carry no peer state (no daemon).
    pub fn of(views: &[AllocationView]) -> Option<PeerCounts> {
        let mut counts = PeerCounts::default();
        for v in views {
            *match v.state? {
                PeerState::Active => &mut counts.active,
                PeerState::Idle => &mut counts.idle,
                PeerState::Never => &mut counts.never,
            } += 1;
        }
        Some(counts)
    }
}

impl Status {
    /// What the database (and the NDP pins) say, for `used` allocations:
    /// the daemon adds the rest.
    pub fn from_store(
        config: &Config,
        store: &Store,
        used: usize,
        now: u64,
    ) -> Result<Status, StoreError> {
        let pool = config.broker.pool;
        // Slot 0 is the broker's own.
        let total = pool.slots() - 1;
        let used = used as u128;
        let mut contracts = vec![(config.onchain.requests_contract, ContractRole::Primary)];
        contracts.extend(
            config
                .onchain
                .legacy_requests_contracts
                .iter()
                .map(|&a| (a, ContractRole::Legacy)),
        );
        let contracts = contracts
            .into_iter()
            .map(|(address, role)| {
                Ok(ContractStatus {
                    address,
                    role,
                    requests: store.request_counts(address)?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            taken_at: now,
            daemon: false,
            pool: PoolStatus {
                upstream_prefix: pool.upstream(),
                allocation_size: pool.allocation_size(),
                total,
                used,
                free: total.saturating_sub(used),
            },
            contracts,
            owed_releases: store.owed_releases()?.len(),
            last_poll: None,
            chain: None,
            wallet: None,
            ndp: NdpStatus::read(&ndp::PinDir::new(&config.broker.ndp_pin_dir)),
            peers: None,
            counters: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wallet_below_the_threshold_is_low() {
        let a = Address::ZERO;
        let w = |b: u64| WalletStatus::new(a, U256::from(b), U256::from(100));
        assert!(w(99).low);
        assert!(!w(100).low);
        assert!(!w(101).low);
    }

    #[test]
    fn the_lag_is_head_minus_confirmed() {
        let block = |number, timestamp| BlockRef {
            number,
            hash: Default::default(),
            timestamp,
        };
        let c = ChainStatus::new(&block(110, 1_220), &block(100, 1_100));
        assert_eq!((c.lag_blocks, c.lag_seconds), (10, 120));
    }
}
