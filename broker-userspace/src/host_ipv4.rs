//! The IPv4 address BlockHost servers reach this host's WireGuard at: the
//! set-up wizard's default `[wireguard] endpoint`. Clients ask a tunnel
//! broker for IPv6 because they may have none, so the endpoint they connect
//! to is usually IPv4.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::{AddressAttribute, AddressScope},
        route::RouteAttribute,
    },
};

use crate::{host_ipv6::HostIpv6Error, tunnel::netlink};

/// The host's global IPv4 address clients most likely reach: one on the
/// interface of the IPv4 default route, else any global one; None when the
/// host has none. Reads the calling thread's network namespace; must run in
/// a tokio runtime.
pub async fn endpoint_address() -> Result<Option<Ipv4Addr>, HostIpv6Error> {
    let handle = netlink::connect().map_err(|source| HostIpv6Error::Netlink {
        context: "opening a route netlink socket",
        source,
    })?;
    let failed = |context: &'static str| {
        move |e| HostIpv6Error::Netlink {
            context,
            source: netlink::to_io(e),
        }
    };
    let routes: Vec<_> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(failed("listing the IPv4 routes"))?;
    let default_interface = routes
        .iter()
        .filter(|r| r.header.destination_prefix_length == 0)
        .find_map(|r| {
            r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            })
        });

    let mut request = handle.address().get();
    request.message_mut().header.family = AddressFamily::Inet;
    let addresses: Vec<_> = request
        .execute()
        .try_collect()
        .await
        .map_err(failed("listing the IPv4 addresses"))?;
    let global: Vec<(u32, Ipv4Addr)> = addresses
        .iter()
        .filter(|m| m.header.scope == AddressScope::Universe)
        .filter_map(|m| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(v4)) => Some((m.header.index, *v4)),
                _ => None,
            })
        })
        .filter(|(_, a)| !a.is_loopback() && !a.is_link_local())
        .collect();
    Ok(global
        .iter()
        .find(|(index, _)| Some(*index) == default_interface)
        .or_else(|| global.first())
        .map(|(_, a)| *a))
}
