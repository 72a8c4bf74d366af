//! The namespaces and links of the lab, and every address in it (all from
//! the documentation ranges).
//!
//! ```text
//!   chain ─── 192.0.2.0/24 ───┐
//!   anvil :8545               │
//!                          router ─── 2001:db8:200::/64 ─── internet
//!   broker ── upstream ───────┤   (2001:db8:100::/48 on-link towards the broker:
//!   XDP NDP responder         │    every address in it resolved with NDP)
//!   2001:db8:ff::2/64         │
//!   198.51.100.2/24 (WG :51820)
//!                             ├── 203.0.113.0/28 ── server 1 (broker-client)
//!                             └── 203.0.113.16/28 ─ server 2 (broker-client)
//! ```
//!
//! The servers have no IPv6 of their own: they reach the IPv6 internet only
//! through their WireGuard tunnel to the broker.

use std::net::Ipv4Addr;

use anyhow::Context as _;

use crate::netns::{End, Netns, veth};

pub const CHAIN_ADDR: &str = "192.0.2.2";
pub const RPC_PORT: u16 = 8545;
/// The prefix the provider delegates to the broker.
pub const UPSTREAM_PREFIX: &str = "2001:db8:100::/48";
pub const ALLOCATION_SIZE: u8 = 120;
/// The broker's upstream interface (in its namespace).
pub const UPSTREAM_IF: &str = "upstream";
pub const ROUTER_LINK_ADDR: &str = "2001:db8:ff::1";
pub const BROKER_LINK_ADDR: &str = "2001:db8:ff::2";
pub const BROKER_V4: &str = "198.51.100.2";
pub const WG_PORT: u16 = 51820;
pub const INTERNET_ADDR: &str = "2001:db8:200::10";
/// How many BlockHost servers the lab has.
pub const SERVERS: usize = 2;

/// Server `number`'s address (1-based), where its WireGuard packets come
/// from: the servers are not NATed.
pub fn server_v4(number: usize) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, (16 * (number - 1) + 2) as u8)
}

/// The namespaces, each deleted when this drops.
pub struct Topology {
    pub chain: Netns,
    pub router: Netns,
    pub internet: Netns,
    pub broker: Netns,
    pub servers: Vec<Netns>,
}

impl Topology {
    /// Builds the namespaces `<prefix>chain`, `<prefix>router`, … and links
    /// them. On an error, what was built is torn down again.
    pub fn build(prefix: &str) -> anyhow::Result<Topology> {
        let ns = |name: &str, router: bool| {
            let ns = Netns::new(&format!("{prefix}{name}"))
                .with_context(|| format!("creating the {name} namespace"))?;
            if router {
                ns.enable_forwarding()?;
            }
            anyhow::Ok(ns)
        };
        let topology = Topology {
            chain: ns("chain", false)?,
            router: ns("router", true)?,
            internet: ns("internet", false)?,
            broker: ns("broker", true)?,
            servers: (1..=SERVERS)
                .map(|n| ns(&format!("server{n}"), false))
                .collect::<anyhow::Result<_>>()?,
        };
        topology.link().context("linking the namespaces")?;
        Ok(topology)
    }

    fn link(&self) -> anyhow::Result<()> {
        let Topology {
            chain,
            router,
            internet,
            broker,
            servers,
        } = self;

        veth(End::new(router, "to-chain"), End::new(chain, "eth0"))?;
        router.ip(&["addr", "add", "192.0.2.1/24", "dev", "to-chain"])?;
        chain.ip(&["addr", "add", &format!("{CHAIN_ADDR}/24"), "dev", "eth0"])?;
        chain.ip(&["route", "add", "default", "via", "192.0.2.1"])?;

        veth(End::new(router, "to-internet"), End::new(internet, "eth0"))?;
        router.ip(&["addr", "add", "2001:db8:200::1/64", "dev", "to-internet"])?;
        internet.ip(&["addr", "add", &format!("{INTERNET_ADDR}/64"), "dev", "eth0"])?;
        internet.ip(&["-6", "route", "add", "default", "via", "2001:db8:200::1"])?;

        veth(End::new(router, "to-broker"), End::new(broker, UPSTREAM_IF))?;
        router.ip(&[
            "addr",
            "add",
            &format!("{ROUTER_LINK_ADDR}/64"),
            "dev",
            "to-broker",
        ])?;
        router.ip(&["addr", "add", "198.51.100.1/24", "dev", "to-broker"])?;
        // As a provider does: the delegated prefix is on-link, so the
        // router asks for each address in it with a Neighbor Solicitation.
        router.ip(&["-6", "route", "add", UPSTREAM_PREFIX, "dev", "to-broker"])?;
        broker.ip(&[
            "addr",
            "add",
            &format!("{BROKER_LINK_ADDR}/64"),
            "dev",
            UPSTREAM_IF,
        ])?;
        broker.ip(&[
            "addr",
            "add",
            &format!("{BROKER_V4}/24"),
            "dev",
            UPSTREAM_IF,
        ])?;
        broker.ip(&["route", "add", "default", "via", "198.51.100.1"])?;
        broker.ip(&["-6", "route", "add", "default", "via", ROUTER_LINK_ADDR])?;

        for (i, server) in servers.iter().enumerate() {
            let base = 16 * i;
            let side = format!("to-server{}", i + 1);
            veth(End::new(router, &side), End::new(server, "eth0"))?;
            router.ip(&[
                "addr",
                "add",
                &format!("203.0.113.{}/28", base + 1),
                "dev",
                &side,
            ])?;
            server.ip(&[
                "addr",
                "add",
                &format!("{}/28", server_v4(i + 1)),
                "dev",
                "eth0",
            ])?;
            server.ip(&[
                "route",
                "add",
                "default",
                "via",
                &format!("203.0.113.{}", base + 1),
            ])?;
        }
        Ok(())
    }
}
