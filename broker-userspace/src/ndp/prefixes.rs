//! Prefixes as the responder stores them.

use std::collections::BTreeSet;

use broker_common::ndp::{MAX_PREFIX_LENS, PrefixKey};
use ipnet::{IpNet, Ipv6Net};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PrefixError {
    #[error("{0} is not an IPv6 prefix")]
    NotIpv6(IpNet),
    #[error("{0}: a /0 would answer for every address on the link")]
    ZeroLength(Ipv6Net),
    #[error("{given} has host bits set; did you mean {network}?")]
    HostBits { given: Ipv6Net, network: Ipv6Net },
    #[error("{0} overlaps {1}")]
    Overlap(Ipv6Net, Ipv6Net),
    #[error(
        "{count} different prefix lengths; the responder answers at most {MAX_PREFIX_LENS} at once"
    )]
    TooManyLengths { count: usize },
}

/// Checks a set of prefixes to answer for: IPv6, not /0, no host bits, no
/// two overlapping (an address must belong to one allocation only), and few
/// enough distinct lengths. Returns them as IPv6 networks, in input order.
pub fn validate_prefixes(nets: &[IpNet]) -> Result<Vec<Ipv6Net>, PrefixError> {
    let mut v6 = Vec::with_capacity(nets.len());
    for net in nets {
        let IpNet::V6(net) = *net else {
            return Err(PrefixError::NotIpv6(*net));
        };
        if net.prefix_len() == 0 {
            return Err(PrefixError::ZeroLength(net));
        }
        if net.network() != net.addr() {
            return Err(PrefixError::HostBits {
                given: net,
                network: net.trunc(),
            });
        }
        v6.push(net);
    }
    check_overlaps(&v6)?;
    let lens: BTreeSet<u8> = v6.iter().map(|n| n.prefix_len()).collect();
    if lens.len() > MAX_PREFIX_LENS {
        return Err(PrefixError::TooManyLengths { count: lens.len() });
    }
    Ok(v6)
}

/// Sorted by first address, a prefix overlaps an earlier one exactly when it
/// starts before the furthest end seen so far.
fn check_overlaps(nets: &[Ipv6Net]) -> Result<(), PrefixError> {
    let mut sorted: Vec<Ipv6Net> = nets.to_vec();
    sorted.sort_by_key(|n| (u128::from(n.network()), n.prefix_len()));
    let mut widest: Option<Ipv6Net> = None;
    for net in sorted {
        if let Some(w) = widest
            && u128::from(net.network()) <= u128::from(w.broadcast())
        {
            return Err(PrefixError::Overlap(net, w));
        }
        if widest.is_none_or(|w| u128::from(net.broadcast()) > u128::from(w.broadcast())) {
            widest = Some(net);
        }
    }
    Ok(())
}

/// The map key of a prefix: its length and its network address.
pub fn key_for(net: &Ipv6Net) -> PrefixKey {
    PrefixKey {
        len: u32::from(net.prefix_len()),
        addr: net.network().octets(),
    }
}

/// The prefix of a map key, if the key is well formed.
pub fn net_for(key: &PrefixKey) -> Option<Ipv6Net> {
    let len = u8::try_from(key.len).ok()?;
    Ipv6Net::new(key.addr.into(), len).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn accepts_disjoint_prefixes_of_several_lengths() {
        let v = validate_prefixes(&nets(&[
            "2001:db8:1::/64",
            "2001:db8:2::100/120",
            "2001:db8:2::200/120",
        ]))
        .unwrap();
        assert_eq!(v.len(), 3);
    }

    #[test]
    fn rejects_ipv4_zero_length_and_host_bits() {
        assert_eq!(
            validate_prefixes(&nets(&["192.0.2.0/24"])),
            Err(PrefixError::NotIpv6("192.0.2.0/24".parse().unwrap()))
        );
        assert!(matches!(
            validate_prefixes(&nets(&["::/0"])),
            Err(PrefixError::ZeroLength(_))
        ));
        let e = validate_prefixes(&nets(&["2001:db8::1/64"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "2001:db8::1/64 has host bits set; did you mean 2001:db8::/64?"
        );
    }

    #[test]
    fn finds_overlaps_hidden_behind_a_wide_prefix() {
        // The /32 covers both later ones; the two /64s between do not overlap
        // each other, so only comparing neighbours would miss the third.
        let e = validate_prefixes(&nets(&[
            "2001:db8::/32",
            "2001:db8:1::/64",
            "2001:db8:2::/64",
        ]))
        .unwrap_err();
        assert!(matches!(e, PrefixError::Overlap(_, _)), "{e}");
        let e = validate_prefixes(&nets(&["2001:db8:2::/64", "2001:db8:2::/64"])).unwrap_err();
        assert!(matches!(e, PrefixError::Overlap(_, _)));
        let e =
            validate_prefixes(&nets(&["2001:db8:5::/48", "2001:db8:5:7::100/120"])).unwrap_err();
        assert!(matches!(e, PrefixError::Overlap(_, _)));
    }

    #[test]
    fn limits_distinct_lengths() {
        let many: Vec<String> = (0..9)
            .map(|i| format!("2001:db8:{i}::/{}", 64 + i))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            validate_prefixes(&nets(&many)),
            Err(PrefixError::TooManyLengths { count: 9 })
        );
    }

    #[test]
    fn keys_round_trip() {
        for s in ["2001:db8::/32", "2001:db8:0:1::100/120", "fd00::1/128"] {
            let net: Ipv6Net = s.parse().unwrap();
            assert_eq!(net_for(&key_for(&net)), Some(net));
        }
    }
}
