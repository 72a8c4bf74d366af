//! The allocations as the operator sees them: the database's record with
//! the state of its WireGuard peer.
//!
//! A peer is *active* when its last handshake is at most [`ACTIVE_WITHIN`]
//! old (WireGuard renews a session every two minutes while traffic flows),
//! *idle* when it is older, *never* when it has none (the peer never
//! connected, or was just set up).

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::UNIX_EPOCH};

use alloy::primitives::Address;
use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{
    config::Config,
    ipam::Pool,
    store::{Store, StoreError, allocations::Allocation, now},
    tunnel::{Peer, PeerReader},
};

/// A handshake at most this old (in seconds) makes a peer active.
pub const ACTIVE_WITHIN: u64 = 180;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// A handshake within [`ACTIVE_WITHIN`] seconds.
    Active,
    /// A handshake, longer ago.
    Idle,
    /// No handshake ever.
    Never,
}

impl PeerState {
    /// The state of a peer whose last handshake was at `last_handshake`
    /// (seconds since the epoch), seen at `now`.
    pub fn of(last_handshake: Option<u64>, now: u64) -> PeerState {
        match last_handshake {
            None => PeerState::Never,
            Some(at) if now.saturating_sub(at) <= ACTIVE_WITHIN => PeerState::Active,
            Some(_) => PeerState::Idle,
        }
    }
}

impl std::fmt::Display for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PeerState::Active => "active",
            PeerState::Idle => "idle",
            PeerState::Never => "never",
        })
    }
}

/// One allocation for the operator. Times are seconds since the epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationView {
    pub prefix: Ipv6Net,
    pub nft_contract: Address,
    /// The request (of `contract`) that last (re)configured it.
    pub request_id: u64,
    pub contract: Address,
    /// Base64, as `wg` shows it.
    pub wireguard_key: String,
    pub allocated_at: u64,
    pub answered_at: Option<u64>,
    /// None also when the peer state is unknown (`state` None).
    pub last_handshake: Option<u64>,
    /// The client's WireGuard endpoint: where its packets last came from.
    /// None before it sent any, and when the peer state is unknown.
    #[serde(default)]
    pub endpoint: Option<SocketAddr>,
    /// None when read without the daemon (the kernel was not asked).
    pub state: Option<PeerState>,
}

/// The allocations as the operator sees them, read when asked and not kept:
/// the daemon's memory stays the same whether it holds a thousand
/// allocations or a hundred thousand.
#[derive(Clone)]
pub struct Reader {
    store: Arc<Store>,
    pool: Pool,
    /// None without a daemon: the peers' state is then unknown.
    peers: Option<PeerReader>,
}

impl Reader {
    pub fn new(store: Arc<Store>, pool: Pool, peers: Option<PeerReader>) -> Reader {
        Reader { store, pool, peers }
    }

    /// The database read with no daemon running (see
    /// [`Store::open_read_only`]), without the peers.
    pub fn offline(config: &Config) -> Result<Reader, StoreError> {
        let store = Store::open_read_only(&config.database.path, config.broker.pool)?;
        Ok(Reader::new(Arc::new(store), config.broker.pool, None))
    }

    /// Every allocation, in prefix order.
    pub fn all(&self) -> Result<Vec<AllocationView>, StoreError> {
        let all = self.store.allocations()?;
        Ok(views(&all, self.peers().as_deref(), now()))
    }

    /// The allocation of `prefix`, if it is one.
    pub fn one(&self, prefix: Ipv6Net) -> Result<Option<AllocationView>, StoreError> {
        let Some(slot) = self.pool.slot(&prefix) else {
            return Ok(None);
        };
        let Some(allocation) = self.store.allocation(slot)?.filter(|a| a.prefix == prefix) else {
            return Ok(None);
        };
        let peers = self.peers().map(|p| {
            p.into_iter()
                .filter(|p| p.public_key == allocation.wg_key)
                .collect::<Vec<_>>()
        });
        Ok(views(&[allocation], peers.as_deref(), now()).pop())
    }

    /// The device's peers; None without a daemon, or when the device
    /// cannot be read (logged: the views then say the state is unknown).
    fn peers(&self) -> Option<Vec<Peer>> {
        let reader = self.peers.as_ref()?;
        reader
            .peers()
            .map_err(|e| warn!("allocations: reading the WireGuard peers: {e}"))
            .ok()
    }
}

/// The views of `allocations`, with the handshakes and endpoints of `peers`
/// when known.
pub fn views(allocations: &[Allocation], peers: Option<&[Peer]>, now: u64) -> Vec<AllocationView> {
    let peers: Option<HashMap<[u8; 32], &Peer>> =
        peers.map(|peers| peers.iter().map(|p| (p.public_key, p)).collect());
    allocations
        .iter()
        .map(|a| {
            let peer = peers.as_ref().and_then(|p| p.get(&a.wg_key));
            let last_handshake = peer
                .and_then(|p| p.last_handshake)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            AllocationView {
                prefix: a.prefix,
                nft_contract: a.nft,
                request_id: a.request_id,
                contract: a.contract,
                wireguard_key: wireguard_control::Key(a.wg_key).to_base64(),
                allocated_at: a.created_at,
                answered_at: a.answered_at,
                last_handshake,
                endpoint: peer.and_then(|p| p.endpoint),
                state: peers.as_ref().map(|_| PeerState::of(last_handshake, now)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn a_peer_is_active_idle_or_never_by_its_last_handshake() {
        let now = 10_000;
        assert_eq!(PeerState::of(None, now), PeerState::Never);
        assert_eq!(PeerState::of(Some(now), now), PeerState::Active);
        assert_eq!(
            PeerState::of(Some(now - ACTIVE_WITHIN), now),
            PeerState::Active
        );
        assert_eq!(
            PeerState::of(Some(now - ACTIVE_WITHIN - 1), now),
            PeerState::Idle
        );
        // A clock that stepped back is not "idle".
        assert_eq!(PeerState::of(Some(now + 5), now), PeerState::Active);
    }

    #[test]
    fn views_join_the_allocations_with_their_peers() {
        let allocation = |n: u8| Allocation {
            slot: n.into(),
            prefix: format!("2001:db8::{n}00/120").parse().unwrap(),
            nft: Address::repeat_byte(n),
            contract: Address::repeat_byte(0xc0),
            request_id: n.into(),
            wg_key: [n; 32],
            created_at: 100,
            key_set_at: Some(100),
            answered_at: Some(101),
            handshake_deadline: None,
        };
        let all = [allocation(1), allocation(2), allocation(3)];
        let now = 1_000_000;
        let endpoint: SocketAddr = "203.0.113.2:40000".parse().unwrap();
        let peer = |n: u8, at: Option<u64>| Peer {
            public_key: [n; 32],
            allowed_ips: vec![],
            last_handshake: at.map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
            endpoint: at.map(|_| endpoint),
        };
        let peers = [
            peer(1, Some(now - 5)),
            peer(2, Some(now - 500)),
            peer(3, None),
        ];
        let v = views(&all, Some(&peers), now);
        let states: Vec<_> = v.iter().map(|v| v.state).collect();
        assert_eq!(
            states,
            [
                Some(PeerState::Active),
                Some(PeerState::Idle),
                Some(PeerState::Never)
            ]
        );
        assert_eq!(v[0].last_handshake, Some(now - 5));
        assert_eq!(
            v.iter().map(|v| v.endpoint).collect::<Vec<_>>(),
            [Some(endpoint), Some(endpoint), None]
        );
        assert_eq!(
            v[0].wireguard_key,
            wireguard_control::Key([1; 32]).to_base64()
        );
        assert_eq!(v[1].prefix, all[1].prefix);
        // Without the kernel: no state, no handshake, no endpoint.
        let v = views(&all, None, now);
        assert!(
            v.iter()
                .all(|v| v.state.is_none() && v.last_handshake.is_none() && v.endpoint.is_none())
        );
        // A peer missing from the interface never connected (as far as we know).
        let v = views(&all, Some(&[]), now);
        assert!(v.iter().all(|v| v.state == Some(PeerState::Never)));
    }
}
