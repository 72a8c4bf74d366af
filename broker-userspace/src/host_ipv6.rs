//! What this host offers a broker in IPv6: its global addresses and routes,
//! the prefixes the broker could hand out (its *pool*) with the allocation
//! sizes each allows, and the upstream interface (the one holding the IPv6
//! default route). Read over route netlink, in the network namespace of the
//! calling thread. `blockhost-broker detect-ipv6` prints it; the setup
//! wizard asks its questions from it.
//!
//! A candidate pool is either
//! - *on-link*: the prefix of a global address (`2001:db8:1::2/64` gives
//!   `2001:db8:1::/64`), the usual case of a VPS given a /64;
//! - *routed*: the destination of a route to an interface without a gateway
//!   (`2001:db8:100::/48 dev eth0`, or `dev he-ipv6` for a 6in4 tunnel), or
//!   of an unreachable / blackhole / prohibit route: a prefix the provider
//!   routes to this host, which this host then holds.
//!
//! Left out: link-local, loopback, multicast and site-local addresses;
//! addresses that are temporary (privacy extensions: they change), deprecated
//! (no longer preferred), tentative (duplicate address detection not done)
//! or whose DAD failed — those are listed as ignored, with the reason; the
//! kernel's own prefix routes (the on-link prefixes already say it all);
//! routes through a gateway (the prefix lives beyond it); and the broker's
//! own routes ([`ROUTE_PROTOCOL`]), which are its allocations.

use std::{collections::BTreeMap, fmt::Write as _, io, net::Ipv6Addr};

use futures::TryStreamExt as _;
use ipnet::Ipv6Net;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope},
        link::{LinkAttribute, LinkMessage},
        route::{
            RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
        },
    },
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    ipam::Pool,
    numbers::thousands,
    tunnel::{ROUTE_PROTOCOL, netlink},
};

pub use crate::ipam::LONGEST_ALLOCATION;

#[derive(Debug, Error)]
pub enum HostIpv6Error {
    #[error("route netlink: {context}")]
    Netlink {
        context: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Everything `detect-ipv6` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostIpv6 {
    /// The interface of the IPv6 default route (the lowest metric wins);
    /// None when there is none.
    pub upstream: Option<Upstream>,
    /// Global addresses a pool can be built on.
    pub addresses: Vec<HostAddress>,
    /// Global addresses left out, and why.
    pub ignored_addresses: Vec<IgnoredAddress>,
    /// The main table's routes to global destinations, the default route
    /// included, the broker's own left out.
    pub routes: Vec<HostRoute>,
    /// Candidate pools, upstream first, larger first.
    pub pools: Vec<CandidatePool>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    pub interface: String,
    /// The router the default route goes through (none on a point-to-point
    /// link such as a 6in4 tunnel).
    pub gateway: Option<Ipv6Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostAddress {
    pub interface: String,
    pub address: Ipv6Addr,
    pub prefix_len: u8,
    /// In fc00::/7: routed inside a site, never from the internet.
    pub unique_local: bool,
    /// Seconds until the address goes away; None: forever (a static
    /// address). An address from router advertisements has one.
    pub valid_lifetime_secs: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoredAddress {
    pub interface: String,
    pub address: Ipv6Addr,
    pub prefix_len: u8,
    /// `temporary`, `deprecated`, `tentative`, `dadfailed`.
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoute {
    /// `::/0` for the default route.
    pub destination: Ipv6Net,
    /// `unicast`, `unreachable`, `blackhole`, `prohibit`, …
    pub kind: String,
    pub interface: Option<String>,
    pub gateway: Option<Ipv6Addr>,
    /// As `ip -6 route` names it (`kernel`, `boot`, `static`, `ra`, …).
    pub protocol: String,
    pub metric: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// The prefix of one of the host's addresses.
    OnLink,
    /// A route to this host.
    Routed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidatePool {
    pub prefix: Ipv6Net,
    pub origin: Origin,
    /// The interface the prefix is on or routed to (none for an
    /// unreachable / blackhole route).
    pub interface: Option<String>,
    /// The host's addresses in the prefix (on-link pools).
    pub addresses: Vec<Ipv6Addr>,
    /// On the upstream interface.
    pub upstream: bool,
    pub unique_local: bool,
    /// Every allocation size the pool allows, shortest first; empty when
    /// the pool is too small to give any.
    pub allocation_sizes: Vec<AllocationSize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationSize {
    pub prefix_len: u8,
    /// Prefixes of this size clients can get: the pool's slots but the one
    /// the broker keeps for its own address ([`Pool::slots`] - 1).
    pub allocations: u128,
}

/// The allocation sizes `pool` allows: every length longer than the pool up
/// to [`LONGEST_ALLOCATION`], with the allocations each gives (the daemon's
/// own arithmetic, [`Pool`]).
pub fn allocation_sizes(pool: Ipv6Net) -> Vec<AllocationSize> {
    (pool.prefix_len() + 1..=LONGEST_ALLOCATION)
        .filter_map(|size| Pool::new(pool, size).ok())
        .map(|p| AllocationSize {
            prefix_len: p.allocation_size(),
            allocations: p.slots() - 1,
        })
        .collect()
}

/// Reads the host's IPv6 state in the calling thread's network namespace.
/// Must run inside a tokio runtime (it drives the netlink connection).
pub async fn detect() -> Result<HostIpv6, HostIpv6Error> {
    let handle = netlink::connect().map_err(|source| HostIpv6Error::Netlink {
        context: "opening a route netlink socket",
        source,
    })?;
    let links = links(&handle).await?;
    let addresses = addresses(&handle).await?;
    let routes = routes(&handle).await?;
    Ok(analyse(&links, &addresses, &routes))
}

fn netlink_error(context: &'static str) -> impl Fn(rtnetlink::Error) -> HostIpv6Error {
    move |e| HostIpv6Error::Netlink {
        context,
        source: netlink::to_io(e),
    }
}

/// Interface index → name.
type Links = BTreeMap<u32, String>;

async fn links(handle: &Handle) -> Result<Links, HostIpv6Error> {
    let messages: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink_error("listing the interfaces"))?;
    Ok(messages
        .iter()
        .filter_map(|m| {
            m.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(name) => Some((m.header.index, name.clone())),
                _ => None,
            })
        })
        .collect())
}

async fn addresses(handle: &Handle) -> Result<Vec<AddressMessage>, HostIpv6Error> {
    let mut request = handle.address().get();
    request.message_mut().header.family = AddressFamily::Inet6;
    request
        .execute()
        .try_collect()
        .await
        .map_err(netlink_error("listing the IPv6 addresses"))
}

async fn routes(handle: &Handle) -> Result<Vec<RouteMessage>, HostIpv6Error> {
    let request = RouteMessageBuilder::<Ipv6Addr>::new().build();
    handle
        .route()
        .get(request)
        .execute()
        .try_collect()
        .await
        .map_err(netlink_error("listing the IPv6 routes"))
}

/// The report, from what the kernel said.
fn analyse(links: &Links, addresses: &[AddressMessage], routes: &[RouteMessage]) -> HostIpv6 {
    let name = |index: u32| {
        links
            .get(&index)
            .cloned()
            .unwrap_or_else(|| format!("#{index}"))
    };
    let mut kept = Vec::new();
    let mut ignored = Vec::new();
    for message in addresses {
        let Some(address) = address_of(message) else {
            continue;
        };
        if message.header.scope != AddressScope::Universe || !is_global(address) {
            continue;
        }
        let interface = name(message.header.index);
        let prefix_len = message.header.prefix_len;
        let reasons = unusable(flags_of(message));
        if reasons.is_empty() {
            kept.push(HostAddress {
                interface,
                address,
                prefix_len,
                unique_local: is_unique_local(address),
                valid_lifetime_secs: valid_lifetime(message),
            });
        } else {
            ignored.push(IgnoredAddress {
                interface,
                address,
                prefix_len,
                reasons,
            });
        }
    }

    // In a stable order, whatever the kernel's: by interface, then address.
    kept.sort_by(|a, b| (&a.interface, a.address).cmp(&(&b.interface, b.address)));
    ignored.sort_by(|a, b| (&a.interface, a.address).cmp(&(&b.interface, b.address)));
    let mut host_routes: Vec<HostRoute> =
        routes.iter().filter_map(|r| host_route(r, &name)).collect();
    // The default route first, then by destination.
    host_routes.sort_by_key(|r| (r.destination.prefix_len() != 0, r.destination, r.metric));
    let upstream = host_routes
        .iter()
        .filter(|r| r.destination.prefix_len() == 0 && r.kind == "unicast")
        .filter_map(|r| Some((r.metric.unwrap_or(0), r.interface.clone()?, r.gateway)))
        .min()
        .map(|(_, interface, gateway)| Upstream { interface, gateway });

    let mut pools: Vec<CandidatePool> = Vec::new();
    for address in &kept {
        let prefix = Ipv6Net::new(address.address, address.prefix_len)
            .expect("the kernel's prefix length is at most 128")
            .trunc();
        let interface = Some(address.interface.clone());
        match pools
            .iter_mut()
            .find(|p| p.prefix == prefix && p.interface == interface)
        {
            Some(pool) => pool.addresses.push(address.address),
            None => pools.push(candidate(
                prefix,
                Origin::OnLink,
                interface,
                vec![address.address],
            )),
        }
    }
    for route in &host_routes {
        let routed_here = match route.kind.as_str() {
            "unicast" => route.gateway.is_none() && route.interface.is_some(),
            "unreachable" | "blackhole" | "prohibit" => true,
            _ => false,
        };
        let prefix = route.destination;
        if routed_here
            && prefix.prefix_len() > 0
            && route.protocol != "kernel"
            && !pools.iter().any(|p| p.prefix == prefix)
        {
            pools.push(candidate(
                prefix,
                Origin::Routed,
                route.interface.clone(),
                Vec::new(),
            ));
        }
    }
    let upstream_name = upstream.as_ref().map(|u| u.interface.as_str());
    for pool in &mut pools {
        pool.upstream = pool.interface.is_some() && pool.interface.as_deref() == upstream_name;
    }
    pools.sort_by_key(|p| (!p.upstream, p.prefix.prefix_len(), p.prefix));

    HostIpv6 {
        upstream,
        addresses: kept,
        ignored_addresses: ignored,
        routes: host_routes,
        pools,
    }
}

fn candidate(
    prefix: Ipv6Net,
    origin: Origin,
    interface: Option<String>,
    addresses: Vec<Ipv6Addr>,
) -> CandidatePool {
    CandidatePool {
        prefix,
        origin,
        interface,
        addresses,
        upstream: false,
        unique_local: is_unique_local(prefix.network()),
        allocation_sizes: allocation_sizes(prefix),
    }
}

fn address_of(message: &AddressMessage) -> Option<Ipv6Addr> {
    // IFA_ADDRESS is the peer on a point-to-point link: IFA_LOCAL, when
    // present, is ours.
    let mut found = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(std::net::IpAddr::V6(a)) => return Some(*a),
            AddressAttribute::Address(std::net::IpAddr::V6(a)) => found = Some(*a),
            _ => {}
        }
    }
    found
}

/// The 32-bit IFA_FLAGS when the kernel sends them, else the header's byte.
fn flags_of(message: &AddressMessage) -> AddressFlags {
    message
        .attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Flags(flags) => Some(*flags),
            _ => None,
        })
        .unwrap_or_else(|| AddressFlags::from_bits_retain(message.header.flags.bits().into()))
}

/// Why an address cannot carry a pool (empty: it can).
fn unusable(flags: AddressFlags) -> Vec<String> {
    [
        // IFA_F_TEMPORARY is IFA_F_SECONDARY's bit, for IPv6.
        (AddressFlags::Secondary, "temporary"),
        (AddressFlags::Deprecated, "deprecated"),
        (AddressFlags::Tentative, "tentative"),
        (AddressFlags::Dadfailed, "dadfailed"),
    ]
    .into_iter()
    .filter(|(flag, _)| flags.contains(*flag))
    .map(|(_, reason)| reason.to_string())
    .collect()
}

fn valid_lifetime(message: &AddressMessage) -> Option<u32> {
    message.attributes.iter().find_map(|a| match a {
        AddressAttribute::CacheInfo(info) if info.ifa_valid != u32::MAX => Some(info.ifa_valid),
        _ => None,
    })
}

/// Not link-local, loopback, multicast, unspecified or site-local (fec0::/10,
/// deprecated by RFC 3879).
fn is_global(address: Ipv6Addr) -> bool {
    let first = address.segments()[0];
    !(address.is_loopback()
        || address.is_unspecified()
        || address.is_multicast()
        || first & 0xffc0 == 0xfe80
        || first & 0xffc0 == 0xfec0)
}

fn is_unique_local(address: Ipv6Addr) -> bool {
    address.segments()[0] & 0xfe00 == 0xfc00
}

/// One main-table route to a global destination, unless it is the broker's.
fn host_route(route: &RouteMessage, name: &impl Fn(u32) -> String) -> Option<HostRoute> {
    let header = &route.header;
    let table = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(header.table.into());
    if table != u32::from(RouteHeader::RT_TABLE_MAIN)
        || header.address_family != AddressFamily::Inet6
        || u8::from(header.protocol) == ROUTE_PROTOCOL
    {
        return None;
    }
    let mut destination = Ipv6Addr::UNSPECIFIED;
    let mut interface = None;
    let mut gateway = None;
    let mut metric = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => destination = *a,
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(*a),
            RouteAttribute::Oif(index) => interface = Some(name(*index)),
            RouteAttribute::Priority(p) => metric = Some(*p),
            _ => {}
        }
    }
    let destination = Ipv6Net::new(destination, header.destination_prefix_length).ok()?;
    if destination.prefix_len() > 0 && !is_global(destination.network()) {
        return None;
    }
    Some(HostRoute {
        destination,
        kind: route_kind(header.kind),
        interface,
        gateway,
        protocol: protocol_name(header.protocol),
        metric,
    })
}

fn route_kind(kind: RouteType) -> String {
    match kind {
        RouteType::Unicast => "unicast".into(),
        RouteType::Local => "local".into(),
        RouteType::Anycast => "anycast".into(),
        RouteType::Multicast => "multicast".into(),
        RouteType::BlackHole => "blackhole".into(),
        RouteType::Unreachable => "unreachable".into(),
        RouteType::Prohibit => "prohibit".into(),
        RouteType::Throw => "throw".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The names of iproute2's `rt_protos`, the number otherwise.
fn protocol_name(protocol: RouteProtocol) -> String {
    match u8::from(protocol) {
        2 => "kernel".into(),
        3 => "boot".into(),
        4 => "static".into(),
        9 => "ra".into(),
        16 => "dhcp".into(),
        n => n.to_string(),
    }
}

/// The sizes the human report shows of a pool's (the JSON has all of them):
/// nibble boundaries, where reverse DNS delegates, and the longest ones.
const SHOWN_SIZES: [u8; 12] = [48, 52, 56, 60, 64, 72, 80, 96, 112, 120, 124, 126];

impl HostIpv6 {
    /// The report for a person, as `detect-ipv6` prints it.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        match &self.upstream {
            Some(Upstream {
                interface,
                gateway: Some(gateway),
            }) => {
                let _ = writeln!(
                    out,
                    "Upstream interface: {interface} (IPv6 default route via {gateway})"
                );
            }
            Some(Upstream {
                interface,
                gateway: None,
            }) => {
                let _ = writeln!(out, "Upstream interface: {interface} (IPv6 default route)");
            }
            None => out.push_str(
                "Upstream interface: none (no IPv6 default route: this host has no IPv6 upstream)\n",
            ),
        }

        out.push_str("\nGlobal IPv6 addresses:\n");
        if self.addresses.is_empty() {
            out.push_str("  none\n");
        }
        for a in &self.addresses {
            let mut notes = Vec::new();
            if a.unique_local {
                notes.push("unique local: not reachable from the internet".to_string());
            }
            if let Some(secs) = a.valid_lifetime_secs {
                notes.push(format!("expires in {secs}s unless renewed"));
            }
            let _ = writeln!(
                out,
                "  {:<12} {}/{}{}",
                a.interface,
                a.address,
                a.prefix_len,
                parenthesised(&notes)
            );
        }
        if !self.ignored_addresses.is_empty() {
            out.push_str("\nLeft out (not usable for a pool):\n");
            for a in &self.ignored_addresses {
                let _ = writeln!(
                    out,
                    "  {:<12} {}/{} ({})",
                    a.interface,
                    a.address,
                    a.prefix_len,
                    a.reasons.join(", ")
                );
            }
        }

        out.push_str("\nRoutes:\n");
        if self.routes.is_empty() {
            out.push_str("  none\n");
        }
        for r in &self.routes {
            let _ = writeln!(out, "  {}", route_line(r));
        }

        out.push_str("\nCandidate pools");
        if self.pools.is_empty() {
            out.push_str(": none (no global address or route to this host)\n");
            return out;
        }
        out.push_str(" (the broker keeps one allocation for its own address):\n");
        for pool in &self.pools {
            pool_text(&mut out, pool);
        }
        out
    }
}

fn parenthesised(notes: &[String]) -> String {
    if notes.is_empty() {
        String::new()
    } else {
        format!("  ({})", notes.join("; "))
    }
}

fn route_line(r: &HostRoute) -> String {
    let mut line = if r.destination.prefix_len() == 0 {
        "default".to_string()
    } else {
        r.destination.to_string()
    };
    if r.kind != "unicast" {
        line = format!("{} {line}", r.kind);
    }
    if let Some(gateway) = r.gateway {
        let _ = write!(line, " via {gateway}");
    }
    if let Some(interface) = &r.interface {
        let _ = write!(line, " dev {interface}");
    }
    let _ = write!(line, " proto {}", r.protocol);
    if let Some(metric) = r.metric {
        let _ = write!(line, " metric {metric}");
    }
    line
}

fn pool_text(out: &mut String, pool: &CandidatePool) {
    let place = match &pool.interface {
        Some(interface) if pool.upstream => format!(" on {interface} (upstream)"),
        Some(interface) => format!(" on {interface}"),
        None => String::new(),
    };
    let origin = match pool.origin {
        Origin::OnLink => {
            let addresses: Vec<String> = pool.addresses.iter().map(|a| a.to_string()).collect();
            format!("on-link, this host is {}", addresses.join(", "))
        }
        Origin::Routed => "routed to this host".to_string(),
    };
    let _ = writeln!(out, "  {}{place}: {origin}", pool.prefix);
    if pool.unique_local {
        out.push_str("    unique local: clients would not be reachable from the internet\n");
    }
    let (Some(first), Some(last)) = (pool.allocation_sizes.first(), pool.allocation_sizes.last())
    else {
        let _ = writeln!(
            out,
            "    no allocation size fits (allocations are /{} to /{LONGEST_ALLOCATION})",
            pool.prefix.prefix_len() + 1,
        );
        return;
    };
    let _ = writeln!(
        out,
        "    allocation sizes /{} to /{}; allocations each gives:",
        first.prefix_len, last.prefix_len
    );
    let shown: Vec<(u8, String)> = pool
        .allocation_sizes
        .iter()
        .filter(|s| SHOWN_SIZES.contains(&s.prefix_len))
        .map(|s| (s.prefix_len, thousands(s.allocations)))
        .collect();
    let width = shown.iter().map(|(_, n)| n.len()).max().unwrap_or(0);
    for (prefix_len, allocations) in shown {
        let _ = writeln!(out, "      /{prefix_len:<3} {allocations:>width$}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_of_a_48_count_every_slot_but_the_brokers() {
        let sizes = allocation_sizes("2001:db8::/48".parse().unwrap());
        assert_eq!(sizes.len(), 126 - 48);
        assert_eq!(
            sizes[0],
            AllocationSize {
                prefix_len: 49,
                allocations: 1
            }
        );
        let of = |len: u8| {
            sizes
                .iter()
                .find(|s| s.prefix_len == len)
                .unwrap()
                .allocations
        };
        assert_eq!(of(56), 255);
        assert_eq!(of(64), 65_535);
        assert_eq!(of(120), (1 << 72) - 1);
        assert_eq!(sizes.last().unwrap().prefix_len, 126);
    }

    #[test]
    fn small_pools_allow_few_or_no_sizes() {
        let sizes = |p: &str| allocation_sizes(p.parse().unwrap());
        assert_eq!(
            sizes("2001:db8::/125"),
            [AllocationSize {
                prefix_len: 126,
                allocations: 1
            }]
        );
        assert!(sizes("2001:db8::/126").is_empty());
        assert!(sizes("2001:db8::/127").is_empty());
        assert!(sizes("2001:db8::1/128").is_empty());
        // The widest pool the arithmetic takes: /1 cut into /126s is 2^125 slots.
        assert_eq!(sizes("2000::/1").len(), 125);
    }

    #[test]
    fn flags_that_make_an_address_unusable() {
        assert!(unusable(AddressFlags::Permanent | AddressFlags::Nodad).is_empty());
        assert_eq!(
            unusable(AddressFlags::Secondary | AddressFlags::Deprecated),
            ["temporary", "deprecated"]
        );
        assert_eq!(unusable(AddressFlags::Tentative), ["tentative"]);
        assert_eq!(
            unusable(AddressFlags::Tentative | AddressFlags::Dadfailed),
            ["tentative", "dadfailed"]
        );
    }

    #[test]
    fn global_and_unique_local() {
        let global = |s: &str| is_global(s.parse().unwrap());
        assert!(global("2001:db8::1"));
        assert!(global("fd00::1"));
        for s in ["fe80::1", "febf::1", "fec0::1", "::1", "::", "ff02::1"] {
            assert!(!global(s), "{s}");
        }
        assert!(is_unique_local("fd12::1".parse().unwrap()));
        assert!(is_unique_local("fc00::1".parse().unwrap()));
        assert!(!is_unique_local("fe00::1".parse().unwrap()));
    }
}
