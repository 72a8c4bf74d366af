//! The daemon's own nftables table: tunnel clients reach the broker itself
//! only with the ICMPv6 a tunnel needs (ping to the gateway, path MTU,
//! errors), replies to what the broker started, and the services the
//! operator lists in `[wireguard] allow_to_broker`. Without it the
//! WireGuard interface accepts anything addressed to the host, and every
//! client reaches every service the broker runs (sshd, the API, a local
//! RPC node…). Forwarding (clients ↔ internet) is not touched.
//!
//! The table is `inet blockhost_broker`, replaced as a whole in one `nft`
//! transaction (create, delete, create: atomic, so a restart never leaves
//! a moment without it). It stays when the daemon stops (like the pins:
//! the tunnels keep running), and goes with `blockhost-broker firewall
//! remove` or the package's removal. Another table on the same hook (the
//! image's `inet filter`) filters independently: a packet must be accepted
//! by both.
//!
//! `nft -f -` rather than netlink from Rust: the ruleset reads as what it
//! is, `nft` validates it, and it needs only CAP_NET_ADMIN, which the
//! service passes to its children as an ambient capability.

use std::{
    fmt,
    io::Write as _,
    process::{Command, Stdio},
    str::FromStr,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The table's family and name (`nft list table inet blockhost_broker`).
pub const TABLE: &str = "inet blockhost_broker";

/// The ICMPv6 types a tunnel client may send to the broker: ping, and what
/// path MTU discovery and error reporting need (neighbour discovery is
/// listed for completeness: WireGuard is layer 3 and sends none).
const ICMPV6_TYPES: &str = "destination-unreachable, packet-too-big, time-exceeded, \
     parameter-problem, echo-request, echo-reply, nd-neighbor-solicit, nd-neighbor-advert";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error(
        "running nft (Debian package nftables) to {what}: {source}; the daemon filters what tunnel clients may send to the host with it"
    )]
    Spawn {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("nft refused to {what}: {stderr}")]
    Nft { what: &'static str, stderr: String },
    #[error(
        "interface name {0:?} cannot be put in an nftables rule (quote, backslash or control character)"
    )]
    InterfaceName(String),
}

/// `tcp` or `udp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One entry of `allow_to_broker`: `tcp/8080`, `udp/5000-5010`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowed {
    pub protocol: Protocol,
    pub first: u16,
    pub last: u16,
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol.name(), self.first)?;
        if self.last != self.first {
            write!(f, "-{}", self.last)?;
        }
        Ok(())
    }
}

impl FromStr for Allowed {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("\"{s}\" {why} (e.g. \"tcp/8080\" or \"udp/5000-5010\")");
        let (protocol, ports) = s
            .split_once('/')
            .ok_or_else(|| bad("is not protocol/port"))?;
        let protocol = match protocol {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => return Err(bad("has a protocol other than tcp or udp")),
        };
        let port = |p: &str| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad("has a port that is not 1 to 65535")),
            Ok(n) => Ok(n),
        };
        let (first, last) = match ports.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(ports)?, port(ports)?),
        };
        if first > last {
            return Err(bad("has a range whose first port is above its last"));
        }
        Ok(Allowed {
            protocol,
            first,
            last,
        })
    }
}

impl Serialize for Allowed {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Allowed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether `name` can be written between double quotes in a ruleset.
pub fn quotable(name: &str) -> bool {
    !name.contains(['"', '\\']) && !name.chars().any(char::is_control)
}

/// The `nft -f` text that replaces the table: from `interface` (the
/// WireGuard interface) to the host, what the module says, and nothing
/// else. Refused for a name `nft` could not take literally.
pub fn ruleset(interface: &str, allowed: &[Allowed]) -> Result<String, FirewallError> {
    if !quotable(interface) {
        return Err(FirewallError::InterfaceName(interface.into()));
    }
    let mut services = String::new();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let ports: Vec<String> = allowed
            .iter()
            .filter(|a| a.protocol == protocol)
            .map(|a| match a.first == a.last {
                true => a.first.to_string(),
                false => format!("{}-{}", a.first, a.last),
            })
            .collect();
        if !ports.is_empty() {
            services.push_str(&format!(
                "        {} dport {{ {} }} accept\n",
                protocol.name(),
                ports.join(", ")
            ));
        }
    }
    // The first two lines make the delete succeed whether or not the table
    // exists; the whole file is one transaction.
    Ok(format!(
        "table {TABLE}\n\
         delete table {TABLE}\n\
         table {TABLE} {{\n\
         \x20   chain input {{\n\
         \x20       type filter hook input priority filter; policy accept;\n\
         \x20       iifname \"{interface}\" jump from_tunnel\n\
         \x20   }}\n\
         \x20   chain from_tunnel {{\n\
         \x20       ct state established,related accept\n\
         \x20       icmpv6 type {{ {ICMPV6_TYPES} }} accept\n\
         {services}\
         \x20       meta l4proto tcp counter reject with tcp reset\n\
         \x20       counter reject with icmpx admin-prohibited\n\
         \x20   }}\n\
         }}\n"
    ))
}

/// Installs (or replaces) the table.
pub fn install(interface: &str, allowed: &[Allowed]) -> Result<(), FirewallError> {
    let text = ruleset(interface, allowed)?;
    nft(&["-f", "-"], Some(&text), "install the table")
}

/// Deletes the table; false when there was none.
pub fn remove() -> Result<bool, FirewallError> {
    let list = ["list", "table", "inet", "blockhost_broker"];
    if nft(&list, None, "list the table").is_err() {
        return Ok(false);
    }
    nft(
        &["delete", "table", "inet", "blockhost_broker"],
        None,
        "delete the table",
    )?;
    Ok(true)
}

fn nft(args: &[&str], stdin: Option<&str>, what: &'static str) -> Result<(), FirewallError> {
    let spawn = |source| FirewallError::Spawn { what, source };
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(FirewallError::Nft {
            what,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_print_back() {
        for text in ["tcp/8080", "udp/53", "tcp/5000-5010", "udp/1-65535"] {
            let a: Allowed = text.parse().unwrap();
            assert_eq!(a.to_string(), text);
        }
        assert_eq!(
            "tcp/22-22".parse::<Allowed>().unwrap().to_string(),
            "tcp/22"
        );
    }

    #[test]
    fn bad_entries_say_why() {
        for (text, why) in [
            ("8080", "not protocol/port"),
            ("sctp/9", "other than tcp or udp"),
            ("tcp/0", "not 1 to 65535"),
            ("tcp/65536", "not 1 to 65535"),
            ("tcp/", "not 1 to 65535"),
            ("udp/10-5", "first port is above its last"),
            ("TCP/22", "other than tcp or udp"),
        ] {
            let e = text.parse::<Allowed>().unwrap_err();
            assert!(e.contains(why) && e.contains(text), "{text}: {e}");
        }
    }

    #[test]
    fn the_ruleset_opens_only_what_is_listed() {
        let allowed = ["tcp/8080", "udp/53", "tcp/9000-9010"].map(|t| t.parse().unwrap());
        let text = ruleset("wg-broker", &allowed).unwrap();
        assert!(
            text.contains("iifname \"wg-broker\" jump from_tunnel"),
            "{text}"
        );
        assert!(
            text.contains("tcp dport { 8080, 9000-9010 } accept"),
            "{text}"
        );
        assert!(text.contains("udp dport { 53 } accept"), "{text}");
        let none = ruleset("wg-broker", &[]).unwrap();
        assert!(!none.contains("dport"), "{none}");
    }

    #[test]
    fn an_interface_name_that_would_escape_its_quotes_is_refused() {
        for name in ["wg\"x", "wg\\", "wg\n"] {
            assert!(matches!(
                ruleset(name, &[]),
                Err(FirewallError::InterfaceName(_))
            ));
        }
    }
}
