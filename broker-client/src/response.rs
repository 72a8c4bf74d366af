//! Waiting for the broker's answer to one request and reading it
//! (wire-protocol §4): the 8-byte big-endian request id, then ECIES to our
//! server key. An answer for another request id, or one we cannot decrypt,
//! is stale: the caller submits a new request.

use std::{
    net::Ipv6Addr,
    time::{Duration, Instant},
};

use alloy::primitives::{Address, U256};
use broker_contracts::{
    BrokerRequests,
    chain::Connection,
    protocol::{self, ResponsePayload},
};
use ipnet::Ipv6Net;

use crate::keys::parse_wg_key;

// BrokerRequests.RequestStatus
const PENDING: u8 = 0;
const APPROVED: u8 = 1;

/// How a wait ended.
#[derive(Debug)]
pub enum Outcome {
    /// A valid answer to our request.
    Answer(Answer),
    /// Not an answer to this request from this server: submit a new one.
    Stale(String),
    /// The request left the Pending state without an answer (expired,
    /// released, or overwritten by a newer request for the NFT contract).
    Ended(String),
    /// The broker answered with something no client can use.
    Bad(String),
    /// No answer in time.
    Timeout,
}

#[derive(Clone, Debug)]
pub struct Answer {
    pub payload: ResponsePayload,
    pub prefix: Ipv6Net,
}

pub struct Wait<'a> {
    pub chain: &'a Connection,
    pub requests: Address,
    pub request_id: u64,
    pub server_secret: &'a [u8; 32],
    pub timeout: Duration,
    pub poll: Duration,
    /// For progress lines ("broker #2").
    pub label: &'a str,
    /// The server's own networks, which no answer may overlap.
    pub own: &'a [Ipv6Net],
}

/// How often a progress line is printed while nothing happens.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

impl Wait<'_> {
    /// Polls `getRequest` until the request is answered or ended, or the
    /// timeout passes. RPC trouble while polling is reported and retried
    /// until the deadline (the endpoint, not the broker, is failing).
    pub async fn run(&self) -> Outcome {
        let contract = BrokerRequests::new(self.requests, self.chain.provider());
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut last_progress = started;
        eprintln!(
            "waiting for {} to answer request {} (up to {:.0}s)",
            self.label,
            self.request_id,
            self.timeout.as_secs_f64()
        );
        loop {
            match self
                .chain
                .view(
                    "getRequest",
                    contract.getRequest(U256::from(self.request_id)).call(),
                )
                .await
            {
                Ok(request) => {
                    let status = request.status;
                    if status == APPROVED {
                        return decode(
                            &request.responsePayload,
                            self.request_id,
                            self.server_secret,
                            self.own,
                        );
                    }
                    if status != PENDING {
                        return Outcome::Ended(format!(
                            "request {} ended on chain without an answer (status {status}: expired, released, or overwritten by a newer request for the NFT contract)",
                            self.request_id
                        ));
                    }
                }
                Err(e) => eprintln!("  looking for the answer: {e}; retrying"),
            }
            let now = Instant::now();
            if now >= deadline {
                return Outcome::Timeout;
            }
            if now.duration_since(last_progress) >= PROGRESS_EVERY {
                eprintln!(
                    "  still waiting for {} ({:.0}s of {:.0}s)",
                    self.label,
                    now.duration_since(started).as_secs_f64(),
                    self.timeout.as_secs_f64()
                );
                last_progress = now;
            }
            tokio::time::sleep(self.poll.min(deadline - now)).await;
        }
    }
}

/// Reads an on-chain response to request `expected_id`. `own` are the
/// networks of this server's own addresses (see [`own_networks`]).
pub fn decode(framed: &[u8], expected_id: u64, secret: &[u8; 32], own: &[Ipv6Net]) -> Outcome {
    let (id, ciphertext) = match protocol::unframe_response(framed) {
        Ok(parts) => parts,
        Err(_) => {
            return Outcome::Stale(format!(
                "the answer is {} bytes, shorter than a request id",
                framed.len()
            ));
        }
    };
    if id != expected_id {
        return Outcome::Stale(format!(
            "the answer carries request id {id}, not {expected_id}"
        ));
    }
    let plaintext = match protocol::decrypt(secret, ciphertext) {
        Ok(p) => p,
        // The only failure decrypt has for a well-formed key.
        Err(_) => {
            return Outcome::Stale("the answer does not decrypt with this server's key".into());
        }
    };
    let payload = match ResponsePayload::parse(&plaintext) {
        Ok(p) => p,
        Err(e) => return Outcome::Bad(e.to_string()),
    };
    match validate(&payload, own) {
        Ok(prefix) => Outcome::Answer(Answer { payload, prefix }),
        Err(reason) => Outcome::Bad(reason),
    }
}

/// The fields go into a wg-quick configuration and other components'
/// files: each must be exactly what it claims to be.
fn validate(p: &ResponsePayload, own: &[Ipv6Net]) -> Result<Ipv6Net, String> {
    let prefix: Ipv6Net = p
        .prefix
        .parse()
        .map_err(|_| format!("prefix {:?} is not an IPv6 prefix", p.prefix))?;
    check_prefix(prefix, own)?;
    p.gateway
        .parse::<Ipv6Addr>()
        .map_err(|_| format!("gateway {:?} is not an IPv6 address", p.gateway))?;
    parse_wg_key("brokerPubkey", &p.broker_pubkey).map_err(|e| e.to_string())?;
    crate::install::check_endpoint(&p.broker_endpoint).map_err(|e| e.to_string())?;
    if let Some(zone) = &p.dns_zone
        && !zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    {
        return Err(format!("dnsZone {zone:?} is not a domain name"));
    }
    Ok(prefix)
}

/// 2000::/3, the global unicast space (RFC 4291 §2.4, IANA).
const GLOBAL_UNICAST: Ipv6Net = match Ipv6Net::new(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3) {
    Ok(net) => net,
    Err(_) => panic!("2000::/3"),
};

/// A prefix the server can route ::/0 through and give to its VMs. A broker
/// answering a link-local, ULA, multicast or mapped prefix, one with host
/// bits (not the network the broker routes), or one covering the server's
/// own networks would cut the server off its own LAN or hijack its
/// addresses: refused like any other unusable answer.
pub fn check_prefix(prefix: Ipv6Net, own: &[Ipv6Net]) -> Result<(), String> {
    if prefix.prefix_len() >= 128 {
        return Err(format!("prefix {prefix} leaves no address for the tunnel"));
    }
    if prefix.addr() != prefix.network() {
        return Err(format!(
            "prefix {prefix} has host bits set (its network is {})",
            prefix.trunc()
        ));
    }
    if !GLOBAL_UNICAST.contains(&prefix) {
        return Err(format!(
            "prefix {prefix} is not global unicast (outside 2000::/3)"
        ));
    }
    if let Some(net) = own
        .iter()
        .find(|net| net.contains(&prefix) || prefix.contains(*net))
    {
        return Err(format!(
            "prefix {prefix} overlaps this server's own network {net}"
        ));
    }
    Ok(())
}

/// The networks of this server's global IPv6 addresses (address and
/// netmask of every interface), except those inside `ours`: the prefix of
/// the allocation being replaced, whose tunnel address (and VMs) may be up
/// already and which a renewal legitimately answers again.
pub fn own_networks(ours: Option<Ipv6Net>) -> std::io::Result<Vec<Ipv6Net>> {
    let mut nets = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list it allocated, freed below
    // with freeifaddrs; nothing keeps pointers into it.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: a non-null entry of the list getifaddrs returned.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        let (Some(addr), Some(mask)) = (sin6(entry.ifa_addr), sin6(entry.ifa_netmask)) else {
            continue;
        };
        let len = u128::from(mask).leading_ones() as u8;
        let Ok(net) = Ipv6Net::new(addr, len) else {
            continue;
        };
        if !GLOBAL_UNICAST.contains(&addr) || ours.is_some_and(|o| o.contains(&addr)) {
            continue;
        }
        nets.push(net.trunc());
    }
    // SAFETY: the list from getifaddrs above, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(nets)
}

/// The IPv6 address of a `sockaddr`, when it is one.
fn sin6(sa: *const libc::sockaddr) -> Option<Ipv6Addr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: non-null, from getifaddrs; its family says which struct it is.
    unsafe {
        if i32::from((*sa).sa_family) != libc::AF_INET6 {
            return None;
        }
        let sa6 = &*(sa as *const libc::sockaddr_in6);
        Some(Ipv6Addr::from(sa6.sin6_addr.s6_addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::WgKeys;

    fn payload() -> ResponsePayload {
        ResponsePayload {
            prefix: "2001:db8:0:1::100/120".into(),
            gateway: "2001:db8:0:1::2".into(),
            broker_pubkey: WgKeys::generate().public.to_base64(),
            broker_endpoint: "203.0.113.10:51820".into(),
            dns_zone: None,
        }
    }

    fn answer(id: u64, to: &[u8; 65], p: &ResponsePayload) -> Vec<u8> {
        protocol::frame_response(id, &protocol::encrypt(to, p.to_json().as_bytes()).unwrap())
    }

    #[test]
    fn reads_an_answer_and_spots_stale_ones() {
        let (sk, pk) = ecies::utils::generate_keypair();
        let (_, other) = ecies::utils::generate_keypair();
        let secret = sk.serialize();
        for id in [0u64, 1, 255, 256, 0x1234_5678, u64::MAX] {
            match decode(&answer(id, &pk.serialize(), &payload()), id, &secret, &[]) {
                Outcome::Answer(a) => assert_eq!(a.prefix.to_string(), "2001:db8:0:1::100/120"),
                other => panic!("{id}: {other:?}"),
            }
        }
        let wrong_id = decode(&answer(5, &pk.serialize(), &payload()), 6, &secret, &[]);
        assert!(matches!(wrong_id, Outcome::Stale(ref r) if r.contains("request id 5")));
        let other_key = decode(&answer(6, &other.serialize(), &payload()), 6, &secret, &[]);
        assert!(matches!(other_key, Outcome::Stale(ref r) if r.contains("decrypt")));
        assert!(matches!(
            decode(&[0, 1], 1, &secret, &[]),
            Outcome::Stale(_)
        ));
    }

    #[test]
    fn refuses_answers_that_would_inject_configuration() {
        let (sk, pk) = ecies::utils::generate_keypair();
        let bad = [
            ResponsePayload {
                broker_endpoint: "203.0.113.10:51820\nPostUp = touch /x".into(),
                ..payload()
            },
            ResponsePayload {
                broker_pubkey: "x\nPostUp = y".into(),
                ..payload()
            },
            ResponsePayload {
                prefix: "not a prefix".into(),
                ..payload()
            },
            ResponsePayload {
                gateway: "192.0.2.1".into(),
                ..payload()
            },
            ResponsePayload {
                dns_zone: Some("a b".into()),
                ..payload()
            },
        ];
        for p in bad {
            let out = decode(&answer(3, &pk.serialize(), &p), 3, &sk.serialize(), &[]);
            assert!(matches!(out, Outcome::Bad(_)), "{p:?}: {out:?}");
        }
    }

    /// Issue 14 item 14: answers the server cannot safely route through or
    /// hand to its VMs.
    #[test]
    fn refuses_prefixes_that_are_not_a_global_network_of_its_own() {
        let (sk, pk) = ecies::utils::generate_keypair();
        let own: Vec<Ipv6Net> = vec!["2001:db8:7::/64".parse().unwrap()];
        for (prefix, why) in [
            ("fd00:1::/120", "not global unicast"),
            ("fe80::/64", "not global unicast"),
            ("ff02::/120", "not global unicast"),
            ("::ffff:0:0/120", "not global unicast"),
            ("::/0", "not global unicast"),
            ("2001:db8:0:1::101/120", "host bits"),
            ("2001:db8:0:1::1/64", "host bits"),
            (
                "2001:db8:7::100/120",
                "overlaps this server's own network 2001:db8:7::/64",
            ),
            (
                "2001:db8::/32",
                "overlaps this server's own network 2001:db8:7::/64",
            ),
            ("2001:db8:0:1::1/128", "leaves no address"),
        ] {
            let p = ResponsePayload {
                prefix: prefix.into(),
                ..payload()
            };
            match decode(&answer(3, &pk.serialize(), &p), 3, &sk.serialize(), &own) {
                Outcome::Bad(reason) => assert!(reason.contains(why), "{prefix}: {reason}"),
                other => panic!("{prefix}: {other:?}"),
            }
        }
        for prefix in ["2001:db8:0:1::100/120", "2001:db8:8::/64", "3fff::/120"] {
            let p = ResponsePayload {
                prefix: prefix.into(),
                ..payload()
            };
            let out = decode(&answer(3, &pk.serialize(), &p), 3, &sk.serialize(), &own);
            assert!(matches!(out, Outcome::Answer(_)), "{prefix}: {out:?}");
        }
    }

    #[test]
    fn own_networks_skip_the_allocation_being_replaced() {
        // Loopback is not global: the list holds only global networks.
        let all = own_networks(None).unwrap();
        assert!(all.iter().all(|n| GLOBAL_UNICAST.contains(n)), "{all:?}");
        let except = own_networks(Some("::/0".parse().unwrap())).unwrap();
        assert!(except.is_empty(), "{except:?}");
    }
}
