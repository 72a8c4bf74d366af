//! The link lab: a generator namespace and a responder namespace joined by a
//! veth (g0 – b0), the responder side answering for a set of allocations in
//! one of four designs. Built afresh for each design, so no design inherits
//! another's state (the kernel proxy's entries above all). Every part is a
//! guard: the ndppd process is killed, the XDP programs detached and the
//! namespaces deleted when the lab drops, also on an error or a panic.

use std::{
    io::Write as _,
    net::Ipv6Addr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use broker_userspace::ndp::{AttachMode, Interface, Responder, ResponderOptions};
use ipnet::Ipv6Net;

use crate::{
    frames::{BROKER_MAC, Ns, ROUTER_IP, ROUTER_MAC},
    generator::{NaCounter, Prober, TxRing},
    kernel_cost::UPSTREAM,
    netns::{End, Netns, mac_string, veth},
    pins::TestPins,
};

pub const GEN_IF: &str = "g0";
pub const RSP_IF: &str = "b0";

/// The four ways of answering, measured side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Design {
    /// Our responder, XDP in driver (native) mode.
    Native,
    /// Our responder, XDP in generic (SKB) mode.
    Generic,
    /// The kernel's proxy_ndp with `ip -6 neigh add proxy` entries, 256 per
    /// allocation: the old broker's design.
    KernelProxy,
    /// ndppd with one static rule per allocation.
    Ndppd,
}

impl Design {
    pub const ALL: [Design; 4] = [
        Design::Native,
        Design::Generic,
        Design::KernelProxy,
        Design::Ndppd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Design::Native => "our responder (XDP, native)",
            Design::Generic => "our responder (XDP, generic)",
            Design::KernelProxy => "kernel proxy_ndp (256 entries per allocation)",
            Design::Ndppd => "ndppd (static rules)",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Design::Native => "xdp_native",
            Design::Generic => "xdp_generic",
            Design::KernelProxy => "kernel_proxy",
            Design::Ndppd => "ndppd",
        }
    }
}

/// The addresses the old design installs for an allocation: all of it when
/// it has at most 256, else its first 256 after the network address.
pub fn proxy_addresses(net: Ipv6Net) -> impl Iterator<Item = Ipv6Addr> {
    let base = u128::from(net.network());
    let host_bits = 128 - u32::from(net.prefix_len());
    let (first, count) = if host_bits <= 8 {
        (0u128, 1u128 << host_bits)
    } else {
        (1, 256)
    };
    (first..first + count).map(move |i| Ipv6Addr::from(base + i))
}

/// A running ndppd, killed on drop.
struct Ndppd {
    child: Child,
    _config: tempfile::NamedTempFile,
}

impl Drop for Ndppd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fields drop in order: ndppd, responder, counter, namespaces, pins.
pub struct Lab {
    ndppd: Option<Ndppd>,
    responder: Option<Responder>,
    pub counter: NaCounter,
    pub gen_ns: Netns,
    pub rsp: Netns,
    pins: TestPins,
    pub design: Design,
    pub allocations: Vec<Ipv6Net>,
    gen_ifindex: u32,
}

impl Lab {
    /// Two namespaces, the veth, the counter on g0; nothing answers yet.
    pub fn new(design: Design) -> anyhow::Result<Self> {
        let pins = TestPins::new("bench");
        let rsp = Netns::unique("rsp")?;
        let gen_ns = Netns::unique("gen")?;
        veth(
            End::new(&gen_ns, GEN_IF).with_mac(&mac_string(ROUTER_MAC)),
            End::new(&rsp, RSP_IF).with_mac(&mac_string(BROKER_MAC)),
        )?;
        gen_ns.ip(&[
            "addr",
            "add",
            &format!("{ROUTER_IP}/64"),
            "dev",
            GEN_IF,
            "nodad",
        ])?;
        rsp.ip(&["addr", "add", "2001:db8:ff::2/64", "dev", RSP_IF, "nodad"])?;
        // Answers go to the generator without resolving it first (ndppd's
        // would otherwise wait for a resolution of their own).
        rsp.ip(&[
            "-6",
            "neigh",
            "replace",
            &ROUTER_IP.to_string(),
            "lladdr",
            &mac_string(ROUTER_MAC),
            "dev",
            RSP_IF,
            "nud",
            "permanent",
        ])?;
        // The allocations are routed on, as the broker routes them into its
        // tunnels; the kernel proxy answers unicast probes only for
        // addresses it would forward. A veth pair stands in for wg0.
        rsp.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"])?;
        rsp.ip(&["link", "set", "up0", "up"])?;
        rsp.ip(&["link", "set", "up1", "up"])?;
        let upstream = Ipv6Net::new(Ipv6Addr::from(UPSTREAM), 48).context("upstream")?;
        rsp.ip(&["-6", "route", "add", &upstream.to_string(), "dev", "up0"])?;
        let (counter, gen_ifindex) = gen_ns.run(|| -> anyhow::Result<_> {
            let iface = Interface::by_name(GEN_IF)?;
            Ok((NaCounter::attach(iface.index)?, iface.index))
        })?;
        Ok(Lab {
            ndppd: None,
            responder: None,
            counter,
            gen_ns,
            rsp,
            pins,
            design,
            allocations: Vec::new(),
            gen_ifindex,
        })
    }

    /// Starts answering for `allocations` in this lab's design. Returns how
    /// long that took (for ndppd: until it answers, see [`Lab::wait_answering`]).
    pub fn provision(&mut self, allocations: &[Ipv6Net]) -> anyhow::Result<Duration> {
        let start = Instant::now();
        self.allocations = allocations.to_vec();
        match self.design {
            Design::Native | Design::Generic => {
                let mode = if self.design == Design::Native {
                    AttachMode::Driver
                } else {
                    AttachMode::Generic
                };
                let mut responder = Responder::load(&self.pins.dir)?;
                let responder = self.rsp.run(move || -> anyhow::Result<Responder> {
                    let iface = Interface::by_name(RSP_IF)?;
                    responder.attach(&iface, mode, ResponderOptions::default())?;
                    Ok(responder)
                })?;
                let responder = self.responder.insert(responder);
                for net in allocations {
                    responder.insert(*net)?;
                }
            }
            Design::KernelProxy => {
                self.rsp.sysctl(&[
                    ("net.ipv6.conf.all.forwarding", "1"),
                    ("net.ipv6.conf.all.proxy_ndp", "1"),
                    (&format!("net.ipv6.conf.{RSP_IF}.proxy_ndp"), "1"),
                ])?;
                for net in allocations {
                    proxy_batch(&self.rsp, RSP_IF, *net)?;
                }
            }
            Design::Ndppd => {
                self.ndppd = Some(start_ndppd(&self.rsp, allocations)?);
                let probe = allocations.last().context("no allocations")?;
                self.wait_answering(host(*probe, 1), Duration::from_secs(60))?;
            }
        }
        Ok(start.elapsed())
    }

    /// Solicits `target` every 100 ms until an answer comes (at most `limit`).
    pub fn wait_answering(&mut self, target: Ipv6Addr, limit: Duration) -> anyhow::Result<()> {
        let prober = self.prober()?;
        self.counter.set_pass(true)?;
        let frame = Ns::multicast(target).frame();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if prober
                .probe(&frame, target, Duration::from_millis(100))?
                .is_some()
            {
                return Ok(());
            }
            if let Some(ndppd) = self.ndppd.as_mut()
                && let Some(status) = ndppd.child.try_wait()?
            {
                bail!("ndppd exited ({status}) before answering");
            }
        }
        bail!(
            "{} did not answer for {target} within {limit:?}",
            self.design.name()
        )
    }

    pub fn prober(&self) -> anyhow::Result<Prober> {
        let ifindex = self.gen_ifindex;
        self.gen_ns.run(move || Prober::open(ifindex))
    }

    pub fn tx_ring(&self) -> anyhow::Result<TxRing> {
        let ifindex = self.gen_ifindex;
        self.gen_ns.run(move || TxRing::open(ifindex))
    }

    /// Our responder's counters (None for the other designs).
    pub fn responder_counters(&self) -> anyhow::Result<Option<broker_userspace::ndp::Counters>> {
        self.responder
            .as_ref()
            .map(|r| r.counters())
            .transpose()
            .map_err(Into::into)
    }

    /// ndppd's resident memory, when it runs.
    pub fn ndppd_rss_bytes(&self) -> Option<u64> {
        let pid = self.ndppd.as_ref()?.child.id();
        rss_bytes(pid)
    }
}

/// VmRSS of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Address `i` of `net` (wrapping inside it).
pub fn host(net: Ipv6Net, i: u128) -> Ipv6Addr {
    let host_bits = 128 - u32::from(net.prefix_len());
    let mask = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    Ipv6Addr::from(u128::from(net.network()) | (i & mask))
}

/// One `ip -batch` process installing the proxy entries of one allocation:
/// the batched variant of the old design (one netlink request per entry,
/// one process per allocation).
pub fn proxy_batch(ns: &Netns, dev: &str, net: Ipv6Net) -> anyhow::Result<()> {
    let mut script = String::new();
    for addr in proxy_addresses(net) {
        script.push_str(&format!("neigh add proxy {addr} dev {dev}\n"));
    }
    let mut child = Command::new("ip")
        .args(["-6", "-n", ns.name(), "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting ip -batch")?;
    child
        .stdin
        .take()
        .context("ip's stdin")?
        .write_all(script.as_bytes())
        .context("writing to ip -batch")?;
    let out = child.wait_with_output().context("waiting for ip -batch")?;
    if !out.status.success() {
        bail!(
            "ip -batch for {net}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One `ip -6 neigh add proxy` process per address: exactly what the old
/// broker ran.
pub fn proxy_one(ns: &Netns, dev: &str, addr: Ipv6Addr) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args([
            "-6",
            "-n",
            ns.name(),
            "neigh",
            "add",
            "proxy",
            &addr.to_string(),
            "dev",
            dev,
        ])
        .stdin(Stdio::null())
        .output()
        .context("running ip neigh add proxy")?;
    if !out.status.success() {
        bail!(
            "ip neigh add proxy {addr}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn start_ndppd(ns: &Netns, allocations: &[Ipv6Net]) -> anyhow::Result<Ndppd> {
    let mut config = tempfile::Builder::new()
        .prefix("bbt-ndppd-")
        .suffix(".conf")
        .tempfile()
        .context("ndppd config file")?;
    // Router flag off, as our responder's default; static: answer at once,
    // without asking an inner interface.
    let mut text = format!("proxy {RSP_IF} {{\n    router no\n");
    for net in allocations {
        text.push_str(&format!("    rule {net} {{\n        static\n    }}\n"));
    }
    text.push_str("}\n");
    config
        .write_all(text.as_bytes())
        .context("writing the ndppd config")?;
    config.flush()?;
    let child = ns
        .command("ndppd")
        .arg("-c")
        .arg(config.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting ndppd (is `cargo xtask setup` done?)")?;
    Ok(Ndppd {
        child,
        _config: config,
    })
}
