use std::{io, net::Ipv6Addr, path::PathBuf, process::ExitStatus};

use ipnet::Ipv6Net;
use thiserror::Error;

use super::Backend;
use crate::config::WireguardImplementation;

/// Everything that can go wrong with the tunnel interface and its routes.
/// Messages name the interface, port or prefix involved, never a key.
#[derive(Debug, Error)]
pub enum TunnelError {
    #[error("`{0}` is not an interface name (1 to 15 characters, no '/', whitespace or NUL)")]
    InvalidName(String),
    #[error(
        "[wireguard] implementation = \"kernel\", but this kernel has no WireGuard module (creating `{0}` was refused); load it, or use implementation = \"auto\" or \"userspace\" (wireguard-go)"
    )]
    NoKernelModule(String),
    #[error("`{name}` exists but is not a WireGuard interface ({what})")]
    NotWireguard { name: String, what: String },
    #[error(
        "`{name}` exists as a {found} WireGuard interface, but [wireguard] implementation = \"{wanted}\"; delete it or change the setting"
    )]
    ImplementationMismatch {
        name: String,
        found: Backend,
        wanted: WireguardImplementation,
    },
    #[error(
        "a wireguard-go for `{name}` answers at {socket}, but there is no `{name}` in this network namespace (it runs in another one?)"
    )]
    OtherNamespace { name: String, socket: PathBuf },
    #[error("wireguard-go is not installed (`apt install wireguard-go`)")]
    WireguardGoMissing,
    #[error("starting wireguard-go for `{name}`")]
    WireguardGoStart {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("wireguard-go for `{name}` failed ({status}): {output}")]
    WireguardGoFailed {
        name: String,
        status: ExitStatus,
        output: String,
    },
    #[error("wireguard-go for `{name}` did not finish starting within {secs} s")]
    WireguardGoHung { name: String, secs: u64 },
    #[error("wireguard-go for `{name}` does not answer at {socket} (waited {secs} s)")]
    WireguardGoSilent {
        name: String,
        socket: PathBuf,
        secs: u64,
        #[source]
        source: io::Error,
    },
    #[error("[wireguard] listen_port {port} is already in use (setting it on `{name}`)")]
    PortInUse { name: String, port: u16 },
    #[error("{action} on `{name}` ({backend} WireGuard)")]
    Control {
        name: String,
        backend: Backend,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{context}")]
    Netlink {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("route {prefix} via interface index {ifindex}")]
    Route {
        prefix: Ipv6Net,
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    #[error("assigning the gateway address {gateway}/128 to `{name}`")]
    Gateway {
        name: String,
        gateway: Ipv6Addr,
        #[source]
        source: io::Error,
    },
    #[error("turning IPv6 forwarding on ({path})")]
    Forwarding {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("keeping router advertisements on {interface} ({path})")]
    AcceptRa {
        interface: String,
        path: String,
        #[source]
        source: io::Error,
    },
}
