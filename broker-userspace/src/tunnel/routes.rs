//! Routes of allocated prefixes through the tunnel, in the main table, over
//! route netlink. Each carries [`ROUTE_PROTOCOL`], which tells the broker's
//! routes from the kernel's (link-local, the gateway's own address,
//! multicast) and from anything an operator added.

use std::net::Ipv6Addr;

use futures::TryStreamExt as _;
use ipnet::Ipv6Net;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol},
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
