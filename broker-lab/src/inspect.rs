//! What the broker set up in the kernel, read back: its WireGuard peers,
//! its routes and the prefixes its NDP responder answers for; and checked
//! against its database.

use anyhow::{Context as _, ensure};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use broker_common::ndp::{PREFIXES_MAP, PrefixKey, PrefixValue};
use broker_userspace::{
    ndp,
    store::{Store, allocations::Allocation},
    tunnel::ROUTE_PROTOCOL,
};
use ipnet::Ipv6Net;
use wireguard_control::Key;

use crate::{Lab, broker::ndp_status, wireguard::allowed_ips};

impl Lab {
    /// The broker's database (the daemon must be stopped: redb locks the
    /// file).
    pub fn database(&mut self) -> anyhow::Result<Store> {
        ensure!(
            !self.broker_running(),
            "the daemon still holds the database"
        );
        Ok(Store::open(
            &self.config.database.path,
            self.config.broker.pool,
        )?)
    }

    /// With the daemon stopped: the database's allocations are exactly the
    /// peers (key and prefix), the routes and the responder's prefixes, no
    /// prefix is held twice, no request is left unfinished and no on-chain
    /// release is owed. Returns the allocations.
    pub fn check_consistent(&mut self) -> anyhow::Result<Vec<Allocation>> {
        let db = self.database()?;
        let all = db.allocations()?;
        let unfinished = db.unfinished()?;
        ensure!(
            unfinished.is_empty(),
            "requests left unfinished: {unfinished:?}"
        );
        let owed = db.owed_releases()?;
        ensure!(owed.is_empty(), "on-chain releases still owed: {owed:?}");
        let mut want_peers: Vec<(String, String)> = all
            .iter()
            .map(|a| (Key(a.wg_key).to_base64(), a.prefix.to_string()))
            .collect();
        want_peers.sort();
        let mut prefixes: Vec<Ipv6Net> = all.iter().map(|a| a.prefix).collect();
        prefixes.sort();
        let held = prefixes.len();
        prefixes.dedup();
        ensure!(prefixes.len() == held, "a prefix is held twice: {all:?}");
        let peers = self.peers()?;
        ensure!(
            peers == want_peers,
            "peers {peers:?}, database {want_peers:?}"
        );
        let routes = self.routes()?;
        ensure!(
            routes == prefixes,
            "routes {routes:?}, database {prefixes:?}"
        );
        let ndp = self.ndp_prefixes()?;
        ensure!(ndp == prefixes, "NDP map {ndp:?}, database {prefixes:?}");
        let counted = self.ndp_status_count()?;
        ensure!(
            counted == held,
            "ndp status counts {counted}, database {held}"
        );
        Ok(all)
    }

    /// The broker's peers: (public key, allowed IPs), sorted.
    pub fn peers(&self) -> anyhow::Result<Vec<(String, String)>> {
        allowed_ips(&self.net.broker, &self.config.wireguard.interface)
    }

    /// The broker's routes (its protocol number) through its WireGuard
    /// interface, sorted.
    pub fn routes(&self) -> anyhow::Result<Vec<Ipv6Net>> {
        let shown = self.net.broker.ip(&[
            "-6",
            "route",
            "show",
            "proto",
            &ROUTE_PROTOCOL.to_string(),
            "dev",
            &self.config.wireguard.interface,
        ])?;
        let mut routes = shown
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(|net| net.parse().with_context(|| format!("route {net}")))
            .collect::<anyhow::Result<Vec<Ipv6Net>>>()?;
        routes.sort();
        Ok(routes)
    }

    /// The prefixes in the responder's pinned map, sorted.
    pub fn ndp_prefixes(&self) -> anyhow::Result<Vec<Ipv6Net>> {
        let pins = ndp::PinDir::new(self.pin_dir());
        let data = MapData::from_pin(pins.map(PREFIXES_MAP)).context("the pinned map")?;
        let map: BpfHashMap<MapData, PrefixKey, PrefixValue> =
            BpfHashMap::try_from(Map::from_map_data(data)?)?;
        let mut nets = Vec::new();
        for key in map.keys() {
            nets.push(ndp::net_for(&key?).context("a malformed key")?);
        }
        nets.sort();
        Ok(nets)
    }

    /// `blockhost-broker ndp status`'s prefix count.
    pub fn ndp_status_count(&self) -> anyhow::Result<usize> {
        let pins = ndp::PinDir::new(self.pin_dir());
        let (code, out) = ndp_status(&self.net.broker, &pins)?;
        anyhow::ensure!(code == Some(0), "ndp status: {out}");
        let line = out
            .lines()
            .find(|l| l.starts_with("prefixes:"))
            .with_context(|| format!("no prefixes line in:\n{out}"))?;
        line["prefixes:".len()..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .with_context(|| line.to_string())
    }
}
