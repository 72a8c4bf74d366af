//! The steps the demo shows and the end-to-end tests check: a server
//! connects, and traffic flows both ways through the broker.

use std::net::Ipv6Addr;

use anyhow::{Context as _, bail, ensure};
use ipnet::Ipv6Net;

use crate::{
    Lab,
    topology::{INTERNET_ADDR, UPSTREAM_IF},
};

/// The server's address in its prefix: the network address + 1.
pub fn server_address(prefix: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(prefix.network()) + 1)
}

impl Lab {
    /// Server `number` requests a prefix and installs its tunnel.
    pub fn connect(&self, number: usize) -> anyhow::Result<Ipv6Net> {
        let nft = self.servers[number - 1].nft.to_string();
        self.narrator.step(&format!(
            "server{number} asks for a prefix: broker-client request (payload ECIES-encrypted to the broker's key from the registry, submitRequest from the NFT's owner, then the answer awaited on chain)"
        ));
        self.client(number, &["request", "--nft-contract", &nft])?;
        let prefix = self.prefix(number)?;
        let allocation = self.allocation(number)?;
        self.narrator.done(&format!(
            "answered: prefix {prefix}, gateway {}, broker endpoint {}",
            allocation["gateway"].as_str().unwrap_or("?"),
            allocation["broker_endpoint"].as_str().unwrap_or("?")
        ));

        self.narrator.step(&format!(
            "server{number} brings its tunnel up: broker-client install (wg-quick, {} on the tunnel, ::/0 through the broker)",
            server_address(prefix)
        ));
        self.client(number, &["install"])?;
        self.narrator.done("the gateway answers through the tunnel");
        self.narrator.detail("the broker's log meanwhile:");
        let prefix_text = prefix.to_string();
        for line in self.broker_log().lines().filter(|l| {
            l.contains(&prefix_text) && (l.contains("answered") || l.contains("tunnel up"))
        }) {
            self.narrator.detail(&format!("  {line}"));
        }
        Ok(prefix)
    }

    /// The internet host and server `number` reach each other through the
    /// router, the XDP responder and the tunnel; no proxy entries.
    pub fn check_traffic(&self, number: usize) -> anyhow::Result<()> {
        let prefix = self.prefix(number)?;
        let address = server_address(prefix).to_string();
        self.narrator.step(&format!(
            "The internet host pings server{number} at {address}: the router asks for it with a Neighbor Solicitation, the XDP responder answers, the broker routes it into the tunnel"
        ));
        self.shell(
            &self.net.internet,
            &["ping", "-n", "-c", "3", "-i", "0.2", "-w", "15", &address],
        )
        .with_context(|| format!("the internet host cannot reach server{number} at {address}"))?;
        let neigh = self.shell(
            &self.net.router,
            &[
                "ip",
                "-6",
                "neigh",
                "show",
                "to",
                &address,
                "dev",
                "to-broker",
            ],
        )?;
        let broker_mac = self.net.broker.mac(UPSTREAM_IF)?;
        ensure!(
            neigh.contains(&broker_mac),
            "the router's neighbour entry for {address} is not the broker's MAC {broker_mac}: {neigh}"
        );
        self.narrator.done(&format!(
            "{address} resolves to the broker's MAC {broker_mac}"
        ));

        self.narrator.step(&format!(
            "server{number} pings the internet host at {INTERNET_ADDR}, from {address}, through its tunnel"
        ));
        self.shell(
            &self.net.servers[number - 1],
            &[
                "ping",
                "-n",
                "-c",
                "3",
                "-i",
                "0.2",
                "-w",
                "15",
                INTERNET_ADDR,
            ],
        )
        .with_context(|| format!("server{number} cannot reach the internet host"))?;

        self.narrator
            .step("No per-address proxy entries on the broker: ip -6 neigh show proxy is empty");
        let proxies = self.shell(&self.net.broker, &["ip", "-6", "neigh", "show", "proxy"])?;
        if !proxies.trim().is_empty() {
            bail!("the broker has proxy entries:\n{proxies}");
        }
        self.narrator.done("none");
        Ok(())
    }
}
