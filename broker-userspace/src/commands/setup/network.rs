//! The host side: upstream interface, the pool and allocation size, WireGuard.

use std::path::Path;

use anyhow::Context as _;
use broker_contracts::protocol;
use broker_userspace::{
    config, host_ipv4,
    host_ipv6::{self, HostIpv6},
    ipam::Pool,
    numbers::thousands,
};
use ipnet::Ipv6Net;

use super::{Setup, ask::Question, indent};

/// An allocation size and how many allocations it gives.
pub(super) struct Allocations(u8, u128);

impl std::fmt::Display for Allocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{} ({} allocations)", self.0, thousands(self.1))
    }
}

impl Setup<'_> {
    pub(super) fn upstream_interface(&mut self, host: &HostIpv6) -> anyhow::Result<String> {
        self.ask.say(&indent(&host.to_text()));
        Ok(self.ask.value(
            Question {
                text: "Upstream interface (toward the provider's router)",
                flag: "--upstream-interface",
                given: self.args.upstream_interface.clone(),
                default: host.upstream.as_ref().map(|u| u.interface.clone()),
            },
            |name| {
                let known = std::ffi::CString::new(name)
                    .ok()
                    // SAFETY: a NUL-terminated name; the call only reads it.
                    .is_some_and(|c| unsafe { libc::if_nametoindex(c.as_ptr()) } != 0);
                if known {
                    Ok(name.to_string())
                } else {
                    Err(format!("this host has no interface {name:?}"))
                }
            },
        )?)
    }

    pub(super) fn pool(&mut self, host: &HostIpv6, upstream: &str) -> anyhow::Result<Pool> {
        let candidates: Vec<Ipv6Net> = host
            .pools
            .iter()
            .filter(|p| !p.allocation_sizes.is_empty())
            .map(|p| p.prefix)
            .collect();
        if !candidates.is_empty() && self.ask.interactive() && self.args.pool.is_none() {
            self.ask.say("  Pools found:");
            for (i, p) in candidates.iter().enumerate() {
                self.ask.say(&format!("    {}) {p}", i + 1));
            }
        }
        let default = host
            .pools
            .iter()
            .find(|p| p.upstream && p.interface.as_deref() == Some(upstream))
            .or_else(|| host.pools.first())
            .filter(|p| !p.allocation_sizes.is_empty())
            .map(|p| p.prefix.to_string());
        let upstream_prefix = self.ask.value(
            Question {
                text: "Pool (a prefix, or a number from the list)",
                flag: "--pool",
                given: self.args.pool.clone(),
                default,
            },
            |text| {
                let prefix = match text.parse::<usize>() {
                    Ok(n) if (1..=candidates.len()).contains(&n) => candidates[n - 1],
                    Ok(_) => {
                        return Err(format!("pick 1 to {}, or type a prefix", candidates.len()));
                    }
                    Err(_) => text.parse::<Ipv6Net>().map_err(|_| {
                        format!("{text:?} is not an IPv6 prefix (e.g. 2001:db8:100::/48)")
                    })?,
                };
                if prefix.trunc() != prefix {
                    return Err(format!(
                        "{prefix} has host bits set: did you mean {}?",
                        prefix.trunc()
                    ));
                }
                if host_ipv6::allocation_sizes(prefix).is_empty() {
                    return Err(format!("{prefix} is too small to give any allocation"));
                }
                Ok(prefix)
            },
        )?;
        let sizes = host_ipv6::allocation_sizes(upstream_prefix);
        let (shortest, longest) = (sizes[0].prefix_len, sizes[sizes.len() - 1].prefix_len);
        let suggested = if upstream_prefix.prefix_len() < 64 {
            64
        } else {
            (upstream_prefix.prefix_len() + 8).min(longest)
        };
        let size = self.ask.value(
            Question {
                text: "Allocation size: the prefix length each client gets",
                flag: "--allocation-size",
                given: self.args.allocation_size.clone(),
                default: Some(suggested.to_string()),
            },
            |text| {
                let len: u8 = text
                    .trim_start_matches('/')
                    .parse()
                    .map_err(|_| format!("{text:?} is not a prefix length (e.g. 64)"))?;
                // The daemon's own rule (`check-config` applies the same).
                Pool::new(upstream_prefix, len).map_err(|e| e.to_string())?;
                match sizes.iter().find(|s| s.prefix_len == len) {
                    Some(s) => Ok(Allocations(len, s.allocations)),
                    None => Err(format!(
                        "a /{len} from {upstream_prefix} leaves no allocation (the broker keeps one for itself): pick /{shortest} to /{longest}"
                    )),
                }
            },
        )?;
        Ok(Pool::new(upstream_prefix, size.0)?)
    }

    pub(super) fn wireguard(&mut self, key_file: &Path) -> anyhow::Result<config::Wireguard> {
        let interface = self.ask.value(
            Question {
                text: "WireGuard interface",
                flag: "--wg-interface",
                given: self.args.wg_interface.clone(),
                default: Some("wg-broker".into()),
            },
            |name| {
                let ok = !name.is_empty()
                    && name.len() <= 15
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if ok {
                    Ok(name.to_string())
                } else {
                    Err("1 to 15 letters, digits, '-', '_' or '.'".into())
                }
            },
        )?;
        let listen_port = self.ask.value(
            Question {
                text: "WireGuard port (UDP)",
                flag: "--wg-port",
                given: self.args.wg_port.clone(),
                default: Some("51820".into()),
            },
            |text| match text.parse::<u16>() {
                Ok(port) if port > 0 => Ok(port),
                _ => Err(format!("{text:?} is not a port (1 to 65535)")),
            },
        )?;
        let detected = self
            .runtime
            .block_on(host_ipv4::endpoint_address())
            .context("reading the host's IPv4 addresses")?;
        let endpoint = self.ask.value(
            Question {
                text: "Endpoint clients connect to (host:port)",
                flag: "--wg-endpoint",
                given: self.args.wg_endpoint.clone(),
                default: detected.map(|a| format!("{a}:{listen_port}")),
            },
            |text| {
                if protocol::is_endpoint(text) {
                    Ok(text.to_string())
                } else {
                    Err(format!(
                        "{text:?} is not host:port (e.g. 203.0.113.10:{listen_port} or [2001:db8::1]:{listen_port})"
                    ))
                }
            },
        )?;
        Ok(config::Wireguard {
            interface,
            listen_port,
            endpoint,
            private_key_file: key_file.to_path_buf(),
            implementation: self.args.wg_implementation.unwrap_or_default(),
            handshake_timeout_secs: 120,
            allow_to_broker: Vec::new(),
        })
    }
}
