//! The broker's tunnel side against a real wireguard-go, between network
//! namespaces: a client reaches the gateway through its prefix only while
//! it is a peer, a second `Tunnel::open` adopts the interface with its peers,
//! routes carry the broker's protocol number, and bad set-ups are refused
//! with errors that say why.
//!
//! Needs root; `cargo xtask test` runs it so. Namespaces, wireguard-go
//! processes and their sockets are removed by guards, even on failure.
//! /var/run/wireguard is shared by all namespaces, so every interface name
//! is unique to the test process and call (and starts with `bbt-`).

use std::{
    net::{Ipv6Addr, UdpSocket},
    thread,
    time::{Duration, Instant, SystemTime},
};

use broker_lab::{
    names::interface_name,
    netns::{End, Netns, veth},
    wireguard::{ClientTunnel, WireguardGo, daemons, listen_port},
};
use broker_userspace::{
    config::{self, WireguardImplementation},
    tunnel::{Backend, Peer, ROUTE_PROTOCOL, Routes, Tunnel, TunnelError, socket_path},
};
use ipnet::Ipv6Net;
use wireguard_control::Key;

const PORT: u16 = 51820;
/// The broker's tunnel address, and the client's prefix and address in it.
const GATEWAY: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);
const PREFIX: &str = "2001:db8:1::100/120";
const CLIENT_ADDR: &str = "2001:db8:1::101";
const OTHER_PREFIX: &str = "2001:db8:1::200/120";
/// The underlay between the namespaces.
const BROKER_UNDERLAY: &str = "192.0.2.1";
const CLIENT_UNDERLAY: &str = "192.0.2.2";

fn net(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}

fn wireguard_config(
    interface: &str,
    listen_port: u16,
    implementation: WireguardImplementation,
) -> config::Wireguard {
    config::Wireguard {
        interface: interface.into(),
        listen_port,
        endpoint: format!("{BROKER_UNDERLAY}:{listen_port}"),
        // Tunnel::open is given the key; the file is the daemon's business.
        private_key_file: "/nonexistent".into(),
        implementation,
        handshake_timeout_secs: 120,
        allow_to_broker: Vec::new(),
    }
}

/// Runs `f` to completion on a current-thread runtime, on a thread inside
/// `ns`: the netlink sockets and wireguard-go it starts land there.
fn in_ns<T: Send>(ns: &Netns, f: impl AsyncFnOnce() -> T + Send) -> T {
    ns.run(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(f())
    })
}

/// Opens the tunnel in `ns`.
fn open(ns: &Netns, cfg: &config::Wireguard, key: &Key) -> Result<Tunnel, TunnelError> {
    in_ns(ns, async || Tunnel::open(cfg, key, GATEWAY).await)
}

/// Waits (at most 3 s) until nothing is left of `name`: no daemon, no
/// socket, no link in `ns`.
fn assert_gone(ns: &Netns, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let daemons = daemons(name);
        let socket = socket_path(name).exists();
        let link = ns.ip(&["link", "show", name]).is_ok();
        if daemons.is_empty() && !socket && !link {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} left behind: daemons {daemons:?}, socket {socket}, link {link}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn peer(public_key: &Key, prefix: &str) -> Peer {
    Peer {
        public_key: public_key.0,
        allowed_ips: vec![net(prefix)],
        last_handshake: None,
        endpoint: None,
    }
}

/// The peers with what traffic sets (handshake times, endpoints) left out.
fn peers_without_handshakes(tunnel: &Tunnel) -> Vec<Peer> {
    let mut peers = tunnel.peers().unwrap();
    for p in &mut peers {
        p.last_handshake = None;
        p.endpoint = None;
    }
    peers
}

#[test]
fn a_client_reaches_the_gateway_through_its_prefix_only_while_it_is_a_peer() {
    let broker = Netns::unique("tb").unwrap();
    let client = Netns::unique("tc").unwrap();
    veth(
        End::new(&broker, "b0").with_mac("02:00:00:00:01:01"),
        End::new(&client, "c0").with_mac("02:00:00:00:01:02"),
    )
    .unwrap();
    broker
        .ip(&["addr", "add", &format!("{BROKER_UNDERLAY}/24"), "dev", "b0"])
        .unwrap();
    client
        .ip(&["addr", "add", &format!("{CLIENT_UNDERLAY}/24"), "dev", "c0"])
        .unwrap();
    let broker_if = interface_name("b");
    let client_if = interface_name("c");
    let _broker_wg = WireguardGo::guard(&broker, &broker_if);
    let _client_wg = WireguardGo::guard(&client, &client_if);
    let broker_key = Key::generate_private();
    let client_key = Key::generate_private();
    let client_public = client_key.get_public();
    let prefix = net(PREFIX);

    let cfg = wireguard_config(&broker_if, PORT, WireguardImplementation::Auto);
    let started = SystemTime::now() - Duration::from_secs(1);
    let tunnel = in_ns(&broker, async || {
        let tunnel = Tunnel::open(&cfg, &broker_key, GATEWAY).await.unwrap();
        tunnel.set_peer(&client_public.0, prefix).unwrap();
        let routes = Routes::new().await.unwrap();
        routes.add(prefix, tunnel.index()).await.unwrap();
        // The kernel's own routes on the interface (link-local, the
        // gateway's address, multicast) are not ours.
        assert_eq!(routes.list(tunnel.index()).await.unwrap(), [prefix]);
        tunnel
    });
    assert_eq!(tunnel.backend(), Backend::Userspace);
    assert_eq!(tunnel.name(), broker_if);
    assert_eq!(tunnel.public_key(), broker_key.get_public());
    let forwarding = broker
        .output("sysctl", &["-n", "net.ipv6.conf.all.forwarding"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&forwarding.stdout).trim(), "1");
    assert_eq!(tunnel.last_handshake(&client_public.0).unwrap(), None);
    assert_eq!(tunnel.peers().unwrap()[0].endpoint, None);

    // The client end: wireguard-go configured with `wg`, CLIENT_ADDR on it
    // and a route to the gateway through it.
    let key_dir = tempfile::tempdir().unwrap();
    let gateway = format!("{GATEWAY}/128");
    ClientTunnel {
        ns: &client,
        name: &client_if,
        key_dir: key_dir.path(),
        endpoint: &format!("{BROKER_UNDERLAY}:{PORT}"),
        allowed_ips: &gateway,
        route: &gateway,
    }
    .start(&client_key, &tunnel.public_key(), CLIENT_ADDR)
    .unwrap();
    assert!(
        client.ping(&GATEWAY.to_string(), 5),
        "the client cannot reach the gateway"
    );
    assert!(
        broker.ping(CLIENT_ADDR, 1),
        "the broker cannot reach the client"
    );
    let handshake = tunnel
        .last_handshake(&client_public.0)
        .unwrap()
        .expect("a handshake after traffic");
    assert!(handshake >= started, "{handshake:?} before {started:?}");
    // Where the client's packets come from: its underlay address and the
    // port its wireguard-go picked.
    let port = listen_port(&client, &client_if).unwrap();
    assert_eq!(
        tunnel.peers().unwrap()[0].endpoint,
        Some(format!("{CLIENT_UNDERLAY}:{port}").parse().unwrap())
    );
    assert_eq!(
        peers_without_handshakes(&tunnel),
        [peer(&client_public, PREFIX)]
    );

    // Another prefix replaces the first: the client's address is no longer
    // its own, so its packets are dropped.
    tunnel
        .set_peer(&client_public.0, net(OTHER_PREFIX))
        .unwrap();
    assert_eq!(
        peers_without_handshakes(&tunnel),
        [peer(&client_public, OTHER_PREFIX)]
    );
    assert!(
        !client.ping(&GATEWAY.to_string(), 1),
        "the client still gets through with a prefix it no longer holds"
    );
    // And back, twice: idempotent.
    tunnel.set_peer(&client_public.0, prefix).unwrap();
    tunnel.set_peer(&client_public.0, prefix).unwrap();
    assert_eq!(
        peers_without_handshakes(&tunnel),
        [peer(&client_public, PREFIX)]
    );
    assert!(client.ping(&GATEWAY.to_string(), 3));

    assert!(tunnel.remove_peer(&client_public.0).unwrap());
    assert_eq!(tunnel.peers().unwrap(), []);
    assert!(
        !broker.ping(CLIENT_ADDR, 1),
        "traffic still flows to a removed peer"
    );
    assert!(!tunnel.remove_peer(&client_public.0).unwrap());
    assert_eq!(tunnel.last_handshake(&client_public.0).unwrap(), None);
}

#[test]
fn a_second_open_adopts_the_interface_and_its_peers() {
    let ns = Netns::unique("ta").unwrap();
    let name = interface_name("a");
    let _wg = WireguardGo::guard(&ns, &name);
    let key = Key::generate_private();
    let peer_key = Key::generate_private().get_public();

    let cfg = wireguard_config(&name, PORT, WireguardImplementation::Auto);
    let first = open(&ns, &cfg, &key).unwrap();
    first.set_peer(&peer_key.0, net(PREFIX)).unwrap();
    let index = first.index();
    drop(first);
    let running = daemons(&name);
    assert_eq!(running.len(), 1, "wireguard-go for {name}: {running:?}");

    // A userspace interface is not adopted as a kernel one; nothing changes.
    let kernel = wireguard_config(&name, PORT, WireguardImplementation::Kernel);
    let e = open(&ns, &kernel, &key).unwrap_err();
    assert!(
        matches!(e, TunnelError::ImplementationMismatch { .. }),
        "{e}"
    );

    // Adopted with a new listen port, from a new runtime and thread.
    let cfg = wireguard_config(&name, PORT + 1, WireguardImplementation::Userspace);
    let second = open(&ns, &cfg, &key).unwrap();
    assert_eq!(second.index(), index);
    assert_eq!(second.backend(), Backend::Userspace);
    assert_eq!(second.public_key(), key.get_public());
    assert_eq!(peers_without_handshakes(&second), [peer(&peer_key, PREFIX)]);
    assert_eq!(daemons(&name), running, "wireguard-go was restarted");
    let port = ns.output("wg", &["show", &name, "listen-port"]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&port.stdout).trim(),
        (PORT + 1).to_string()
    );
    let addresses = ns
        .ip(&["-6", "addr", "show", "dev", &name, "scope", "global"])
        .unwrap();
    assert_eq!(
        addresses.matches(&format!("{GATEWAY}/128")).count(),
        1,
        "{addresses}"
    );
    assert!(
        ns.ip(&["link", "show", &name]).unwrap().contains(",UP"),
        "not up"
    );
}

/// A burst of allocations is one `set` to the device: new peers added, a
/// peer already there given its new prefix, and the same set again (or an
/// empty one) changes nothing.
#[test]
fn many_peers_are_set_together_and_idempotently() {
    let ns = Netns::unique("tm").unwrap();
    let name = interface_name("m");
    let _wg = WireguardGo::guard(&ns, &name);
    let cfg = wireguard_config(&name, PORT, WireguardImplementation::Auto);
    let tunnel = open(&ns, &cfg, &Key::generate_private()).unwrap();
    let keys: Vec<Key> = (0..3)
        .map(|_| Key::generate_private().get_public())
        .collect();
    let prefixes = [PREFIX, OTHER_PREFIX, "2001:db8:1::300/120"];
    tunnel
        .set_peer(&keys[0].0, net("2001:db8:1::400/120"))
        .unwrap();
    let peers: Vec<([u8; 32], Ipv6Net)> = keys
        .iter()
        .zip(prefixes)
        .map(|(key, prefix)| (key.0, net(prefix)))
        .collect();
    let mut want: Vec<Peer> = keys
        .iter()
        .zip(prefixes)
        .map(|(key, prefix)| peer(key, prefix))
        .collect();
    want.sort_by_key(|p| p.public_key);
    for set in [&peers[..], &peers[..], &[]] {
        tunnel.set_peers(set).unwrap();
        let mut have = peers_without_handshakes(&tunnel);
        have.sort_by_key(|p| p.public_key);
        assert_eq!(have, want);
    }
}

#[test]
fn routes_are_added_listed_and_removed_idempotently_and_only_ours() {
    let ns = Netns::unique("tr").unwrap();
    // This kernel has no dummy module: a veth pair gives two devices.
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"])
        .unwrap();
    for dev in ["d0", "d1"] {
        ns.ip(&["link", "set", dev, "up"]).unwrap();
    }
    let index = |dev: &str| -> u32 {
        let line = ns.ip(&["-o", "link", "show", dev]).unwrap();
        line.split(':').next().unwrap().trim().parse().unwrap()
    };
    let (d0, d1) = (index("d0"), index("d1"));
    // An operator's route through d0, and the kernel's own, are not ours.
    ns.ip(&["-6", "route", "add", "2001:db8:9::/64", "dev", "d0"])
        .unwrap();
    ns.ip(&["-6", "addr", "add", "2001:db8:8::1/64", "dev", "d0"])
        .unwrap();
    let (p1, p2, p3) = (
        net("2001:db8:5::100/120"),
        net("2001:db8:5::200/120"),
        net("2001:db8:6::/56"),
    );
    let sorted = |mut v: Vec<Ipv6Net>| {
        v.sort();
        v
    };

    in_ns(&ns, async || {
        let routes = Routes::new().await.unwrap();
        assert_eq!(routes.list(d0).await.unwrap(), []);
        routes.add(p1, d0).await.unwrap();
        routes.add(p1, d0).await.unwrap();
        // Host bits are dropped.
        routes.add(net("2001:db8:5::2ff/120"), d0).await.unwrap();
        routes.add(p3, d1).await.unwrap();
        assert_eq!(sorted(routes.list(d0).await.unwrap()), [p1, p2]);
        assert_eq!(routes.list(d1).await.unwrap(), [p3]);

        // The kernel's view: our protocol, main table.
        let shown = ns
            .ip(&["-6", "route", "show", "proto", &ROUTE_PROTOCOL.to_string()])
            .unwrap();
        assert_eq!(shown.lines().count(), 3, "{shown}");
        assert!(shown.contains("2001:db8:5::100/120 dev d0"), "{shown}");

        // Adding through another interface moves the route.
        routes.add(p2, d1).await.unwrap();
        assert_eq!(routes.list(d0).await.unwrap(), [p1]);
        assert_eq!(sorted(routes.list(d1).await.unwrap()), [p2, p3]);

        assert!(routes.remove(p1, d0).await.unwrap());
        assert!(!routes.remove(p1, d0).await.unwrap());
        // Not through that interface: left alone.
        assert!(!routes.remove(p3, d0).await.unwrap());
        assert_eq!(sorted(routes.list(d1).await.unwrap()), [p2, p3]);
        // Not ours: left alone.
        assert!(!routes.remove(net("2001:db8:9::/64"), d0).await.unwrap());
        assert_eq!(routes.list(d0).await.unwrap(), []);
    });
    assert!(
        ns.ip(&["-6", "route", "show", "2001:db8:9::/64"])
            .unwrap()
            .contains("dev d0"),
        "the operator's route is gone"
    );
}

/// Every way `e` shows itself: Display, its sources, Debug.
fn all_text(e: &TunnelError) -> String {
    let mut text = format!("{e} {e:?}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(" {s}"));
        source = s.source();
    }
    text
}

fn assert_no_key(e: &TunnelError, key: &Key) {
    let text = all_text(e);
    assert!(!text.contains(&key.to_base64()), "key in: {text}");
    assert!(
        !text.to_lowercase().contains(&hex_lower(key)),
        "key in: {text}"
    );
}

fn hex_lower(key: &Key) -> String {
    key.0.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_kernel_implementation_without_the_module_is_refused() {
    let ns = Netns::unique("tk").unwrap();
    let name = interface_name("k");
    let _wg = WireguardGo::guard(&ns, &name);
    let key = Key::generate_private();
    let cfg = wireguard_config(&name, PORT, WireguardImplementation::Kernel);
    let e = open(&ns, &cfg, &key).unwrap_err();
    assert!(matches!(e, TunnelError::NoKernelModule(_)), "{e}");
    let shown = e.to_string();
    assert!(
        shown.contains("no WireGuard module") && shown.contains("\"userspace\""),
        "{shown}"
    );
    assert_no_key(&e, &key);
    assert_gone(&ns, &name);
}

#[test]
fn bad_names_and_busy_ports_are_refused_and_leave_nothing() {
    let ns = Netns::unique("te").unwrap();
    let key = Key::generate_private();

    let long = "bbt-0123456789ab";
    assert_eq!(long.len(), 16);
    let cfg = wireguard_config(long, PORT, WireguardImplementation::Auto);
    let e = open(&ns, &cfg, &key).unwrap_err();
    assert!(matches!(e, TunnelError::InvalidName(_)), "{e}");
    assert!(e.to_string().contains("1 to 15 characters"), "{e}");
    assert_gone(&ns, long);

    // The port is taken in the namespace (IPv6 socket, dual-stack).
    let name = interface_name("p");
    let _wg = WireguardGo::guard(&ns, &name);
    let busy = ns.run(|| UdpSocket::bind(("::", PORT)).expect("binding the port"));
    let cfg = wireguard_config(&name, PORT, WireguardImplementation::Auto);
    let e = open(&ns, &cfg, &key).unwrap_err();
    assert!(
        matches!(e, TunnelError::PortInUse { port: PORT, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("51820 is already in use"), "{e}");
    assert_no_key(&e, &key);
    // The half-made interface went away with its daemon.
    assert_gone(&ns, &name);
    drop(busy);
}

#[test]
fn foreign_devices_and_other_namespaces_interfaces_are_not_adopted() {
    let ns = Netns::unique("tf").unwrap();
    let other = Netns::unique("tg").unwrap();
    let key = Key::generate_private();

    let veth = interface_name("v");
    ns.ip(&["link", "add", &veth, "type", "veth", "peer", "name", "v1"])
        .unwrap();
    let e = open(
        &ns,
        &wireguard_config(&veth, PORT, WireguardImplementation::Auto),
        &key,
    )
    .unwrap_err();
    assert!(matches!(e, TunnelError::NotWireguard { .. }), "{e}");
    assert!(e.to_string().contains("a veth device"), "{e}");
    assert!(ns.ip(&["link", "show", &veth]).unwrap().contains(&veth));

    // wireguard-go serves the name in `other`; `ns` cannot have it too.
    let name = interface_name("o");
    let _wg = WireguardGo::guard(&other, &name);
    let cfg = wireguard_config(&name, PORT, WireguardImplementation::Auto);
    let theirs = open(&other, &cfg, &key).unwrap();
    theirs.set_peer(&[7; 32], net(PREFIX)).unwrap();
    let e = open(&ns, &cfg, &key).unwrap_err();
    assert!(matches!(e, TunnelError::OtherNamespace { .. }), "{e}");
    assert!(e.to_string().contains("another one"), "{e}");
    assert_eq!(
        theirs.peers().unwrap().len(),
        1,
        "the other interface changed"
    );
}
