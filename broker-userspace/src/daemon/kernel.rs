//! The kernel side of allocations: WireGuard peer, route, NDP map entry.
//! Every operation is idempotent, and the database always leads: the kernel
//! is changed only after the change it follows has committed, and at start
//! it is made to match the database whatever happened before.

use std::collections::{HashMap, HashSet};

use ipnet::Ipv6Net;

use crate::{
    ndp::{MacFollower, Responder},
    store::allocations::Allocation,
    tunnel::{Routes, Tunnel},
};

/// What [`Kernel::remove`] found and removed.
#[derive(Clone, Copy, Debug)]
pub struct Removed {
    pub peer: bool,
    pub route: bool,
    pub ndp_entry: bool,
}

pub struct Kernel {
    pub tunnel: Tunnel,
    pub routes: Routes,
    pub ndp: Responder,
    mac: MacFollower,
}

impl Kernel {
    pub fn new(tunnel: Tunnel, routes: Routes, ndp: Responder) -> Self {
        Kernel {
            tunnel,
            routes,
            ndp,
            mac: MacFollower::default(),
        }
    }

    /// Keeps the advertised MAC the upstream interface's (see follow_mac.rs).
    pub fn follow_upstream_mac(&mut self) {
        self.mac.check(&mut self.ndp);
    }

    /// Sets up `allocation` (after a rotation, dropping the old key's peer).
    pub async fn apply(
        &mut self,
        allocation: &Allocation,
        old_wg_key: Option<[u8; 32]>,
    ) -> anyhow::Result<()> {
        self.tunnel
            .set_peer(&allocation.wg_key, allocation.prefix)?;
        if let Some(old) = old_wg_key.filter(|k| k != &allocation.wg_key) {
            self.tunnel.remove_peer(&old)?;
        }
        self.routes
            .add(allocation.prefix, self.tunnel.index())
            .await?;
        self.ndp.insert(allocation.prefix)?;
        Ok(())
    }

    /// [`Kernel::apply`] for each of `allocations` (with the old key of a
    /// rotation): their peers in one exchange with the WireGuard device,
    /// then each route and NDP entry.
    pub async fn apply_all(
        &mut self,
        allocations: &[(&Allocation, Option<[u8; 32]>)],
    ) -> anyhow::Result<()> {
        let peers: Vec<([u8; 32], Ipv6Net)> = allocations
            .iter()
            .map(|(a, _)| (a.wg_key, a.prefix))
            .collect();
        self.tunnel.set_peers(&peers)?;
        for (allocation, old_wg_key) in allocations {
            if let Some(old) = old_wg_key.filter(|k| k != &allocation.wg_key) {
                self.tunnel.remove_peer(&old)?;
            }
            self.routes
                .add(allocation.prefix, self.tunnel.index())
                .await?;
            self.ndp.insert(allocation.prefix)?;
        }
        Ok(())
    }

    /// Takes `allocation` down; says what was there.
    pub async fn remove(&mut self, allocation: &Allocation) -> anyhow::Result<Removed> {
        let ndp_entry = self.ndp.remove(allocation.prefix)?;
        let route = self
            .routes
            .remove(allocation.prefix, self.tunnel.index())
            .await?;
        let peer = self.tunnel.remove_peer(&allocation.wg_key)?;
        Ok(Removed {
            peer,
            route,
            ndp_entry,
        })
    }

    /// Makes peers, routes and the NDP map hold exactly `allocations`.
    /// Returns a one-line summary of what changed.
    pub async fn reconcile(&mut self, allocations: &[Allocation]) -> anyhow::Result<String> {
        let want_peers: HashMap<[u8; 32], Ipv6Net> =
            allocations.iter().map(|a| (a.wg_key, a.prefix)).collect();
        let mut have = HashMap::new();
        let mut extra = Vec::new();
        for peer in self.tunnel.peers()? {
            if want_peers.contains_key(&peer.public_key) {
                have.insert(peer.public_key, peer.allowed_ips);
            } else {
                extra.push(peer.public_key);
            }
        }
        self.tunnel.remove_peers(&extra)?;
        let peers_removed = extra.len();
        let missing: Vec<([u8; 32], Ipv6Net)> = want_peers
            .iter()
            .filter(|(key, prefix)| have.get(*key).map(Vec::as_slice) != Some(&[**prefix][..]))
            .map(|(key, prefix)| (*key, *prefix))
            .collect();
        // A thousand peers per exchange with the device, however many
        // allocations a start has to put back.
        self.tunnel.set_peers(&missing)?;
        let peers_added = missing.len();

        let want_routes: HashSet<Ipv6Net> = allocations.iter().map(|a| a.prefix).collect();
        let index = self.tunnel.index();
        let have_routes: HashSet<Ipv6Net> = self.routes.list(index).await?.into_iter().collect();
        for extra in have_routes.difference(&want_routes) {
            self.routes.remove(*extra, index).await?;
        }
        for missing in want_routes.difference(&have_routes) {
            self.routes.add(*missing, index).await?;
        }

        let prefixes: Vec<Ipv6Net> = want_routes.iter().copied().collect();
        let (ndp_added, ndp_removed) = self.ndp.reconcile(&prefixes)?;
        Ok(format!(
            "{} allocations; peers +{peers_added} -{peers_removed}, routes +{} -{}, NDP +{ndp_added} -{ndp_removed}",
            allocations.len(),
            want_routes.difference(&have_routes).count(),
            have_routes.difference(&want_routes).count(),
        ))
    }
}
