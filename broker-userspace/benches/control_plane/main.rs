//! `cargo xtask bench control-plane`: how fast the real daemon answers a
//! burst of requests mined in one block, with its answers pipelined
//! (`[broker] pipeline_answers = true`, issue 15) and one at a time
//! (`false`, the design it replaces), side by side in one run on one chain.
//!
//! The whole system runs in broker-lab's namespaces: anvil, the contracts,
//! `blockhost-broker run`. For each burst size and each design the daemon is
//! started afresh, the burst's NFT contracts are deployed, its requests are
//! sent with automine off and mined together in one block, and anvil then
//! mines a block every `--block-seconds` until every request is answered
//! (burst.rs). Per burst: blocks and seconds from the requests' block to each
//! answer, gas and operator wei per answer (receipts), the daemon's CPU time
//! and peak memory (report.rs writes target/bench/control-plane.json, .md
//! and .png). Then, on a lab of its own, the daemon's start-up with 1,000,
//! 10,000 and 60,000 allocations in its database (wireguard-go holds 65,536
//! peers at most): the reconciliation of WireGuard peers, routes and the NDP
//! map timed from its log, its memory a few polls after it is ready
//! (reconcile.rs).
//!
//! Run by cargo's test harness (no `--bench` argument) it does a smoke run
//! instead: bursts of 1 and 5, both designs, every answer checked, and a
//! start-up with 100 allocations; no timing asserted.
//!
//! `--bursts 1,10,100,1000`, `--block-seconds 2`, `--one-at-a-time-up-to 100`
//! and `--allocations 1000,10000,60000` (or `none`) change the plan (the
//! defaults shown).

mod burst;
mod plot;
mod reconcile;
mod report;

use std::{path::PathBuf, thread, time::Instant};

use anyhow::{Context as _, bail};
use broker_lab::{Lab, Narrator, Options, names::lab_prefix};

use crate::burst::Design;

pub struct Plan {
    pub bursts: Vec<usize>,
    pub block_seconds: u64,
    /// Larger bursts run pipelined only: the one-at-a-time design answers
    /// one request per block (a burst of 1,000 would take 1,000 blocks).
    pub one_at_a_time_up_to: usize,
    /// Start-ups timed with this many allocations in the database.
    pub allocations: Vec<usize>,
}

fn value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let out_dir = value(&args, "--out")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench"));
    let bursts = match value(&args, "--bursts") {
        Some(list) => list
            .split(',')
            .map(|n| match n.trim().parse::<usize>() {
                Ok(n) if (1..=5_000).contains(&n) => Ok(n),
                _ => bail!("--bursts {list:?}: each size must be a number from 1 to 5000"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        None if full => vec![1, 10, 100, 1_000],
        None => vec![1, 5],
    };
    let block_seconds = match value(&args, "--block-seconds") {
        Some(s) => match s.parse::<u64>() {
            Ok(n) if (1..=60).contains(&n) => n,
            _ => bail!("--block-seconds {s:?}: a whole number of seconds from 1 to 60"),
        },
        None => 2,
    };
    let one_at_a_time_up_to = match value(&args, "--one-at-a-time-up-to") {
        Some(s) => s
            .parse()
            .with_context(|| format!("--one-at-a-time-up-to {s:?}: a burst size"))?,
        None => 100,
    };
    let allocations = match value(&args, "--allocations") {
        Some("none") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|n| match n.trim().parse::<usize>() {
                Ok(n) if n <= 1_000_000 => Ok(n),
                _ => bail!("--allocations {list:?}: each count must be a number up to 1000000"),
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        None if full => vec![1_000, 10_000, 60_000],
        None => vec![100],
    };
    if allocations.windows(2).any(|w| w[0] > w[1]) {
        bail!("--allocations: counts in increasing order (the database only grows)");
    }
    let plan = Plan {
        allocations,
        bursts,
        block_seconds,
        one_at_a_time_up_to,
    };
    let started = Instant::now();
    let load_before = report::load_average();
    let (runs, startups) = run(&plan)?;
    let report = report::Report {
        full,
        block_seconds: plan.block_seconds,
        one_at_a_time_up_to: plan.one_at_a_time_up_to,
        bursts: plan.bursts.clone(),
        machine: report::Machine::read(),
        runs,
        startups,
        seconds: started.elapsed().as_secs_f64(),
        load_average: (load_before, report::load_average()),
    };
    report.print_summary();
    report.check_sane()?;
    if full {
        report.write(&out_dir)?;
        eprintln!("wrote {}", out_dir.display());
    } else {
        println!("1 passed, 0 failed");
    }
    Ok(())
}

/// Every burst of the plan, each design, on one lab; then the start-ups
/// on a lab of their own (its database holds only what they put there).
/// `Lab::start` moves its thread into the chain's namespace for good: a
/// thread of its own.
fn run(plan: &Plan) -> anyhow::Result<(Vec<burst::Burst>, Vec<reconcile::Reconcile>)> {
    let dir = tempfile::tempdir().context("a temporary directory")?;
    thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("a tokio runtime")?
                .block_on(async {
                    let bursts = on_lab(&dir.path().join("bursts"), async |lab| {
                        run_on(lab, plan).await
                    })
                    .await?;
                    let startups = if plan.allocations.is_empty() {
                        Vec::new()
                    } else {
                        on_lab(&dir.path().join("start-up"), async |lab| {
                            reconcile::run(lab, &plan.allocations)
                        })
                        .await?
                    };
                    Ok((bursts, startups))
                })
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// `body` on a new lab with its files in `dir`, the broker's log shown if
/// it fails; the lab is gone when this returns.
async fn on_lab<T>(
    dir: &std::path::Path,
    body: impl AsyncFnOnce(&mut Lab) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let options = Options {
        names: lab_prefix(),
        dir: dir.to_path_buf(),
    };
    let mut lab = Lab::start(options, Narrator::quiet()).await?;
    let result = body(&mut lab).await;
    if result.is_err() {
        eprintln!(
            "the broker's log:\n{}",
            broker_lab::process::tail(&lab.broker_log(), 60)
        );
    }
    result
}

async fn run_on(lab: &mut Lab, plan: &Plan) -> anyhow::Result<Vec<burst::Burst>> {
    burst::prepare_chain(lab).await?;
    let mut runs = Vec::new();
    for &size in &plan.bursts {
        for design in [Design::OneAtATime, Design::Pipelined] {
            if design == Design::OneAtATime && size > plan.one_at_a_time_up_to {
                eprintln!(
                    "burst of {size}, {}: skipped (--one-at-a-time-up-to)",
                    design.name()
                );
                continue;
            }
            eprintln!("burst of {size}, {}", design.name());
            let run = burst::run(lab, design, size, plan.block_seconds).await?;
            eprintln!("  {}", run.one_line());
            runs.push(run);
        }
    }
    Ok(runs)
}
