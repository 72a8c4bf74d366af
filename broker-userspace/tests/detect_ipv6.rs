//! `detect-ipv6` in a network namespace of the test's own, with a host's
//! usual IPv6 set-up (addresses from 2001:db8::/32 and fd00::/8 only): what
//! the library reports, and the binary in both output forms. Needs root.

use std::{net::Ipv6Addr, process::Output};

use broker_lab::netns::Netns;
use broker_userspace::host_ipv6::{
    self, AllocationSize, CandidatePool, HostAddress, HostIpv6, HostRoute, IgnoredAddress, Origin,
    Upstream, allocation_sizes,
};
use ipnet::Ipv6Net;

/// A namespace `bbt-<pid>-<n>-<tag>` (the prefix xtask's sweep looks for).
fn namespace(tag: &str) -> Netns {
    Netns::unique(tag).expect("a namespace")
}

/// The host: `up0` with a global /64 address, a link-local one and a
/// deprecated one, the default route via a router and a /48 routed to it;
/// `lan0` with a unique local address in a small prefix (a /112); `dad0`, whose peer is down, with an
/// address that stays tentative (duplicate address detection on, and it
/// cannot run without a carrier).
fn host() -> Netns {
    let ns = namespace("ipv6");
    let ip = |args: &str| {
        ns.ip(&args.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_else(|e| panic!("ip {args}: {e:#}"))
    };
    for (ours, peer) in [("up0", "rt0"), ("lan0", "lanp0")] {
        ip(&format!("link add {ours} type veth peer name {peer}"));
        ip(&format!("link set {peer} up"));
        ip(&format!("link set {ours} up"));
    }
    ip("link add dad0 type veth peer name dadp0");
    ns.sysctl(&[("net.ipv6.conf.dad0.accept_dad", "1")])
        .unwrap();
    ip("link set dad0 up");
    ip("-6 addr add 2001:db8:1::2/64 dev up0");
    ip("-6 addr add fe80::1234/64 dev up0");
    ip("-6 addr add 2001:db8:2::5/64 dev up0 preferred_lft 0");
    ip("-6 route add default via 2001:db8:1::1 dev up0");
    ip("-6 route add 2001:db8:100::/48 dev up0");
    ip("-6 addr add fd00:1::1/112 dev lan0");
    ip("-6 addr add fd00:3::1/64 dev dad0");
    ns
}

fn net(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}

fn addr(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn route(destination: &str, gateway: Option<&str>, interface: &str, protocol: &str) -> HostRoute {
    HostRoute {
        destination: net(destination),
        kind: "unicast".into(),
        interface: Some(interface.into()),
        gateway: gateway.map(addr),
        protocol: protocol.into(),
        metric: Some(if protocol == "kernel" { 256 } else { 1024 }),
    }
}

fn pool(prefix: &str, origin: Origin, interface: &str, addresses: &[&str]) -> CandidatePool {
    CandidatePool {
        prefix: net(prefix),
        origin,
        interface: Some(interface.into()),
        addresses: addresses.iter().map(|a| addr(a)).collect(),
        upstream: interface == "up0",
        unique_local: prefix.starts_with("fd"),
        allocation_sizes: allocation_sizes(net(prefix)),
    }
}

fn expected() -> HostIpv6 {
    let address = |interface: &str, address: &str, prefix_len, unique_local| HostAddress {
        interface: interface.into(),
        address: addr(address),
        prefix_len,
        unique_local,
        valid_lifetime_secs: None,
    };
    let ignored = |interface: &str, address: &str, reason: &str| IgnoredAddress {
        interface: interface.into(),
        address: addr(address),
        prefix_len: 64,
        reasons: vec![reason.into()],
    };
    HostIpv6 {
        upstream: Some(Upstream {
            interface: "up0".into(),
            gateway: Some(addr("2001:db8:1::1")),
        }),
        addresses: vec![
            address("lan0", "fd00:1::1", 112, true),
            address("up0", "2001:db8:1::2", 64, false),
        ],
        ignored_addresses: vec![
            ignored("dad0", "fd00:3::1", "tentative"),
            ignored("up0", "2001:db8:2::5", "deprecated"),
        ],
        routes: vec![
            route("::/0", Some("2001:db8:1::1"), "up0", "boot"),
            route("2001:db8:1::/64", None, "up0", "kernel"),
            route("2001:db8:2::/64", None, "up0", "kernel"),
            route("2001:db8:100::/48", None, "up0", "boot"),
            route("fd00:1::/112", None, "lan0", "kernel"),
            route("fd00:3::/64", None, "dad0", "kernel"),
        ],
        pools: vec![
            pool("2001:db8:100::/48", Origin::Routed, "up0", &[]),
            pool("2001:db8:1::/64", Origin::OnLink, "up0", &["2001:db8:1::2"]),
            pool("fd00:1::/112", Origin::OnLink, "lan0", &["fd00:1::1"]),
        ],
    }
}

fn detect_in(ns: &Netns) -> HostIpv6 {
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter().unwrap();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(host_ipv6::detect())
                .unwrap()
        })
        .join()
        .unwrap()
    })
}

fn broker_in(ns: &Netns, args: &[&str]) -> String {
    let out: Output = ns
        .command(env!("CARGO_BIN_EXE_blockhost-broker"))
        .arg("detect-ipv6")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn reports_global_addresses_routes_pools_and_upstream() {
    let ns = host();
    let host = detect_in(&ns);
    assert_eq!(host, expected());

    // The counts, independently of the library's arithmetic.
    let counts = |pool: &CandidatePool| -> Vec<(u8, u128)> {
        pool.allocation_sizes
            .iter()
            .map(|s: &AllocationSize| (s.prefix_len, s.allocations))
            .collect()
    };
    let routed = counts(&host.pools[0]);
    assert_eq!(routed.len(), 78, "/49 to /126");
    assert_eq!(routed.first(), Some(&(49, 1)));
    assert!(routed.contains(&(56, 255)));
    assert!(routed.contains(&(64, 65_535)));
    assert!(routed.contains(&(120, 4_722_366_482_869_645_213_695)));
    assert_eq!(routed.last(), Some(&(126, (1 << 78) - 1)));
    assert_eq!(
        counts(&host.pools[2]),
        (113..=126)
            .map(|len| (len, (1u128 << (len - 112)) - 1))
            .collect::<Vec<_>>()
    );
    let on_link = counts(&host.pools[1]);
    assert_eq!(on_link.first(), Some(&(65, 1)));
    assert!(on_link.contains(&(120, 72_057_594_037_927_935)));
    assert_eq!(on_link.last(), Some(&(126, (1 << 62) - 1)));

    // --json: the same report, every count exact.
    let json = broker_in(&ns, &["--json"]);
    let parsed: HostIpv6 = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed, host);
    assert!(json.contains("\"allocations\": 4722366482869645213695"));
    assert!(!json.contains("fe80::"), "a link-local address is reported");

    // The report for a person.
    let text = broker_in(&ns, &[]);
    assert_eq!(text, EXPECTED_TEXT, "got:\n{text}");
}

const EXPECTED_TEXT: &str = "\
Upstream interface: up0 (IPv6 default route via 2001:db8:1::1)

Global IPv6 addresses:
  lan0         fd00:1::1/112  (unique local: not reachable from the internet)
  up0          2001:db8:1::2/64

Left out (not usable for a pool):
  dad0         fd00:3::1/64 (tentative)
  up0          2001:db8:2::5/64 (deprecated)

Routes:
  default via 2001:db8:1::1 dev up0 proto boot metric 1024
  2001:db8:1::/64 dev up0 proto kernel metric 256
  2001:db8:2::/64 dev up0 proto kernel metric 256
  2001:db8:100::/48 dev up0 proto boot metric 1024
  fd00:1::/112 dev lan0 proto kernel metric 256
  fd00:3::/64 dev dad0 proto kernel metric 256

Candidate pools (the broker keeps one allocation for its own address):
  2001:db8:100::/48 on up0 (upstream): routed to this host
    allocation sizes /49 to /126; allocations each gives:
      /52                               15
      /56                              255
      /60                            4,095
      /64                           65,535
      /72                       16,777,215
      /80                    4,294,967,295
      /96              281,474,976,710,655
      /112      18,446,744,073,709,551,615
      /120   4,722,366,482,869,645,213,695
      /124  75,557,863,725,914,323,419,135
      /126 302,231,454,903,657,293,676,543
  2001:db8:1::/64 on up0 (upstream): on-link, this host is 2001:db8:1::2
    allocation sizes /65 to /126; allocations each gives:
      /72                        255
      /80                     65,535
      /96              4,294,967,295
      /112       281,474,976,710,655
      /120    72,057,594,037,927,935
      /124 1,152,921,504,606,846,975
      /126 4,611,686,018,427,387,903
  fd00:1::/112 on lan0: on-link, this host is fd00:1::1
    unique local: clients would not be reachable from the internet
    allocation sizes /113 to /126; allocations each gives:
      /120    255
      /124  4,095
      /126 16,383
";

/// No IPv6 at all but loopback: no upstream, no pool, and it says so.
#[test]
fn a_host_without_ipv6_says_so() {
    let ns = namespace("no-ipv6");
    let host = detect_in(&ns);
    assert_eq!(
        host,
        HostIpv6 {
            upstream: None,
            addresses: vec![],
            ignored_addresses: vec![],
            routes: vec![],
            pools: vec![],
        }
    );
    let text = broker_in(&ns, &[]);
    assert!(
        text.starts_with("Upstream interface: none (no IPv6 default route"),
        "{text}"
    );
    assert!(
        text.ends_with("Candidate pools: none (no global address or route to this host)\n"),
        "{text}"
    );
}
