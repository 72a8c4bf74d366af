//! The broker's side of the tunnels: one WireGuard interface holding a peer
//! per client, each allowed exactly its prefix, and a route per prefix
//! through that interface.
//!
//! The interface is the kernel's when the module is there (and
//! `[wireguard] implementation` allows it), else wireguard-go's. Both outlive
//! the broker: [`Tunnel::open`] adopts an existing interface with its peers,
//! so a restart drops no tunnel. Routes carry their own protocol number,
//! [`ROUTE_PROTOCOL`], so [`Routes::list`] returns exactly the broker's.
//!
//! Everything here acts in the network namespace of the calling thread.

mod error;
mod link;
pub(crate) mod netlink;
mod routes;
mod userspace;
mod wireguard;

use std::{
    collections::HashMap,
    fmt, fs, io,
    net::{Ipv6Addr, SocketAddr},
    sync::Arc,
    time::SystemTime,
};

use ipnet::Ipv6Net;
use wireguard_control::{InterfaceName, Key};

pub use error::TunnelError;
pub use routes::{ROUTE_PROTOCOL, Routes};
pub use userspace::{SOCKET_DIR, socket_path};

use crate::config::{self, WireguardImplementation};
use link::{Kind, Links};
use wireguard::Control;

/// Peers set in one exchange with the device at most: a start-up with
/// 100,000 allocations set them all at once, and wireguard-go hung up in
/// the middle of the request (EPIPE); a thousand is one exchange for any
/// burst of a poll.
const PEERS_AT_ONCE: usize = 1000;

/// Which WireGuard implementation drives the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The kernel module.
    Kernel,
    /// wireguard-go, through its socket under [`SOCKET_DIR`].
    Userspace,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Kernel => "kernel",
            Backend::Userspace => "userspace (wireguard-go)",
        })
    }
}

/// One peer of the interface, as the interface reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub public_key: [u8; 32],
    /// Its IPv6 allowed IPs (the broker sets none of the other family).
    pub allowed_ips: Vec<Ipv6Net>,
    /// None until the first handshake.
    pub last_handshake: Option<SystemTime>,
    /// Where the peer's packets last came from (WireGuard roams with the
    /// client): None until it sent one, as the broker configures no
    /// endpoint of its own for a client.
    pub endpoint: Option<SocketAddr>,
}

/// The broker's WireGuard interface. Dropping it leaves the interface, its
/// peers and (for wireguard-go) the process running.
///
/// The peer methods block briefly (a netlink or UAPI exchange; wireguard-go
/// gets 5 s to answer) and work from any thread: the interface is found by
/// name, through the kernel's WireGuard netlink family in the calling
/// thread's namespace or through wireguard-go's socket.
#[derive(Debug)]
pub struct Tunnel {
    name: String,
    index: u32,
    listen_port: u16,
    public_key: Key,
    backend: Backend,
    control: Arc<Control>,
}

/// Reads a tunnel's peers apart from the [`Tunnel`] the daemon's loop owns:
/// the operator's servers ask the device themselves when asked.
#[derive(Clone, Debug)]
pub struct PeerReader {
    name: String,
    backend: Backend,
    control: Arc<Control>,
}

impl PeerReader {
    /// Every peer, read from the interface.
    pub fn peers(&self) -> Result<Vec<Peer>, TunnelError> {
        self.control.peers().map_err(|source| TunnelError::Control {
            name: self.name.clone(),
            backend: self.backend,
            action: "reading the peers",
            source,
        })
    }
}

/// Where [`Tunnel::open`] turns IPv6 forwarding on: the broker routes.
const FORWARDING: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

impl Tunnel {
    /// Opens the interface `cfg.interface`: adopts it when it exists (a
    /// kernel WireGuard link, or a TUN device whose wireguard-go answers),
    /// creates it otherwise — a kernel link when the module is there and
    /// `cfg.implementation` allows it, else a wireguard-go daemon, which
    /// keeps running after the broker exits. Then sets the private key and
    /// listen port, assigns `gateway`/128, brings the interface up and makes
    /// sure IPv6 forwarding is on.
    ///
    /// When a step after creating the interface fails, the interface is
    /// removed again; an adopted one is left as it was found.
    ///
    /// Acts in the calling thread's network namespace, and blocks that
    /// thread while wireguard-go starts (at most 15 s).
    pub async fn open(
        cfg: &config::Wireguard,
        private_key: &Key,
        gateway: Ipv6Addr,
    ) -> Result<Tunnel, TunnelError> {
        let name = cfg.interface.as_str();
        let interface_name = valid_name(name)?;
        enable_forwarding()?;
        let links = Links::connect()?;
        let (backend, created) = match links.find(name).await? {
            Some(link) => (adopt(name, &link.kind, cfg.implementation)?, false),
            None => (create(&links, name, cfg.implementation).await?, true),
        };
        let opened = Tunnel::configure(
            &links,
            name,
            interface_name,
            backend,
            private_key,
            cfg.listen_port,
            gateway,
        )
        .await;
        match opened {
            Ok(tunnel) => {
                tracing::info!(
                    interface = name,
                    index = tunnel.index,
                    backend = %backend,
                    listen_port = cfg.listen_port,
                    "{} WireGuard interface",
                    if created { "created" } else { "adopted" },
                );
                Ok(tunnel)
            }
            Err(e) => {
                if created {
                    remove(&links, name, backend).await;
                }
                Err(e)
            }
        }
    }

    async fn configure(
        links: &Links,
        name: &str,
        interface_name: InterfaceName,
        backend: Backend,
        private_key: &Key,
        listen_port: u16,
        gateway: Ipv6Addr,
    ) -> Result<Tunnel, TunnelError> {
        let control = Control::new(backend, interface_name);
        control
            .configure(private_key, listen_port)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::EADDRINUSE) => TunnelError::PortInUse {
                    name: name.into(),
                    port: listen_port,
                },
                _ => TunnelError::Control {
                    name: name.into(),
                    backend,
                    action: "setting the private key and listen port",
                    source,
                },
            })?;
        let index = links
            .find(name)
            .await?
            .ok_or_else(|| TunnelError::Netlink {
                context: format!("`{name}` vanished while being set up"),
                source: io::ErrorKind::NotFound.into(),
            })?
            .index;
        links
            .add_address(index, gateway)
            .await
            .map_err(|source| TunnelError::Gateway {
                name: name.into(),
                gateway,
                source,
            })?;
        links
            .set_up(index)
            .await
            .map_err(|source| TunnelError::Netlink {
                context: format!("bringing `{name}` up"),
                source,
            })?;
        Ok(Tunnel {
            name: name.into(),
            index,
            listen_port,
            public_key: private_key.get_public(),
            backend,
            control: Arc::new(control),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index, for [`Routes`].
    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    /// The broker's public key, which clients are given.
    pub fn public_key(&self) -> Key {
        self.public_key.clone()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The peers the interface can hold at most, when it has a limit:
    /// wireguard-go refuses a peer beyond 65,536 (its `MaxPeers`); the
    /// kernel module has no such limit.
    pub fn max_peers(&self) -> Option<u64> {
        match self.backend {
            Backend::Kernel => None,
            Backend::Userspace => Some(1 << 16),
        }
    }

    /// Every peer, read from the interface.
    pub fn peers(&self) -> Result<Vec<Peer>, TunnelError> {
        self.peer_reader().peers()
    }

    pub fn peer_reader(&self) -> PeerReader {
        PeerReader {
            name: self.name.clone(),
            backend: self.backend,
            control: self.control.clone(),
        }
    }

    /// Adds the peer, or replaces its allowed IPs, with exactly `prefix`.
    /// Idempotent. (WireGuard gives an allowed IP to one peer only: a peer
    /// that had `prefix` loses it.)
    pub fn set_peer(&self, public_key: &[u8; 32], prefix: Ipv6Net) -> Result<(), TunnelError> {
        self.control
            .set_peer(public_key, prefix)
            .map_err(self.failed("setting a peer"))
    }

    /// [`Tunnel::set_peer`] for each of `peers`, in one exchange with the
    /// device per [`PEERS_AT_ONCE`]. Idempotent.
    pub fn set_peers(&self, peers: &[([u8; 32], Ipv6Net)]) -> Result<(), TunnelError> {
        for chunk in peers.chunks(PEERS_AT_ONCE) {
            self.control
                .set_peers(chunk)
                .map_err(self.failed("setting peers"))?;
        }
        Ok(())
    }

    /// Removes the peers (known to be there: no read of the device first),
    /// one exchange per [`PEERS_AT_ONCE`].
    pub fn remove_peers(&self, public_keys: &[[u8; 32]]) -> Result<(), TunnelError> {
        for chunk in public_keys.chunks(PEERS_AT_ONCE) {
            self.control
                .remove_peers(chunk)
                .map_err(self.failed("removing peers"))?;
        }
        Ok(())
    }

    /// Removes the peer; false when there was none with that key.
    pub fn remove_peer(&self, public_key: &[u8; 32]) -> Result<bool, TunnelError> {
        if !self.peers()?.iter().any(|p| &p.public_key == public_key) {
            return Ok(false);
        }
        self.control
            .remove_peer(public_key)
            .map_err(self.failed("removing a peer"))?;
        Ok(true)
    }

    /// The peer's last handshake; None before the first one, and for a key
    /// that is no peer.
    pub fn last_handshake(&self, public_key: &[u8; 32]) -> Result<Option<SystemTime>, TunnelError> {
        Ok(self.last_handshakes()?.remove(public_key))
    }

    /// Every peer's last handshake, by public key, from one read of the
    /// device (peers that never had one are absent): what a check of many
    /// peers reads, rather than the whole device once per peer.
    pub fn last_handshakes(&self) -> Result<HashMap<[u8; 32], SystemTime>, TunnelError> {
        Ok(self
            .peers()?
            .into_iter()
            .filter_map(|p| Some((p.public_key, p.last_handshake?)))
            .collect())
    }

    fn failed(&self, action: &'static str) -> impl FnOnce(io::Error) -> TunnelError + '_ {
        move |source| TunnelError::Control {
            name: self.name.clone(),
            backend: self.backend,
            action,
            source,
        }
    }
}

/// What the configuration's check (config/check.rs) does, again, for
/// callers that did not come through it.
fn valid_name(name: &str) -> Result<InterfaceName, TunnelError> {
    let invalid = || TunnelError::InvalidName(name.into());
    if name.contains(char::is_whitespace) {
        return Err(invalid());
    }
    name.parse::<InterfaceName>().map_err(|_| invalid())
}

fn adopt(
    name: &str,
    kind: &Kind,
    implementation: WireguardImplementation,
) -> Result<Backend, TunnelError> {
    let backend = match kind {
        Kind::Wireguard => Backend::Kernel,
        Kind::Tun if userspace::Uapi::new(name).answers() => Backend::Userspace,
        Kind::Tun => {
            return Err(TunnelError::NotWireguard {
                name: name.into(),
                what: format!(
                    "a TUN device, but no wireguard-go answers at {}",
                    socket_path(name).display()
                ),
            });
        }
        Kind::Other(what) => {
            return Err(TunnelError::NotWireguard {
                name: name.into(),
                what: what.clone(),
            });
        }
    };
    match (implementation, backend) {
        (WireguardImplementation::Kernel, Backend::Userspace)
        | (WireguardImplementation::Userspace, Backend::Kernel) => {
            Err(TunnelError::ImplementationMismatch {
                name: name.into(),
                found: backend,
                wanted: implementation,
            })
        }
        _ => Ok(backend),
    }
}

async fn create(
    links: &Links,
    name: &str,
    implementation: WireguardImplementation,
) -> Result<Backend, TunnelError> {
    if implementation != WireguardImplementation::Userspace {
        match links.create_wireguard(name).await {
            Ok(()) => return Ok(Backend::Kernel),
            Err(e) if netlink::is_errno(&e, libc::EOPNOTSUPP) => {
                if implementation == WireguardImplementation::Kernel {
                    return Err(TunnelError::NoKernelModule(name.into()));
                }
                tracing::debug!("no WireGuard kernel module: using wireguard-go");
            }
            Err(e) => {
                return Err(TunnelError::Netlink {
                    context: format!("creating the WireGuard interface `{name}`"),
                    source: netlink::to_io(e),
                });
            }
        }
    }
    if userspace::Uapi::new(name).answers() {
        return Err(TunnelError::OtherNamespace {
            name: name.into(),
            socket: socket_path(name),
        });
    }
    userspace::start(name)?;
    Ok(Backend::Userspace)
}

/// Undoes [`create`] after a later step failed. Best effort: the error being
/// returned is the one that matters.
async fn remove(links: &Links, name: &str, backend: Backend) {
    let removed = match backend {
        Backend::Userspace => userspace::stop(name),
        Backend::Kernel => match links.find(name).await {
            Ok(Some(link)) => links.delete(link.index).await,
            Ok(None) => Ok(()),
            Err(e) => Err(io::Error::other(e.to_string())),
        },
    };
    if let Err(e) = removed {
        tracing::warn!(interface = name, "removing the half-made interface: {e}");
    }
}

/// Makes `upstream` keep accepting router advertisements once forwarding
/// is on: call it before [`Tunnel::open`]. Turning forwarding on makes the
/// kernel drop the default routes learned from advertisements, and ignore
/// new ones, on every interface whose `accept_ra` is not 2 — on a VPS that
/// learns its default route by SLAAC the broker would cut its own upstream.
/// Only the kernel's default (1: accept unless forwarding) is raised to 2;
/// an operator's explicit 0 (never) or 2 is kept.
pub fn keep_router_advertisements(upstream: &str) -> Result<(), TunnelError> {
    valid_name(upstream)?;
    // The name becomes a path.
    if upstream.contains('/') || upstream == "." || upstream == ".." {
        return Err(TunnelError::InvalidName(upstream.into()));
    }
    let path = format!("/proc/sys/net/ipv6/conf/{upstream}/accept_ra");
    let failed = |source| TunnelError::AcceptRa {
        interface: upstream.to_string(),
        path: path.clone(),
        source,
    };
    if fs::read_to_string(&path).map_err(failed)?.trim() == "1" {
        fs::write(&path, "2").map_err(failed)?;
        tracing::info!(
            interface = upstream,
            "accept_ra 1 → 2: router advertisements keep the default route with forwarding on"
        );
    }
    Ok(())
}

/// Has the upstream interface `index` receive every multicast frame. The
/// routers' solicitations go to the solicited-node groups of allocated
/// addresses, which the host never joins: a NIC that filters multicast by
/// group (virtio-net does) drops them before the XDP responder sees them.
pub async fn receive_all_multicast(index: u32) -> Result<(), TunnelError> {
    let failed = |source| TunnelError::Netlink {
        context: format!("turning allmulticast on for interface index {index}"),
        source,
    };
    let handle = netlink::connect().map_err(failed)?;
    let message = rtnetlink::LinkUnspec::new_with_index(index)
        .allmulticast(true)
        .build();
    handle
        .link()
        .set(message)
        .execute()
        .await
        .map_err(|e| failed(netlink::to_io(e)))
}

fn enable_forwarding() -> Result<(), TunnelError> {
    let failed = |source| TunnelError::Forwarding {
        path: FORWARDING,
        source,
    };
    if fs::read_to_string(FORWARDING).map_err(failed)?.trim() != "1" {
        fs::write(FORWARDING, "1").map_err(failed)?;
        tracing::info!("turned IPv6 forwarding on ({FORWARDING})");
    }
    Ok(())
}
