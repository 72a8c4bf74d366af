//! Routes of allocated prefixes through the tunnel, in the main table, over
//! route netlink. Each carries [`ROUTE_PROTOCOL`], which tells the broker's
//! routes from the kernel's (link-local, the gateway's own address,
//! multicast) and from anything an operator added.

use std::net::Ipv6Addr;

use futures::TryStreamExt as _;
use ipnet::Ipv6Net;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
    },
};

use super::{TunnelError, netlink};

/// The route protocol (`proto` in `ip -6 route`) of the broker's routes: a
/// number neither the kernel nor iproute2's `rt_protos` assigns. Name it for
/// `ip` with `echo "180 blockhost" > /etc/iproute2/rt_protos.d/blockhost.conf`.
pub const ROUTE_PROTOCOL: u8 = 180;

/// A route-netlink connection in the network namespace of the thread that
/// made it.
pub struct Routes {
    handle: Handle,
}

impl Routes {
    /// Connects in the caller's network namespace; must run inside a tokio
    /// runtime, which drives the connection.
    pub async fn new() -> Result<Routes, TunnelError> {
        let handle = netlink::connect().map_err(|source| TunnelError::Netlink {
            context: "opening a route netlink socket".into(),
            source,
        })?;
        Ok(Routes { handle })
    }

    /// Routes `prefix` through `ifindex`, replacing any route for exactly
    /// that prefix in the main table (so adding twice is harmless, and a
    /// prefix moves when its interface changes).
    pub async fn add(&self, prefix: Ipv6Net, ifindex: u32) -> Result<(), TunnelError> {
        let prefix = prefix.trunc();
        self.handle
            .route()
            .add(ours(prefix, ifindex))
            .replace()
            .execute()
            .await
            .map_err(|e| route_error(prefix, ifindex, e))
    }

    /// Removes our route for `prefix` through `ifindex`; false when there
    /// was none (a route someone else made is left alone).
    pub async fn remove(&self, prefix: Ipv6Net, ifindex: u32) -> Result<bool, TunnelError> {
        let prefix = prefix.trunc();
        match self
            .handle
            .route()
            .del(ours(prefix, ifindex))
            .execute()
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if netlink::is_errno(&e, libc::ESRCH) => Ok(false),
            Err(e) => Err(route_error(prefix, ifindex, e)),
        }
    }

    /// Makes the pool's unallocated addresses unreachable: an `unreachable
    /// <pool>` route (ours, [`ROUTE_PROTOCOL`]) under the allocations' more
    /// specific routes. Without it, where the provider routes the pool to
    /// the broker through a next hop, a packet to an unallocated (or just
    /// released) address follows the broker's default route back to the
    /// router, which sends it back again until its hop limit runs out: an
    /// amplifier anyone can aim. With it the sender gets an ICMPv6
    /// unreachable at once.
    ///
    /// Not where the pool is on-link (inside the prefix of a kernel route,
    /// as on a VPS given a /64): the router then asks for each address with
    /// a Neighbor Solicitation, which only allocated ones get answered, and
    /// an unreachable route would hide the link's other hosts. True when the
    /// route is in place.
    pub async fn hold_unallocated(&self, pool: Ipv6Net) -> Result<bool, TunnelError> {
        let pool = pool.trunc();
        let failed = |context: &str, e| TunnelError::Netlink {
            context: format!("{context} for the pool {pool}"),
            source: netlink::to_io(e),
        };
        let request = RouteMessageBuilder::<Ipv6Addr>::new().build();
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(request)
            .execute()
            .try_collect()
            .await
            .map_err(|e| failed("listing the routes", e))?;
        let on_link = routes.iter().any(|r| {
            r.header.protocol == RouteProtocol::Kernel
                && r.header.kind == RouteType::Unicast
                && destination(r).is_some_and(|d| d.contains(&pool))
        });
        if on_link {
            return Ok(false);
        }
        let unreachable = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(pool.network(), pool.prefix_len())
            .kind(RouteType::Unreachable)
            .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
            .build();
        match self.handle.route().add(unreachable).execute().await {
            Ok(()) => Ok(true),
            // The operator's own unreachable (or blackhole) route does it.
            Err(e) if netlink::is_errno(&e, libc::EEXIST) => Ok(true),
            Err(e) => Err(failed("adding an unreachable route", e)),
        }
    }

    /// The prefixes of our routes through `ifindex`, in the kernel's order.
    pub async fn list(&self, ifindex: u32) -> Result<Vec<Ipv6Net>, TunnelError> {
        let request = RouteMessageBuilder::<Ipv6Addr>::new().build();
        let mut routes = self.handle.route().get(request).execute();
        let mut prefixes = Vec::new();
        loop {
            let route = match routes.try_next().await {
                Ok(Some(route)) => route,
                Ok(None) => return Ok(prefixes),
                Err(e) => {
                    return Err(TunnelError::Netlink {
                        context: format!("listing the routes through interface index {ifindex}"),
                        source: netlink::to_io(e),
                    });
                }
            };
            if let Some(prefix) = our_prefix(&route, ifindex) {
                prefixes.push(prefix);
            }
        }
    }
}

fn ours(prefix: Ipv6Net, ifindex: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(prefix.network(), prefix.prefix_len())
        .output_interface(ifindex)
        .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
        .build()
}

/// The destination of `route` (`::/0` for a default route).
fn destination(route: &RouteMessage) -> Option<Ipv6Net> {
    let address = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet6(address)) => Some(*address),
            _ => None,
        })
        .unwrap_or(Ipv6Addr::UNSPECIFIED);
    Ipv6Net::new(address, route.header.destination_prefix_length).ok()
}

/// The destination of `route` if it is one of ours through `ifindex`.
fn our_prefix(route: &RouteMessage, ifindex: u32) -> Option<Ipv6Net> {
    let header = &route.header;
    if u8::from(header.protocol) != ROUTE_PROTOCOL || header.table != RouteHeader::RT_TABLE_MAIN {
        return None;
    }
    let mut destination = Ipv6Addr::UNSPECIFIED;
    let mut through = false;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet6(address)) => destination = *address,
            RouteAttribute::Oif(index) => through = *index == ifindex,
            _ => {}
        }
    }
    through
        .then(|| Ipv6Net::new(destination, header.destination_prefix_length).ok())
        .flatten()
}

fn route_error(prefix: Ipv6Net, ifindex: u32, e: rtnetlink::Error) -> TunnelError {
    TunnelError::Route {
        prefix,
        ifindex,
        source: netlink::to_io(e),
    }
}
