//! `cargo xtask bench ndp`: what the NDP responder costs, measured on this
//! machine, side by side with its baseline.
//!
//! 1. In-kernel cost per packet (BPF_PROG_TEST_RUN, kernel-reported) for
//!    solicitations answered, solicitations not ours and other traffic, as
//!    the number of allocations grows, with the empty program as baseline.
//!
//! Run by cargo's test harness (no `--bench` argument) it does a quick smoke
//! run instead, so CI checks it still works without paying for it.

#[path = "../../tests/support/frames.rs"]
#[allow(dead_code)]
mod frames;
mod kernel_cost;
mod report;

use std::path::PathBuf;

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
    let plan = if full {
        kernel_cost::Plan::full(allocation_size)
    } else {
        kernel_cost::Plan::smoke(allocation_size)
    };
    let cost = kernel_cost::run(&plan)?;
    let report = report::Report::new(full, allocation_size, cost);
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
