//! Part 4: what installing allocations costs in each design, in time and in
//! memory, at 1,000 and 10,000 allocations.
//!
//! - Our responder: one map update per allocation; memory is what the kernel
//!   reports for the prefix map (`memlock` in its fdinfo).
//! - The kernel proxy: 256 `ip -6 neigh add proxy` entries per allocation,
//!   installed two ways: one `ip` process per address (what the old broker
//!   ran) and one `ip -batch` per allocation. Every entry joins a multicast
//!   group and the kernel keeps both in short lists, so each install costs
//!   more than the last: both runs stop at a time budget and report how far
//!   they got. Memory is the growth of the kernel's slab (system-wide, so
//!   other work on the machine adds noise).
//! - ndppd: a configuration with one static rule per allocation, from the
//!   start of the process until it answers for the last allocation (it has
//!   no way to add a rule while running); memory is its resident set.
//!
//! How much of each allocation each design answers is measured in the link
//! lab (link_rate::coverage and link_rate::sweep).

use std::{
    os::fd::{AsFd, AsRawFd},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::MapData;
use broker_common::ndp::PREFIXES_MAP;
use broker_userspace::ndp::{LinkLayer, Responder, ResponderOptions};

use crate::{
    frames::BROKER_MAC,
    kernel_cost::allocation,
    lab::{Design, Lab, proxy_addresses, proxy_batch, proxy_one},
    netns::Netns,
    pins::TestPins,
};

pub struct Plan {
    pub allocation_size: u8,
    pub counts: Vec<usize>,
    /// Per kernel-proxy run.
    pub proxy_budget: Duration,
    pub proxy_one_budget: Duration,
}

impl Plan {
    pub fn full(allocation_size: u8) -> Self {
        Plan {
            allocation_size,
            counts: vec![1_000, 10_000],
            proxy_budget: Duration::from_secs(60),
            proxy_one_budget: Duration::from_secs(20),
        }
    }

    pub fn smoke(allocation_size: u8) -> Self {
        Plan {
            allocation_size,
            counts: vec![10, 100],
            proxy_budget: Duration::from_millis(1500),
            proxy_one_budget: Duration::from_millis(500),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Install {
    pub design: Design,
    pub method: &'static str,
    /// Allocations asked for.
    pub allocations: usize,
    /// Allocations fully installed when it stopped.
    pub installed: usize,
    /// Entries (map keys, proxy entries, rules) installed.
    pub entries: u64,
    pub seconds: f64,
    pub completed: bool,
    /// Growth while installing (ndppd: its whole resident set).
    pub memory_bytes: Option<u64>,
    /// Held before the first allocation (our map's bucket array).
    pub memory_fixed_bytes: Option<u64>,
    pub memory_what: &'static str,
}

pub fn run(plan: &Plan) -> anyhow::Result<Vec<Install>> {
    let mut out = Vec::new();
    for &n in &plan.counts {
        out.push(ours(plan, n)?);
        eprintln!("  provisioning: our responder, {n} allocations");
    }
    out.extend(kernel_proxy_batched(plan)?);
    eprintln!("  provisioning: kernel proxy, ip -batch");
    out.extend(kernel_proxy_per_address(plan)?);
    eprintln!("  provisioning: kernel proxy, one ip per address");
    for &n in &plan.counts {
        out.push(ndppd(plan, n)?);
        eprintln!("  provisioning: ndppd, {n} allocations");
    }
    Ok(out)
}

fn ours(plan: &Plan, n: usize) -> anyhow::Result<Install> {
    let pins = TestPins::new("prov");
    let mut responder = Responder::load(&pins.dir)?;
    responder.configure_detached(LinkLayer::Ethernet(BROKER_MAC), ResponderOptions::default())?;
    let map =
        MapData::from_pin(pins.dir.map(PREFIXES_MAP)).context("opening the pinned prefix map")?;
    let memlock = || fdinfo_field(map.fd().as_fd().as_raw_fd(), "memlock");
    // The empty map already holds its bucket array (sized for the most
    // prefixes it can take); what grows per allocation is the elements.
    let empty = memlock();
    let start = Instant::now();
    for i in 0..n {
        responder.insert(allocation(i as u64, plan.allocation_size))?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let memory_bytes = memlock()
        .zip(empty)
        .map(|(full, empty)| full.saturating_sub(empty));
    Ok(Install {
        design: Design::Native,
        method: "map update per allocation",
        allocations: n,
        installed: n,
        entries: n as u64,
        seconds,
        completed: true,
        memory_bytes,
        memory_fixed_bytes: empty,
        memory_what: "prefix map growth (kernel-reported memlock)",
    })
}

fn fdinfo_field(fd: i32, field: &str) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .parse()
        .ok()
}

fn slab_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("Slab:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// A namespace with a veth for the proxy entries, proxying on.
fn proxy_ns() -> anyhow::Result<Netns> {
    let ns = Netns::unique("prx")?;
    ns.ip(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"])?;
    ns.ip(&["link", "set", "p0", "up"])?;
    ns.ip(&["link", "set", "p1", "up"])?;
    ns.sysctl(&[
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv6.conf.all.proxy_ndp", "1"),
        ("net.ipv6.conf.p0.proxy_ndp", "1"),
    ])?;
    Ok(ns)
}

/// One install run up to the largest count, with a result at each count
/// (reached or not) from the same run.
fn kernel_proxy_batched(plan: &Plan) -> anyhow::Result<Vec<Install>> {
    let ns = proxy_ns()?;
    let slab_before = slab_bytes();
    let start = Instant::now();
    let max = plan.counts.iter().copied().max().unwrap_or(0);
    let mut out = Vec::new();
    let mut done = 0usize;
    let mut entries = 0u64;
    let record = |n: usize, done: usize, entries: u64, out: &mut Vec<Install>| {
        out.push(Install {
            design: Design::KernelProxy,
            method: "ip -batch per allocation",
            allocations: n,
            installed: done,
            entries,
            seconds: start.elapsed().as_secs_f64(),
            completed: done >= n,
            memory_bytes: slab_before
                .zip(slab_bytes())
                .map(|(b, a)| a.saturating_sub(b)),
            memory_fixed_bytes: None,
            memory_what: "kernel slab growth (system-wide)",
        });
    };
    let mut counts = plan.counts.clone();
    counts.sort_unstable();
    let mut next = counts.iter().peekable();
    while done < max && start.elapsed() < plan.proxy_budget {
        let net = allocation(done as u64, plan.allocation_size);
        proxy_batch(&ns, "p0", net)?;
        entries += proxy_addresses(net).count() as u64;
        done += 1;
        if next.peek().is_some_and(|&&n| n == done) {
            record(done, done, entries, &mut out);
            next.next();
        }
    }
    // Counts the budget did not reach: how far it got.
    for &n in next {
        record(n, done, entries, &mut out);
    }
    // Deleting a namespace with many entries takes a while; keep it out of
    // the measured time (it ends here, after recording).
    drop(ns);
    Ok(out)
}

/// What the old broker ran: one `ip` process per address.
fn kernel_proxy_per_address(plan: &Plan) -> anyhow::Result<Vec<Install>> {
    let ns = proxy_ns()?;
    let start = Instant::now();
    let max = plan.counts.iter().copied().max().unwrap_or(0);
    let mut entries = 0u64;
    let mut done = 0usize;
    'outer: while done < max {
        let net = allocation(done as u64, plan.allocation_size);
        for addr in proxy_addresses(net) {
            if start.elapsed() >= plan.proxy_one_budget {
                break 'outer;
            }
            proxy_one(&ns, "p0", addr)?;
            entries += 1;
        }
        done += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(ns);
    Ok(plan
        .counts
        .iter()
        .map(|&n| Install {
            design: Design::KernelProxy,
            method: "one ip process per address (old broker)",
            allocations: n,
            installed: done.min(n),
            entries,
            seconds,
            completed: done >= n,
            memory_bytes: None,
            memory_fixed_bytes: None,
            memory_what: "",
        })
        .collect())
}

fn ndppd(plan: &Plan, n: usize) -> anyhow::Result<Install> {
    let mut lab = Lab::new(Design::Ndppd)?;
    let nets: Vec<_> = (0..n)
        .map(|i| allocation(i as u64, plan.allocation_size))
        .collect();
    let elapsed = lab.provision(&nets)?;
    Ok(Install {
        design: Design::Ndppd,
        method: "config with one static rule per allocation, start until answering",
        allocations: n,
        installed: n,
        entries: n as u64,
        seconds: elapsed.as_secs_f64(),
        completed: true,
        memory_bytes: lab.ndppd_rss_bytes(),
        memory_fixed_bytes: None,
        memory_what: "ndppd resident set",
    })
}
