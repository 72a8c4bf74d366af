//! The responder at work between network namespaces, through the real
//! binary: a "router" namespace resolves addresses of a delegated prefix with
//! its kernel's own neighbour discovery (or with raw ICMPv6 sockets where the
//! kernel does none), and only the XDP program on the "broker" side can
//! answer, since the addresses live on the broker's `lo`, not on the link.
//!
//! Needs root (namespaces, XDP); `cargo xtask test` runs it so. Every
//! namespace and pin directory is removed by a guard, even on failure, and
//! their names start with `bbt-` so `cargo xtask test` sweeps up after a run
//! that was killed.

use std::{
    io, mem,
    net::Ipv6Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use broker_lab::{
    broker::{broker_command, ndp_serve, ndp_status, time_scale},
    ndp_frames::{BROKER_MAC, Model, Ns, ROUTER_MAC, Verdict, solicited_node},
    netns::{End, Netns, mac_string, veth},
    pins::TestPins,
    process::{Process, run_bounded},
};
use broker_userspace::ndp::{self, AttachedMode, Counters, Interface, PassProgram};

/// The delegated prefix, an address in it and addresses outside it, all of
/// them on the broker's `lo` so that an echo request reaching the broker is
/// answered whichever the address.
const PREFIX: &str = "2001:db8:1::/64";
const INSIDE: &str = "2001:db8:1::1";
const OUTSIDE_PREFIX: &str = "2001:db8:2::/64";
const OUTSIDE: &str = "2001:db8:2::1";
const OTHER_PREFIX: &str = "2001:db8:3::/64";
const OTHER: &str = "2001:db8:3::1";

/// Interface names are per namespace, so concurrent tests share these.
const ROUTER_IF: &str = "r0";
const BROKER_IF: &str = "b0";

const ICMPV6_NS: u8 = 135;
const ICMPV6_NA: u8 = 136;
const NA_ROUTER: u8 = 0x80;
const NA_SOLICITED: u8 = 0x40;
const NA_OVERRIDE: u8 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Generic,
    Driver,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Generic => "generic",
            Mode::Driver => "driver",
        }
    }

    fn attached(self) -> AttachedMode {
        match self {
            Mode::Generic => AttachedMode::Generic,
            Mode::Driver => AttachedMode::Driver,
        }
    }
}

/// A router and a broker namespace joined by a veth (r0 – b0), the broker
/// serving PREFIX on b0. The router has PREFIX, OUTSIDE_PREFIX and
/// OTHER_PREFIX on-link on r0; the broker has INSIDE, OUTSIDE and OTHER on
/// lo. Fields drop in order: process, pass program, namespaces, pins.
struct VethLab {
    broker: Option<Process>,
    _pass: Option<PassProgram>,
    router: Netns,
    broker_ns: Netns,
    pins: TestPins,
    mode: Mode,
}

impl VethLab {
    fn new(mode: Mode) -> Self {
        let pins = TestPins::new("veth");
        let broker_ns = Netns::unique("brk").unwrap();
        let router = Netns::unique("rtr").unwrap();
        veth(
            End::new(&router, ROUTER_IF).with_mac(&mac_string(ROUTER_MAC)),
            End::new(&broker_ns, BROKER_IF).with_mac(&mac_string(BROKER_MAC)),
        )
        .unwrap();
        router
            .ip(&[
                "addr",
                "add",
                "2001:db8:ff::1/64",
                "dev",
                ROUTER_IF,
                "nodad",
            ])
            .unwrap();
        broker_ns
            .ip(&[
                "addr",
                "add",
                "2001:db8:ff::2/64",
                "dev",
                BROKER_IF,
                "nodad",
            ])
            .unwrap();
        for (net, addr) in [
            (PREFIX, INSIDE),
            (OUTSIDE_PREFIX, OUTSIDE),
            (OTHER_PREFIX, OTHER),
        ] {
            router
                .ip(&["-6", "route", "add", net, "dev", ROUTER_IF])
                .unwrap();
            broker_ns
                .ip(&["addr", "add", &format!("{addr}/128"), "dev", "lo"])
                .unwrap();
        }
        // In PROBE state the router sends unicast solicitations only, then
        // gives up: no multicast fallback that could hide an unanswered probe.
        router
            .sysctl(&[
                ("net.ipv6.neigh.r0.ucast_solicit", "3"),
                ("net.ipv6.neigh.r0.mcast_resolicit", "0"),
            ])
            .unwrap();
        // Native XDP_TX on a veth delivers only to a peer with XDP attached.
        let pass = (mode == Mode::Driver).then(|| {
            router.run(|| {
                let iface = Interface::by_name(ROUTER_IF).expect("r0 in the router namespace");
                PassProgram::attach(&iface).expect("attaching xdp-pass to r0")
            })
        });
        let mut lab = VethLab {
            broker: None,
            _pass: pass,
            router,
            broker_ns,
            pins,
            mode,
        };
        lab.serve(&[PREFIX]);
        lab
    }

    fn serve(&mut self, prefixes: &[&str]) {
        let mut args = vec!["--interface", BROKER_IF, "--mode", self.mode.arg()];
        for p in prefixes {
            args.extend(["--prefix", p]);
        }
        self.broker = Some(ndp_serve(&self.broker_ns, &self.pins.dir, &args).unwrap());
    }

    fn broker(&mut self) -> &mut Process {
        self.broker.as_mut().expect("the broker runs")
    }

    fn status(&self) -> ndp::Status {
        ndp::status(&self.pins.dir)
            .expect("reading the pins")
            .expect("a responder is pinned")
    }

    fn counters(&self) -> Counters {
        self.status().counters
    }

    fn neigh_state(&self, addr: &str) -> String {
        self.router
            .neigh(ROUTER_IF, addr)
            .unwrap()
            .map_or_else(|| "(none)".into(), |n| n.state)
    }

    /// The id of the XDP program attached to b0, from `ip -d link`.
    fn xdp_prog_id(&self) -> Option<u32> {
        let out = self
            .broker_ns
            .ip(&["-d", "link", "show", "dev", BROKER_IF])
            .unwrap();
        let words: Vec<&str> = out.split_whitespace().collect();
        let at = words.windows(2).position(|w| w == ["prog/xdp", "id"])?;
        words.get(at + 2)?.parse().ok()
    }

    /// The router resolves `addr` through the broker's XDP program: the
    /// ping succeeds and the entry holds the broker's MAC.
    fn assert_resolved(&self, addr: &str) {
        self.assert_resolved_to(addr, BROKER_MAC);
    }

    fn assert_resolved_to(&self, addr: &str, mac: [u8; 6]) {
        assert!(
            self.router.ping(addr, 1),
            "ping {addr} failed; neighbour entry {:?}",
            self.router.neigh(ROUTER_IF, addr).unwrap()
        );
        let entry = self
            .router
            .neigh(ROUTER_IF, addr)
            .unwrap()
            .unwrap_or_else(|| panic!("no neighbour entry for {addr}"));
        assert_eq!(entry.state, "REACHABLE", "{addr}: {entry:?}");
        assert_eq!(
            entry.lladdr.as_deref(),
            Some(mac_string(mac).as_str()),
            "{addr}: {entry:?}"
        );
        assert!(
            !entry.router,
            "{addr}: Router flag without --router: {entry:?}"
        );
    }

    /// Nothing answers for `addr`: the ping fails and the entry never gets a
    /// link-layer address.
    fn assert_unresolved(&self, addr: &str) {
        assert!(!self.router.ping(addr, 1), "ping {addr} was answered");
        let entry = self
            .router
            .neigh(ROUTER_IF, addr)
            .unwrap()
            .unwrap_or_else(|| panic!("no neighbour entry for {addr} after a ping"));
        assert!(
            entry.state == "INCOMPLETE" || entry.state == "FAILED",
            "{addr}: {entry:?}"
        );
        assert_eq!(entry.lladdr, None, "{addr}: {entry:?}");
    }
}

/// Test 1: the kernel's own neighbour discovery on the router resolves
/// addresses of the served prefix and nothing else; a restart without the
/// prefix stops the answers for it.
fn answers_inside_the_prefix_only(mode: Mode) {
    let mut lab = VethLab::new(mode);
    let status = lab.status();
    assert_eq!(status.mode, Some(mode.attached()));
    assert!(status.attached);
    assert!(!status.l3_device);
    assert_eq!(status.mac, BROKER_MAC);
    assert_eq!(status.prefixes, 1);
    assert!(lab.xdp_prog_id().is_some(), "no XDP program on b0");

    let before = lab.counters();
    lab.assert_resolved(INSIDE);
    let inside = lab.counters();
    assert!(
        inside.answered > before.answered,
        "{before:?} -> {inside:?}"
    );
    // The kernel's solicitations are valid and every answer was sent.
    assert_eq!((inside.invalid, inside.failed), (0, 0), "{inside:?}");

    lab.assert_unresolved(OUTSIDE);
    let outside = lab.counters();
    assert_eq!(
        outside.answered, inside.answered,
        "{inside:?} -> {outside:?}"
    );
    assert!(
        outside.not_ours > inside.not_ours,
        "{inside:?} -> {outside:?}"
    );

    // Restart with another prefix only: reconcile removes PREFIX.
    let (exit, _) = lab.broker().terminate(Duration::from_secs(10)).unwrap();
    assert!(exit.success(), "ndp serve on SIGTERM: {exit}");
    lab.serve(&[OTHER_PREFIX]);
    let log = lab.broker().log();
    assert!(log.contains("1 added, 1 removed"), "{log}");
    assert_eq!(lab.status().prefixes, 1);
    lab.router
        .ip(&["-6", "neigh", "flush", "dev", ROUTER_IF])
        .unwrap();
    let state = lab.neigh_state(INSIDE);
    assert!(
        state == "(none)" || state == "FAILED",
        "after flush: {state}"
    );
    let before = lab.counters();
    lab.assert_unresolved(INSIDE);
    let after = lab.counters();
    assert_eq!(after.answered, before.answered, "{before:?} -> {after:?}");
    assert!(after.not_ours > before.not_ours, "{before:?} -> {after:?}");
    lab.assert_resolved(OTHER);
}

#[test]
fn generic_answers_inside_the_prefix_only() {
    answers_inside_the_prefix_only(Mode::Generic);
}

#[test]
fn driver_answers_inside_the_prefix_only() {
    answers_inside_the_prefix_only(Mode::Driver);
}

/// The interface's MAC changes under a running responder (an operator's
/// `ip link set address`, a hypervisor's new NIC): within a couple of
/// seconds the answers carry the new one, or the router would send every
/// allocation's traffic to a MAC nobody has. Fails without the follower
/// (the answers keep the MAC of the attach).
#[test]
fn answers_follow_the_interfaces_mac_when_it_changes() {
    const NEW_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x53, 0x42];
    let lab = VethLab::new(Mode::Generic);
    lab.assert_resolved(INSIDE);
    lab.broker_ns
        .ip(&[
            "link",
            "set",
            "dev",
            BROKER_IF,
            "address",
            &mac_string(NEW_MAC),
        ])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.status().mac != NEW_MAC && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(lab.status().mac, NEW_MAC, "the responder kept the old MAC");
    lab.router
        .ip(&["-6", "neigh", "flush", "dev", ROUTER_IF])
        .unwrap();
    lab.assert_resolved_to(INSIDE, NEW_MAC);
}

/// Test 2: once the router holds a REACHABLE entry, its reachability probes
/// are unicast solicitations to the address itself; they must be answered
/// too (ndppd, for one, ignores them and the entry fails).
fn answers_unicast_probes(mode: Mode) {
    let lab = VethLab::new(mode);
    lab.assert_resolved(INSIDE);
    let before = lab.counters();
    // Forces PROBE: the kernel sends up to ucast_solicit unicast probes, one
    // a second, and with mcast_resolicit 0 marks the entry FAILED if none is
    // answered.
    lab.router
        .ip(&[
            "-6",
            "neigh",
            "change",
            INSIDE,
            "dev",
            ROUTER_IF,
            "lladdr",
            &mac_string(BROKER_MAC),
            "nud",
            "probe",
        ])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut states = Vec::new();
    loop {
        let state = lab.neigh_state(INSIDE);
        if states.last() != Some(&state) {
            states.push(state.clone());
        }
        if state == "REACHABLE" && lab.counters().answered > before.answered {
            break;
        }
        assert!(state != "FAILED", "probe unanswered: {states:?}");
        assert!(
            Instant::now() < deadline,
            "entry states {states:?}, counters {before:?} -> {:?}",
            lab.counters()
        );
        thread::sleep(Duration::from_millis(10));
    }
    // (not_ours is not compared: the router's own reachability probes for
    // the broker's link-local address may come at any time.)
    let after = lab.counters();
    assert_eq!((after.invalid, after.failed), (0, 0), "{after:?}");
    // Traffic goes on to the same MAC.
    lab.assert_resolved(INSIDE);
}

#[test]
fn generic_answers_unicast_probes() {
    answers_unicast_probes(Mode::Generic);
}

#[test]
fn driver_answers_unicast_probes() {
    answers_unicast_probes(Mode::Driver);
}

/// A raw ICMPv6 socket that sends Neighbor Solicitations out of one
/// interface and receives only Neighbor Advertisements. Made on a thread in
/// the namespace it belongs to; usable from any thread afterwards.
struct NdSocket {
    fd: OwnedFd,
    ifindex: u32,
}

/// A received advertisement.
#[derive(Debug)]
struct Received {
    from: Ipv6Addr,
    hop_limit: Option<i32>,
    /// The ICMPv6 message (the kernel strips the IPv6 header).
    msg: Vec<u8>,
}

impl Received {
    fn target(&self) -> Option<Ipv6Addr> {
        let t: [u8; 16] = self.msg.get(8..24)?.try_into().ok()?;
        Some(t.into())
    }

    fn flags(&self) -> u8 {
        self.msg.get(4).copied().unwrap_or(0)
    }
}

const ICMP6_FILTER: libc::c_int = 1;

fn check(rc: libc::c_int, what: &str) {
    assert!(rc >= 0, "{what}: {}", io::Error::last_os_error());
}

impl NdSocket {
    /// Opens the socket for `ifname` of the calling thread's namespace.
    fn open(ifname: &str) -> Self {
        let ifindex = Interface::by_name(ifname)
            .unwrap_or_else(|e| panic!("{ifname}: {e}"))
            .index;
        // SAFETY: plain syscalls on a descriptor we own from here on.
        unsafe {
            let raw = libc::socket(
                libc::AF_INET6,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_ICMPV6,
            );
            check(raw, "socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6)");
            let fd = OwnedFd::from_raw_fd(raw);
            let s = NdSocket { fd, ifindex };
            s.set(libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, 255i32);
            s.set(libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 255i32);
            s.set(libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, ifindex as i32);
            s.set(libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, 0i32);
            s.set(libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1i32);
            // Bit set = blocked: everything but type 136.
            let mut filter = [u32::MAX; 8];
            filter[usize::from(ICMPV6_NA >> 5)] &= !(1u32 << (ICMPV6_NA & 31));
            s.set(libc::IPPROTO_ICMPV6, ICMP6_FILTER, filter);
            s.set(
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                libc::timeval {
                    tv_sec: 0,
                    tv_usec: 50_000,
                },
            );
            s
        }
    }

    fn set<T>(&self, level: libc::c_int, name: libc::c_int, value: T) {
        // SAFETY: value is a live T of the size given.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&raw const value).cast(),
                mem::size_of::<T>() as libc::socklen_t,
            )
        };
        check(rc, &format!("setsockopt({level}, {name})"));
    }

    /// A solicitation for `target` to its solicited-node group, with a
    /// source link-layer address option when `sll` is given. The kernel
    /// fills in the checksum (always, for raw ICMPv6 sockets).
    fn solicit(&self, target: Ipv6Addr, sll: Option<[u8; 6]>) {
        let mut msg = vec![ICMPV6_NS, 0, 0, 0, 0, 0, 0, 0];
        msg.extend_from_slice(&target.octets());
        if let Some(mac) = sll {
            msg.extend_from_slice(&[1, 1]);
            msg.extend_from_slice(&mac);
        }
        // SAFETY: an all-zero sockaddr_in6 is valid; fields set below.
        let mut dst: libc::sockaddr_in6 = unsafe { mem::zeroed() };
        dst.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        dst.sin6_addr.s6_addr = solicited_node(target).octets();
        dst.sin6_scope_id = self.ifindex;
        // SAFETY: msg and dst are live for the call.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const dst).cast(),
                mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        };
        assert_eq!(
            sent,
            msg.len() as isize,
            "sending NS for {target}: {}",
            io::Error::last_os_error()
        );
    }

    /// The next advertisement, or None after the 50 ms receive timeout.
    fn receive(&self) -> Option<Received> {
        let mut buf = [0u8; 1500];
        let mut control = [0u64; 16];
        // SAFETY: all-zero is a valid sockaddr_in6 and msghdr.
        let mut from: libc::sockaddr_in6 = unsafe { mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
        hdr.msg_name = (&raw mut from).cast();
        hdr.msg_namelen = mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        hdr.msg_iov = &raw mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = mem::size_of_val(&control);
        // SAFETY: every pointer in hdr refers to a live local buffer.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut hdr, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => return None,
                _ => panic!("recvmsg: {e}"),
            }
        }
        let mut hop_limit = None;
        // SAFETY: walking the control messages the kernel wrote into hdr.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::IPPROTO_IPV6
                    && (*cmsg).cmsg_type == libc::IPV6_HOPLIMIT
                {
                    hop_limit = Some(libc::CMSG_DATA(cmsg).cast::<i32>().read_unaligned());
                }
                cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
            }
        }
        Some(Received {
            from: from.sin6_addr.s6_addr.into(),
            hop_limit,
            msg: buf[..n as usize].to_vec(),
        })
    }

    /// The first advertisement for `target` within `limit`.
    fn advertisement_for(&self, target: Ipv6Addr, limit: Duration) -> Option<Received> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(r) = self.receive()
                && r.target() == Some(target)
            {
                return Some(r);
            }
        }
        None
    }
}

/// Whether this kernel can make SIT devices (CONFIG_IPV6_SIT); if not, what
/// `ip` said.
fn kernel_has_sit() -> Result<(), String> {
    let ns = Netns::unique("sitprobe").unwrap();
    let out = Command::new("ip")
        // Endpoints of its own: one without any would clash with sit0, the
        // any-to-any device the sit module puts in every namespace.
        .args(["-n", ns.name(), "link", "add", "sitprobe", "type", "sit"])
        .args(["local", "192.0.2.1", "remote", "192.0.2.2"])
        .output()
        .expect("running ip");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Test 3: a SIT tunnel has no link layer. The kernel does no neighbour
/// discovery on it, so raw sockets solicit; the answer must be a bare
/// 24-byte advertisement (no target link-layer option), and auto mode must
/// have picked TC (generic XDP cannot send answers out of an L3 device).
///
/// Ignored: this machine's kernel has no SIT (CONFIG_IPV6_SIT unset); the
/// TUN tests below cover L3 devices here, including the answer's protocol
/// (`tun_answer_leaves_as_ipv6`), which sit checks. `cargo xtask
/// kernel-test` runs it on Debian's kernels, which have SIT.
#[test]
#[ignore = "needs a kernel with SIT; see tun_answer_leaves_as_ipv6"]
fn sit_tunnel_answers_without_link_layer_option() {
    if let Err(why) = kernel_has_sit() {
        panic!("this kernel cannot make SIT devices (CONFIG_IPV6_SIT): {why}");
    }
    let pins = TestPins::new("sit");
    let broker_ns = Netns::unique("sitb").unwrap();
    let router = Netns::unique("sitr").unwrap();
    veth(
        End::new(&router, ROUTER_IF).with_mac(&mac_string(ROUTER_MAC)),
        End::new(&broker_ns, BROKER_IF).with_mac(&mac_string(BROKER_MAC)),
    )
    .unwrap();
    for (ns, dev, local, remote, v6) in [
        (
            &router,
            ROUTER_IF,
            "192.0.2.1",
            "192.0.2.2",
            "2001:db8:ff::1/64",
        ),
        (
            &broker_ns,
            BROKER_IF,
            "192.0.2.2",
            "192.0.2.1",
            "2001:db8:ff::2/64",
        ),
    ] {
        ns.ip(&["addr", "add", &format!("{local}/24"), "dev", dev])
            .unwrap();
        // `ip link add … type sit` rather than `ip tunnel add … mode sit`:
        // the same device, made over netlink, without needing sit0.
        ns.ip(&[
            "link", "add", "sit1", "type", "sit", "local", local, "remote", remote, "ttl", "64",
        ])
        .unwrap();
        ns.ip(&["link", "set", "sit1", "up"]).unwrap();
        ns.ip(&["addr", "add", v6, "dev", "sit1", "nodad"]).unwrap();
    }
    let inside: Ipv6Addr = "2001:db8:1::5".parse().unwrap();
    let outside: Ipv6Addr = "2001:db8:2::5".parse().unwrap();
    broker_ns
        .ip(&["addr", "add", "2001:db8:1::5/128", "dev", "lo"])
        .unwrap();

    let mut broker = ndp_serve(
        &broker_ns,
        &pins.dir,
        &["--interface", "sit1", "--prefix", PREFIX],
    )
    .unwrap();
    let log = broker.log();
    assert!(log.contains("attached (L3 device)"), "{log}");
    let (code, out) = ndp_status(&broker_ns, &pins.dir).unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("interface:  sit1 (attached)"), "{out}");
    assert!(out.contains("mode:       tc"), "{out}");
    assert!(out.contains("link layer: none (L3 device)"), "{out}");

    let socket = router.run(|| NdSocket::open("sit1"));
    let before = ndp::status(&pins.dir).unwrap().unwrap().counters;
    socket.solicit(inside, None);
    let na = socket
        .advertisement_for(inside, Duration::from_secs(2))
        .unwrap_or_else(|| {
            panic!(
                "no advertisement for {inside}; counters {:?}; sit1: {}",
                ndp::status(&pins.dir).unwrap().unwrap().counters,
                broker_ns.ip(&["-s", "link", "show", "sit1"]).unwrap()
            )
        });
    assert_eq!(na.msg[0], ICMPV6_NA, "{na:?}");
    assert_eq!(na.msg[1], 0, "code: {na:?}");
    assert_eq!(na.msg.len(), 24, "options on an L3 device: {na:?}");
    assert_eq!(na.target(), Some(inside));
    assert_eq!(na.from, inside, "source is the target: {na:?}");
    assert_ne!(na.flags() & NA_SOLICITED, 0, "S clear: {na:?}");
    assert_eq!(na.flags() & NA_OVERRIDE, 0, "O set: {na:?}");
    assert_eq!(na.flags() & NA_ROUTER, 0, "R set without --router: {na:?}");
    assert_eq!(na.hop_limit, Some(255), "{na:?}");

    socket.solicit(outside, None);
    let na = socket.advertisement_for(outside, Duration::from_millis(500));
    assert!(na.is_none(), "answered outside the prefix: {na:?}");
    let after = ndp::status(&pins.dir).unwrap().unwrap().counters;
    assert_one_answered_one_not_ours(before, after);
    broker.kill();
}

/// A TUN device (IFF_TUN): an L3 device without link layer whose far end is
/// this process. What the test writes to it arrives in the namespace as a
/// received packet (and meets the XDP program); what the namespace sends out
/// of it, XDP_TX included, is read back here. Each packet carries the 4-byte
/// packet information header, whose protocol field is the skb's.
struct Tun {
    fd: OwnedFd,
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const ETH_P_IPV6: u16 = 0x86dd;

impl Tun {
    /// Creates `name` in the calling thread's namespace; it goes away with
    /// the value.
    fn create(name: &str) -> Self {
        // SAFETY: plain syscalls; the ifreq carries a NUL-terminated name.
        unsafe {
            let raw = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            check(raw, "opening /dev/net/tun");
            let fd = OwnedFd::from_raw_fd(raw);
            let mut ifr: libc::ifreq = mem::zeroed();
            for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
                *dst = src as libc::c_char;
            }
            ifr.ifr_ifru.ifru_flags = libc::IFF_TUN as libc::c_short;
            check(
                libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &raw mut ifr),
                "TUNSETIFF",
            );
            Tun { fd }
        }
    }

    /// Injects an IPv6 packet.
    fn write(&self, packet: &[u8]) {
        let mut framed = vec![0, 0];
        framed.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
        framed.extend_from_slice(packet);
        // SAFETY: framed is live for the call.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), framed.as_ptr().cast(), framed.len()) };
        assert_eq!(
            n,
            framed.len() as isize,
            "writing to the TUN device: {}",
            io::Error::last_os_error()
        );
    }

    /// The next packet sent out of the device, with its skb protocol,
    /// waiting at most `timeout`.
    fn read(&self, timeout: Duration) -> Option<(u16, Vec<u8>)> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let ready = unsafe { libc::poll(&raw mut pfd, 1, timeout.as_millis() as libc::c_int) };
        check(ready, "poll on the TUN device");
        if ready == 0 {
            return None;
        }
        let mut buf = vec![0u8; 2048];
        // SAFETY: buf is live and as long as given.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(
            n >= 4,
            "reading the TUN device: {}",
            io::Error::last_os_error()
        );
        buf.truncate(n as usize);
        let packet = buf.split_off(4);
        Some((u16::from_be_bytes([buf[2], buf[3]]), packet))
    }

    /// The first advertisement for `target` sent out within `limit`, with
    /// its skb protocol (the kernel sends other things too: MLD reports,
    /// router solicitations).
    fn advertisement_for(&self, target: Ipv6Addr, limit: Duration) -> Option<(u16, Vec<u8>)> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let (proto, p) = self.read(left)?;
            if p.len() >= 64
                && p[0] >> 4 == 6
                && p[6] == 58
                && p[40] == ICMPV6_NA
                && p[48..64] == target.octets()
            {
                return Some((proto, p));
            }
        }
    }
}

/// A broker namespace with a TUN device tun0 (2001:db8:ff::2/64), INSIDE5 on
/// lo, and `ndp serve` on tun0 in auto mode. Fields drop in order.
struct TunLab {
    broker: Process,
    tun: Tun,
    broker_ns: Netns,
    pins: TestPins,
}

const INSIDE5: &str = "2001:db8:1::5";
const OUTSIDE5: &str = "2001:db8:2::5";

impl TunLab {
    fn new() -> Self {
        let pins = TestPins::new("tun");
        let broker_ns = Netns::unique("tunb").unwrap();
        let tun = broker_ns.run(|| Tun::create("tun0"));
        broker_ns.ip(&["link", "set", "tun0", "up"]).unwrap();
        broker_ns
            .ip(&["addr", "add", "2001:db8:ff::2/64", "dev", "tun0", "nodad"])
            .unwrap();
        broker_ns
            .ip(&["addr", "add", &format!("{INSIDE5}/128"), "dev", "lo"])
            .unwrap();
        let broker = ndp_serve(
            &broker_ns,
            &pins.dir,
            &["--interface", "tun0", "--prefix", PREFIX],
        )
        .unwrap();
        TunLab {
            broker,
            tun,
            broker_ns,
            pins,
        }
    }

    fn counters(&self) -> Counters {
        ndp::status(&self.pins.dir)
            .expect("reading the pins")
            .expect("a responder is pinned")
            .counters
    }

    /// What the router side sends on a link without link layer: NS to the
    /// solicited-node group from ROUTER_IP (2001:db8:ff::1), no option.
    fn solicitation(target: Ipv6Addr) -> Vec<u8> {
        Ns {
            l3: true,
            options: Vec::new(),
            ..Ns::multicast(target)
        }
        .frame()
    }
}

/// Test 3 as it can run here: an L3 device without link layer (TUN, which
/// this kernel has; it has no SIT). Auto mode picks TC, the
/// status says so, and the answer is exactly the one the reference model of
/// broker-lab's ndp_frames.rs computes: hop limit 255, a bare 24-byte
/// advertisement, S set, O and R clear, no option.
#[test]
fn tun_answers_without_link_layer_option() {
    let lab = TunLab::new();
    let log = lab.broker.log();
    assert!(log.contains("attached (L3 device)"), "{log}");
    let (code, out) = ndp_status(&lab.broker_ns, &lab.pins.dir).unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("interface:  tun0 (attached)"), "{out}");
    assert!(out.contains("mode:       tc"), "{out}");
    assert!(out.contains("link layer: none (L3 device)"), "{out}");

    let model = Model {
        prefixes: vec![PREFIX.parse().unwrap()],
        mac: [0; 6],
        router: false,
        l3: true,
        vlan: None,
    };
    let inside: Ipv6Addr = INSIDE5.parse().unwrap();
    let outside: Ipv6Addr = OUTSIDE5.parse().unwrap();
    let before = lab.counters();
    let question = TunLab::solicitation(inside);
    let Verdict::Answer(expected) = model.verdict(&question) else {
        panic!("the model does not answer {question:02x?}");
    };
    lab.tun.write(&question);
    let (_, answer) = lab
        .tun
        .advertisement_for(inside, Duration::from_secs(2))
        .unwrap_or_else(|| {
            panic!(
                "no advertisement for {inside}; counters {:?}\n{}",
                lab.counters(),
                lab.broker.log()
            )
        });
    assert_eq!(answer, expected, "got {answer:02x?}\nwant {expected:02x?}");
    assert_eq!(answer.len(), 40 + 24, "options on an L3 device");
    assert_eq!(answer[7], 255, "hop limit");
    assert_eq!(
        answer[44] & (NA_SOLICITED | NA_OVERRIDE | NA_ROUTER),
        NA_SOLICITED,
        "flags"
    );

    lab.tun.write(&TunLab::solicitation(outside));
    let na = lab
        .tun
        .advertisement_for(outside, Duration::from_millis(300));
    assert_eq!(na, None, "answered outside the prefix");
    let after = lab.counters();
    assert_one_answered_one_not_ours(before, after);
}

/// The answer on an L3 device must leave as an IPv6 packet. Generic XDP
/// reads bytes 0–13 of the rewritten packet as an Ethernet header: when the
/// bytes at 12–13 change (the IPv6 source address's bytes 4–5, i.e. when the
/// solicitor's source and the target differ there) the kernel re-derives
/// skb->protocol with eth_type_trans, and the answer would leave with
/// protocol 0x0004 instead of 0x86dd; hence TC on L3 devices. TUN passes
/// any protocol on (this test reads it from the packet information header);
/// sit, GRE and WireGuard drop what is not IP.
#[test]
fn tun_answer_leaves_as_ipv6() {
    let lab = TunLab::new();
    let inside: Ipv6Addr = INSIDE5.parse().unwrap();
    lab.tun.write(&TunLab::solicitation(inside));
    let (proto, _) = lab
        .tun
        .advertisement_for(inside, Duration::from_secs(2))
        .expect("an advertisement");
    assert_eq!(
        proto, ETH_P_IPV6,
        "skb protocol of the answer: {proto:#06x}"
    );
}

/// At TC the program is held by a TCX link (Linux 6.6 and later) or, where
/// the kernel has none (Debian 12's 6.1; `cargo xtask kernel-test` runs this
/// there), by a filter on the clsact qdisc through netlink. Either way it
/// outlives the process, a restart swaps the new program in, and `ndp
/// detach` takes it off the device.
#[test]
fn tc_attachment_survives_restart_and_detach_removes_it() {
    let mut lab = TunLab::new();
    let inside: Ipv6Addr = INSIDE5.parse().unwrap();
    let answered = |lab: &TunLab| {
        lab.tun.write(&TunLab::solicitation(inside));
        lab.tun
            .advertisement_for(inside, Duration::from_secs(2))
            .is_some()
    };
    let (code, out) = ndp_status(&lab.broker_ns, &lab.pins.dir).unwrap();
    assert_eq!(code, Some(0), "{out}");
    let netlink = if out.contains("mode:       tc (netlink clsact filter)") {
        true
    } else {
        assert!(out.contains("mode:       tc (TCX link)"), "{out}");
        false
    };
    assert!(answered(&lab), "no answer after the first start");

    lab.broker.kill();
    assert!(answered(&lab), "no answer once the process was killed");
    let (_, out) = ndp_status(&lab.broker_ns, &lab.pins.dir).unwrap();
    assert!(out.contains("interface:  tun0 (attached)"), "{out}");

    lab.broker = ndp_serve(
        &lab.broker_ns,
        &lab.pins.dir,
        &["--interface", "tun0", "--prefix", PREFIX],
    )
    .unwrap();
    let log = lab.broker.log();
    let adopted = if netlink {
        "adopted the netlink attachment"
    } else {
        "adopted the pinned link"
    };
    assert!(log.contains(adopted), "{log}");
    assert!(answered(&lab), "no answer after the restart");

    lab.broker.kill();
    let mut detach = broker_command(&lab.broker_ns, &lab.pins.dir).unwrap();
    detach.args(["ndp", "detach"]);
    let out = run_bounded(detach, Duration::from_secs(10) * time_scale()).unwrap();
    assert!(
        out.status.is_some_and(|s| s.success()),
        "ndp detach: {}",
        out.stderr
    );
    assert!(!lab.pins.dir.exists(), "ndp detach left the pins");
    assert!(!answered(&lab), "answered after ndp detach");
    if netlink {
        let filters = lab
            .broker_ns
            .output("tc", &["filter", "show", "dev", "tun0", "ingress"])
            .unwrap();
        let filters = String::from_utf8_lossy(&filters.stdout);
        assert!(!filters.contains("ndp_responder"), "{filters}");
    }
}

/// Test 4: while the router solicits without pause, the broker is killed
/// (SIGKILL, no clean-up) and started again. The pinned link keeps the
/// program answering meanwhile, and the new process swaps its program into
/// that link atomically: every solicitation gets its advertisement.
fn restart_loses_no_answer(mode: Mode) {
    const COUNT: u16 = 300;
    const INTERVAL: Duration = Duration::from_millis(10);
    let mut lab = VethLab::new(mode);
    let socket = Arc::new(lab.router.run(|| NdSocket::open(ROUTER_IF)));
    let target = |i: u16| Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 1, i);
    let before = lab.counters();
    let first_prog = lab.xdp_prog_id().expect("an XDP program on b0");

    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let socket = Arc::clone(&socket);
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut answers: Vec<(Instant, Ipv6Addr)> = Vec::new();
            // Bounded: the sender is done within ~3 s, and 20 s is a backstop.
            let backstop = Instant::now() + Duration::from_secs(20) * time_scale();
            while !done.load(Ordering::Relaxed) && Instant::now() < backstop {
                if let Some(na) = socket.receive()
                    && let Some(t) = na.target()
                {
                    answers.push((Instant::now(), t));
                }
            }
            answers
        })
    };
    let start = Instant::now();
    let sender = {
        let socket = Arc::clone(&socket);
        thread::spawn(move || {
            for i in 0..COUNT {
                socket.solicit(target(i), Some(ROUTER_MAC));
                let next = start + INTERVAL * u32::from(i + 1);
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };

    thread::sleep(Duration::from_millis(800));
    lab.broker().kill();
    let killed = Instant::now();
    assert!(lab.status().attached, "the link pin went with the process");
    thread::sleep(Duration::from_millis(600));
    assert_eq!(
        lab.xdp_prog_id(),
        Some(first_prog),
        "the program left b0 with the process"
    );
    let restarting = Instant::now();
    lab.serve(&[PREFIX]);
    let log = lab.broker().log();
    assert!(log.contains("adopted the pinned link"), "{log}");
    let second_prog = lab.xdp_prog_id().expect("an XDP program on b0");
    assert_ne!(
        first_prog, second_prog,
        "the new program was not swapped in"
    );

    sender.join().expect("sender");
    let sent_for = start.elapsed();
    thread::sleep(Duration::from_millis(300));
    done.store(true, Ordering::Relaxed);
    let answers = receiver.join().expect("receiver");

    let missing: Vec<u16> = (0..COUNT)
        .filter(|&i| !answers.iter().any(|(_, t)| *t == target(i)))
        .collect();
    let after = lab.counters();
    assert!(
        missing.is_empty(),
        "{} of {COUNT} solicitations unanswered (indices {missing:?}); counters {before:?} -> {after:?}",
        missing.len()
    );
    let while_down = answers
        .iter()
        .filter(|(at, _)| *at > killed && *at < restarting)
        .count();
    assert!(
        while_down >= 30,
        "only {while_down} answers while no process ran"
    );
    assert!(
        after.answered >= before.answered + u64::from(COUNT),
        "{before:?} -> {after:?}"
    );
    assert!(
        sent_for < Duration::from_secs(6) * time_scale(),
        "sending took {sent_for:?}"
    );
}

#[test]
fn driver_restart_loses_no_answer() {
    restart_loses_no_answer(Mode::Driver);
}

#[test]
fn generic_restart_loses_no_answer() {
    restart_loses_no_answer(Mode::Generic);
}

/// Runs `ndp serve ARGS` that must fail: returns its stderr after checking
/// the exit code, that stderr is one line, and that nothing was pinned.
fn refused(ns: &Netns, args: &[&str]) -> String {
    let pins = TestPins::new("bad");
    let mut cmd = broker_command(ns, &pins.dir).unwrap();
    cmd.args(["ndp", "serve"]).args(args);
    let out = run_bounded(cmd, Duration::from_secs(10) * time_scale()).unwrap();
    let (status, stderr) = (out.status, out.stderr);
    let status = status.unwrap_or_else(|| panic!("ndp serve {args:?} kept running: {stderr}"));
    assert!(!status.success(), "ndp serve {args:?} succeeded: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "ndp serve {args:?}: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        !pins.dir.exists(),
        "ndp serve {args:?} left {} behind",
        pins.dir.path().display()
    );
    let (code, out) = ndp_status(ns, &pins.dir).unwrap();
    assert_eq!(code, Some(3), "ndp status after {args:?}: {out}");
    lines[0].to_string()
}

/// Test 5: bad input is refused with a one-line error before anything is
/// pinned.
#[test]
fn bad_input_is_refused_and_pins_nothing() {
    let ns = Netns::unique("bad").unwrap();
    for (args, expected) in [
        (
            &["--interface", "bbtnosuch0", "--prefix", PREFIX][..],
            "unknown interface `bbtnosuch0`",
        ),
        (
            &["--interface", "lo", "--prefix", "192.0.2.0/24"][..],
            "192.0.2.0/24 is not an IPv6 prefix",
        ),
        (
            &[
                "--interface",
                "lo",
                "--prefix",
                "2001:db8:1::/48",
                "--prefix",
                "2001:db8:1:2::/64",
            ][..],
            "2001:db8:1:2::/64 overlaps 2001:db8:1::/48",
        ),
        (
            &["--interface", "lo", "--prefix", "2001:db8:1::1/64"][..],
            "2001:db8:1::1/64 has host bits set; did you mean 2001:db8:1::/64?",
        ),
        (
            &["--interface", "lo", "--prefix", "::/0"][..],
            "a /0 would answer for every address",
        ),
    ] {
        let error = refused(&ns, args);
        assert!(error.contains(expected), "{args:?}: {error}");
    }
}

/// An attach that fails after the maps were pinned (a bridge device is
/// Ethernet but has no native XDP) leaves nothing behind either.
#[test]
fn failed_attach_pins_nothing() {
    let ns = Netns::unique("badatt").unwrap();
    ns.ip(&["link", "add", "bbbridge", "type", "bridge"])
        .unwrap();
    ns.ip(&["link", "set", "bbbridge", "up"]).unwrap();
    let error = refused(
        &ns,
        &[
            "--interface",
            "bbbridge",
            "--prefix",
            PREFIX,
            "--mode",
            "driver",
        ],
    );
    assert!(error.contains("driver mode"), "{error}");
}

/// Since `before`: exactly one solicitation answered and one not ours, and
/// none invalid or failed.
fn assert_one_answered_one_not_ours(before: Counters, after: Counters) {
    assert_eq!(
        after.answered,
        before.answered + 1,
        "{before:?} -> {after:?}"
    );
    assert_eq!(
        after.not_ours,
        before.not_ours + 1,
        "{before:?} -> {after:?}"
    );
    assert_eq!((after.invalid, after.failed), (0, 0), "{after:?}");
}

/// The pass program links the responder's library, maps included: loading
/// it pins nothing, neither at the bpffs root nor in a scratch directory.
#[test]
fn helper_objects_leave_no_pins() {
    let pass = PassProgram::load().expect("load the pass program (as root)");
    let strays: Vec<String> = std::fs::read_dir("/sys/fs/bpf")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            name.starts_with("NDP_")
                || name.starts_with(&format!("blockhost-broker-scratch-{}-", std::process::id()))
        })
        .collect();
    drop(pass);
    assert_eq!(strays, Vec::<String>::new());
}
