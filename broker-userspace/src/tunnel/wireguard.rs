//! Configuring the WireGuard device: its private key and listen port, its
//! peers. The kernel module is driven through wireguard-control (generic
//! netlink), wireguard-go through its UAPI socket. Keys travel only over
//! those two channels, never through argv.

use std::{io, net::IpAddr};

use ipnet::Ipv6Net;
use wireguard_control::{self as wg, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};

use super::{Backend, Peer, userspace::Uapi};

#[derive(Debug)]
pub(super) enum Control {
    Kernel(InterfaceName),
    Userspace(Uapi),
}

impl Control {
    pub fn new(backend: Backend, name: InterfaceName) -> Control {
        match backend {
            Backend::Kernel => Control::Kernel(name),
            Backend::Userspace => Control::Userspace(Uapi::new(&name.as_str_lossy())),
        }
    }

    /// Sets the private key and listen port. Both are no-ops when unchanged
    /// (sessions and peers are kept).
    pub fn configure(&self, private_key: &Key, listen_port: u16) -> io::Result<()> {
        match self {
            Control::Kernel(name) => DeviceUpdate::new()
                .set_private_key(private_key.clone())
                .set_listen_port(listen_port)
                .apply(name, wg::Backend::Kernel),
            Control::Userspace(uapi) => uapi.set(&format!(
                "private_key={}\nlisten_port={listen_port}\n",
                hex::encode(private_key.as_bytes())
            )),
        }
    }

    pub fn peers(&self) -> io::Result<Vec<Peer>> {
        match self {
            Control::Kernel(name) => Ok(wg::Device::get(name, wg::Backend::Kernel)?
                .peers
                .into_iter()
                .map(|info| Peer {
                    public_key: info.config.public_key.0,
                    allowed_ips: info
                        .config
                        .allowed_ips
                        .iter()
                        .filter_map(|ip| match ip.address {
                            IpAddr::V6(address) => Ipv6Net::new(address, ip.cidr).ok(),
                            IpAddr::V4(_) => None,
                        })
                        .collect(),
                    last_handshake: info.stats.last_handshake_time,
                    endpoint: info.config.endpoint,
                })
                .collect()),
            Control::Userspace(uapi) => Ok(uapi.get()?.peers),
        }
    }

    /// Adds the peer, or replaces its allowed IPs, with exactly `prefix`.
    pub fn set_peer(&self, public_key: &[u8; 32], prefix: Ipv6Net) -> io::Result<()> {
        let prefix = prefix.trunc();
        match self {
            Control::Kernel(name) => DeviceUpdate::new()
                .add_peer(
                    PeerConfigBuilder::new(&Key(*public_key))
                        .replace_allowed_ips()
                        .add_allowed_ip(IpAddr::V6(prefix.network()), prefix.prefix_len()),
                )
                .apply(name, wg::Backend::Kernel),
            Control::Userspace(uapi) => uapi.set(&format!(
                "public_key={}\nreplace_allowed_ips=true\nallowed_ip={prefix}\n",
                hex::encode(public_key)
            )),
        }
    }

    /// [`Control::set_peer`] for each of `peers`, in one exchange with the
    /// device: a burst of allocations is one netlink message or one UAPI
    /// `set` instead of one each.
    pub fn set_peers(&self, peers: &[([u8; 32], Ipv6Net)]) -> io::Result<()> {
        match self {
            Control::Kernel(name) => {
                let builders: Vec<PeerConfigBuilder> = peers
                    .iter()
                    .map(|(key, prefix)| {
                        let prefix = prefix.trunc();
                        PeerConfigBuilder::new(&Key(*key))
                            .replace_allowed_ips()
                            .add_allowed_ip(IpAddr::V6(prefix.network()), prefix.prefix_len())
                    })
                    .collect();
                DeviceUpdate::new()
                    .add_peers(&builders)
                    .apply(name, wg::Backend::Kernel)
            }
            Control::Userspace(uapi) => uapi.set(
                &peers
                    .iter()
                    .map(|(key, prefix)| {
                        format!(
                            "public_key={}\nreplace_allowed_ips=true\nallowed_ip={}\n",
                            hex::encode(key),
                            prefix.trunc()
                        )
                    })
                    .collect::<String>(),
            ),
        }
    }

    /// Removes the peer; removing an absent one is not an error.
    pub fn remove_peer(&self, public_key: &[u8; 32]) -> io::Result<()> {
        self.remove_peers(std::slice::from_ref(public_key))
    }

    /// Removes the peers, in one exchange; absent ones are not an error.
    pub fn remove_peers(&self, public_keys: &[[u8; 32]]) -> io::Result<()> {
        match self {
            Control::Kernel(name) => public_keys
                .iter()
                .fold(DeviceUpdate::new(), |update, key| {
                    update.remove_peer_by_key(&Key(*key))
                })
                .apply(name, wg::Backend::Kernel),
            Control::Userspace(uapi) => uapi.set(
                &public_keys
                    .iter()
                    .map(|key| format!("public_key={}\nremove=true\n", hex::encode(key)))
                    .collect::<String>(),
            ),
        }
    }
}
