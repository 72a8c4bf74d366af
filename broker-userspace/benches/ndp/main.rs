//! `cargo xtask bench ndp`: what the NDP responder costs, measured on this
//! machine, side by side with the designs it replaces.
//!
//! 1. In-kernel cost per packet (BPF_PROG_TEST_RUN, kernel-reported) for
//!    solicitations answered, solicitations not ours and other traffic, as
//!    the number of allocations grows, with the empty program as baseline
//!    (kernel_cost.rs).
//! 2. Answered solicitations per second across a veth between two network
//!    namespaces, for our responder in native and generic mode, the kernel's
//!    proxy_ndp with per-address entries and ndppd (link_rate.rs, with the
//!    generator and the counter in generator.rs and the lab in lab.rs).
//! 3. Resolution latency, one solicitation at a time (latency.rs).
//! 4. Provisioning: time and memory to install 1,000 and 10,000 allocations,
//!    and how much of each allocation is answered (provisioning.rs, and the
//!    coverage runs of link_rate.rs).
//!
//! Run by cargo's test harness (no `--bench` argument) it does a quick smoke
//! run instead, so CI checks it still works without paying for it: every part
//! runs briefly and only sanity is checked, never performance.
//!
//! `--only kernel-cost` runs part 1 alone and prints its table (no files).

mod generator;
mod kernel_cost;
mod lab;
mod latency;
mod link_rate;
mod plot;
mod provisioning;
mod report;

// The test kit's frames, namespaces and pins, as `crate::…` for the parts.
use broker_lab::{ndp_frames as frames, netns, pins};
use std::{path::PathBuf, time::Instant};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let out_dir = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench"));
    let allocation_size: u8 = args
        .iter()
        .position(|a| a == "--allocation-size")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(120);
    if !(49..=128).contains(&allocation_size) {
        anyhow::bail!("--allocation-size must be 49..=128 (allocations inside a /48)");
    }
    let only_kernel_cost = match args
        .iter()
        .position(|a| a == "--only")
        .map(|i| args.get(i + 1).map(String::as_str))
    {
        None => false,
        Some(Some("kernel-cost")) => true,
        Some(other) => {
            anyhow::bail!("--only {other:?}: the one part that runs alone is kernel-cost")
        }
    };
    let started = Instant::now();
    let load_before = report::load_average();
    let (cost_plan, link_plan, latency_plan, provisioning_plan) = if full {
        (
            kernel_cost::Plan::full(allocation_size),
            link_rate::Plan::full(),
            latency::Plan::full(),
            provisioning::Plan::full(allocation_size),
        )
    } else {
        (
            kernel_cost::Plan::smoke(allocation_size),
            link_rate::Plan::smoke(),
            latency::Plan::smoke(),
            provisioning::Plan::smoke(allocation_size),
        )
    };
    eprintln!("1. in-kernel cost per packet");
    let cost = kernel_cost::run(&cost_plan)?;
    let (link, provisioning) = if only_kernel_cost {
        (Vec::new(), Vec::new())
    } else {
        eprintln!("2-3. link rate, latency and coverage, design by design");
        let link = link_rate::run(&link_plan, &latency_plan, allocation_size)?;
        eprintln!("4. provisioning");
        (link, provisioning::run(&provisioning_plan)?)
    };
    let report = report::Report {
        full,
        allocation_size,
        machine: report::Machine::read(),
        kernel_cost: cost,
        link_allocations: link_plan.allocations,
        link_flood_seconds: link_plan.flood.as_secs_f64(),
        link_drain_seconds: link_plan.drain.as_secs_f64(),
        link_drain_prompt_seconds: link_plan.drain_prompt.as_secs_f64(),
        link,
        provisioning,
        seconds: started.elapsed().as_secs_f64(),
        load_average: (load_before, report::load_average()),
    };
    if only_kernel_cost {
        report.print_kernel_cost();
        return Ok(());
    }
    report.print_summary();
    if full {
        report.write(&out_dir)?;
        eprintln!("wrote {}", out_dir.display());
    } else {
        report.check_sane()?;
        println!("1 passed, 0 failed");
    }
    Ok(())
}
