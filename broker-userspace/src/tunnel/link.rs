//! The tunnel as a network device, over route netlink: finding it and what
//! kind it is, creating a kernel WireGuard link, the gateway address, the up
//! flag.

use std::{
    io,
    net::{IpAddr, Ipv6Addr},
};

use futures::TryStreamExt as _;
use rtnetlink::{
    Handle, LinkUnspec, LinkWireguard,
    packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
};

use super::{TunnelError, netlink};

/// What a device with the tunnel's name turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A kernel WireGuard link.
    Wireguard,
    /// A TUN device: wireguard-go's, if its socket answers.
    Tun,
    /// Anything else, as `ip -d link` names it.
    Other(String),
}

pub(super) struct Link {
    pub index: u32,
    pub kind: Kind,
}

pub(super) struct Links {
    handle: Handle,
}

impl Links {
    pub fn connect() -> Result<Links, TunnelError> {
        let handle = netlink::connect().map_err(|source| TunnelError::Netlink {
            context: "opening a route netlink socket".into(),
            source,
        })?;
        Ok(Links { handle })
    }

    /// The device called `name` in this network namespace, if any.
    pub async fn find(&self, name: &str) -> Result<Option<Link>, TunnelError> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(Some(message)) => Ok(Some(Link {
                index: message.header.index,
                kind: kind_of(&message),
            })),
            Ok(None) => Ok(None),
            Err(e) if netlink::is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(TunnelError::Netlink {
                context: format!("looking up interface `{name}`"),
                source: netlink::to_io(e),
            }),
        }
    }

    /// `ip link add NAME type wireguard`. The error is left to the caller,
    /// which tells "no such module" (EOPNOTSUPP) from real failures.
    pub async fn create_wireguard(&self, name: &str) -> Result<(), rtnetlink::Error> {
        self.handle
            .link()
            .add(LinkWireguard::new(name).build())
            .execute()
            .await
    }

    pub async fn delete(&self, index: u32) -> io::Result<()> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(netlink::to_io)
    }

    /// Assigns `address`/128 (replacing it if it is there already).
    pub async fn add_address(&self, index: u32, address: Ipv6Addr) -> io::Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V6(address), 128)
            .replace()
            .execute()
            .await
            .map_err(netlink::to_io)
    }

    pub async fn set_up(&self, index: u32) -> io::Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(netlink::to_io)
    }
}

fn kind_of(message: &LinkMessage) -> Kind {
    let kind = message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
                LinkInfo::Kind(kind) => Some(kind),
                _ => None,
            }),
            _ => None,
        });
    match kind {
        Some(InfoKind::Wireguard) => Kind::Wireguard,
        Some(InfoKind::Tun) => Kind::Tun,
        Some(other) => Kind::Other(format!("a {other} device")),
        None => Kind::Other("a device of no link kind, such as a NIC".into()),
    }
}
