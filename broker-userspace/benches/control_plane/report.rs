//! The benchmark's outputs: a summary table, `control-plane.json` (every
//! raw number), `control-plane.md` and `control-plane.png`. A figure the
//! run did not produce shows as "-".

use std::{fmt::Write as _, path::Path};

use anyhow::{Context as _, ensure};
use broker_userspace::numbers::thousands;

use crate::{
    burst::{Burst, Design},
    reconcile::Reconcile,
};

/// Start-up reconciliation of this many allocations must take less than
/// RECONCILE_TARGET seconds (issue 15).
const RECONCILE_AT: usize = 10_000;
const RECONCILE_TARGET: f64 = 5.0;
/// The daemon's memory may grow at most this much from its smallest to its
/// largest database (issue 15: flat within ±10 %).
const RSS_FLATNESS: f64 = 0.10;

pub struct Report {
    pub full: bool,
    pub block_seconds: u64,
    pub one_at_a_time_up_to: usize,
    pub bursts: Vec<usize>,
    pub machine: Machine,
    pub runs: Vec<Burst>,
    pub startups: Vec<Reconcile>,
    /// The whole run, wall clock.
    pub seconds: f64,
    /// The 1-minute load average when the run started and ended (the
    /// machine may be shared).
    pub load_average: (Option<f64>, Option<f64>),
}

pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub struct Machine {
    kernel: String,
    cpu: String,
    cores: usize,
}

impl Machine {
    pub fn read() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("model name")
                        .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
                })
            })
            .unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Machine { kernel, cpu, cores }
    }

    fn line(&self) -> String {
        format!(
            "{} ({} cores), kernel {}",
            self.cpu, self.cores, self.kernel
        )
    }
}

/// Median, 99th percentile (nearest rank) and maximum.
#[derive(Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub p99: f64,
    pub last: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        let p99 = v[(n * 99).div_ceil(100).max(1) - 1];
        Some(Spread {
            median,
            p99,
            last: v[n - 1],
        })
    }

    fn cell(s: Option<Spread>) -> String {
        s.map_or("-".into(), |s| {
            format!("{} / {} / {}", num(s.median), num(s.p99), num(s.last))
        })
    }

    fn json(s: Option<Spread>) -> serde_json::Value {
        s.map_or(
            serde_json::Value::Null,
            |s| serde_json::json!({"median": s.median, "p99": s.p99, "last": s.last}),
        )
    }
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

impl Burst {
    pub fn block_spread(&self) -> Option<Spread> {
        Spread::of(&self.blocks.iter().map(|&b| b as f64).collect::<Vec<_>>())
    }

    pub fn second_spread(&self) -> Option<Spread> {
        Spread::of(&self.seconds.iter().map(|&s| s as f64).collect::<Vec<_>>())
    }

    pub fn gas_per_answer(&self) -> f64 {
        self.gas.iter().sum::<u64>() as f64 / self.gas.len().max(1) as f64
    }

    /// What the answers paid per gas, gwei (the chain's fee market, not
    /// the design: base fee plus the daemon's tip).
    pub fn gwei_per_gas(&self) -> f64 {
        self.wei.iter().sum::<u128>() as f64 / self.gas.iter().sum::<u64>().max(1) as f64 / 1e9
    }

    pub fn operator_wei_per_answer(&self) -> f64 {
        self.operator_wei as f64 / self.size.max(1) as f64
    }

    pub fn one_line(&self) -> String {
        format!(
            "blocks (median/p99/last) {}, seconds {}, gas/answer {}, CPU {:.2} s, peak RSS {} KiB",
            Spread::cell(self.block_spread()),
            Spread::cell(self.second_spread()),
            thousands(self.gas_per_answer().round() as u64),
            self.cpu_seconds,
            thousands(self.peak_rss_kib),
        )
    }
}

fn ratio(old: f64, new: f64) -> String {
    if new > 0.0 {
        format!("{:.1}×", old / new)
    } else {
        "-".into()
    }
}

impl Report {
    fn run(&self, size: usize, design: Design) -> Option<&Burst> {
        self.runs
            .iter()
            .find(|r| r.size == size && r.design == design)
    }

    fn table(&self) -> String {
        let mut t = String::new();
        t.push_str("| burst | design | blocks to answer (median / p99 / last) | seconds to answer (median / p99 / last) | gas per answer | operator gwei per answer | paid gwei per gas | daemon CPU (s) | daemon peak RSS (MiB) | answers sent, s after the block (first / last) |\n");
        t.push_str("|---:|---|---|---|---:|---:|---:|---:|---:|---|\n");
        for &size in &self.bursts {
            for design in [Design::OneAtATime, Design::Pipelined] {
                let Some(r) = self.run(size, design) else {
                    let _ = writeln!(
                        t,
                        "| {} | {} | not run (bursts over {} run pipelined only) | | | | | | | |",
                        thousands(size as u64),
                        design.name(),
                        self.one_at_a_time_up_to
                    );
                    continue;
                };
                let _ = writeln!(
                    t,
                    "| {} | {} | {} | {} | {} | {:.0} | {:.3} | {:.2} | {:.1} | {} |",
                    thousands(size as u64),
                    design.name(),
                    Spread::cell(r.block_spread()),
                    Spread::cell(r.second_spread()),
                    thousands(r.gas_per_answer().round() as u64),
                    r.operator_wei_per_answer() / 1e9,
                    r.gwei_per_gas(),
                    r.cpu_seconds,
                    r.peak_rss_kib as f64 / 1024.0,
                    r.sent
                        .map_or("-".into(), |(a, b)| format!("{a:.1} / {b:.1}")),
                );
            }
        }
        t
    }

    fn ratio_table(&self) -> String {
        let mut t = String::new();
        t.push_str("| burst | last answer, blocks | last answer, seconds | gas per answer | operator wei per answer | daemon CPU | daemon peak RSS |\n");
        t.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
        for &size in &self.bursts {
            let (Some(old), Some(new)) = (
                self.run(size, Design::OneAtATime),
                self.run(size, Design::Pipelined),
            ) else {
                continue;
            };
            let last = |r: &Burst| r.block_spread().map_or(0.0, |s| s.last);
            let last_s = |r: &Burst| r.second_spread().map_or(0.0, |s| s.last);
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} |",
                thousands(size as u64),
                ratio(last(old), last(new)),
                ratio(last_s(old), last_s(new)),
                ratio(old.gas_per_answer(), new.gas_per_answer()),
                ratio(old.operator_wei_per_answer(), new.operator_wei_per_answer()),
                ratio(old.cpu_seconds, new.cpu_seconds),
                ratio(old.peak_rss_kib as f64, new.peak_rss_kib as f64),
            );
        }
        t
    }

    fn targets(&self) -> String {
        let mut lines = String::new();
        for (size, target) in [(100, 3.0), (1_000, 10.0)] {
            let line = match self
                .run(size, Design::Pipelined)
                .and_then(Burst::block_spread)
            {
                Some(s) => format!(
                    "- a burst of {} answered within {target:.0} blocks of confirmation: {} (last answer after {} blocks)",
                    thousands(size as u64),
                    if s.last <= target { "met" } else { "NOT met" },
                    num(s.last)
                ),
                None => format!(
                    "- a burst of {} answered within {target:.0} blocks: not measured in this run",
                    thousands(size as u64)
                ),
            };
            lines.push_str(&line);
            lines.push('\n');
        }
        lines
    }

    fn startup_table(&self) -> String {
        let mut t = String::new();
        t.push_str("| allocations | reconciliation (s) | spawn to reconciled (s) | daemon RSS, 3 s after ready (MiB) | peak RSS (MiB) | what it did |\n");
        t.push_str("|---:|---:|---:|---:|---:|---|\n");
        for r in &self.startups {
            let _ = writeln!(
                t,
                "| {} | {:.2} | {:.2} | {:.1} | {:.1} | {} |",
                thousands(r.allocations as u64),
                r.reconcile_seconds,
                r.start_seconds,
                r.rss_kib as f64 / 1024.0,
                r.peak_rss_kib as f64 / 1024.0,
                r.summary,
            );
        }
        t
    }

    fn startup_targets(&self) -> String {
        let mut lines = String::new();
        match self.startups.iter().find(|r| r.allocations == RECONCILE_AT) {
            Some(r) => {
                let _ = writeln!(
                    lines,
                    "- start-up reconciliation of {} allocations in < {RECONCILE_TARGET:.0} s: {} ({:.2} s)",
                    thousands(RECONCILE_AT as u64),
                    if r.reconcile_seconds < RECONCILE_TARGET {
                        "met"
                    } else {
                        "NOT met"
                    },
                    r.reconcile_seconds
                );
            }
            None => {
                let _ = writeln!(
                    lines,
                    "- start-up reconciliation of {} allocations: not measured in this run",
                    thousands(RECONCILE_AT as u64)
                );
            }
        }
        if let (Some(first), Some(last)) = (self.startups.first(), self.startups.last())
            && first.allocations < last.allocations
        {
            let growth = last.rss_kib as f64 / first.rss_kib.max(1) as f64 - 1.0;
            let _ = writeln!(
                lines,
                "- the daemon's memory flat (±{:.0} %) from {} to {} allocations: {} ({:+.0} %)",
                RSS_FLATNESS * 100.0,
                thousands(first.allocations as u64),
                thousands(last.allocations as u64),
                if growth.abs() <= RSS_FLATNESS {
                    "met"
                } else {
                    "NOT met"
                },
                growth * 100.0
            );
        }
        lines
    }

    fn conditions(&self) -> String {
        format!(
            "{}; anvil mining a block every {} s (interval mining) once the burst's block is mined; \
             the daemon polls every second at 0 confirmations and takes at most {} requests a poll \
             (the defaults); each burst's block at a base fee of 1 gwei and a gas limit raised to \
             10,000,000,000 so that 1,000 requests fit in it, the blocks after it (the answers') at {} gas; \
             a fresh daemon per row, the chain shared; load average {} → {}; the run took {:.0} s.",
            self.machine.line(),
            self.block_seconds,
            thousands(broker_userspace::config::DEFAULT_MAX_REQUESTS_PER_POLL),
            thousands(crate::burst::ANSWER_BLOCK_GAS_LIMIT),
            self.load_average
                .0
                .map_or("-".into(), |l| format!("{l:.2}")),
            self.load_average
                .1
                .map_or("-".into(), |l| format!("{l:.2}")),
            self.seconds
        )
    }

    pub fn print_summary(&self) {
        println!(
            "\ncontrol plane: bursts of requests mined in one block, answered by the real daemon\n"
        );
        println!("{}", self.table());
        println!("old (one at a time) / new (pipelined):\n");
        println!("{}", self.ratio_table());
        println!("{}", self.targets());
        if !self.startups.is_empty() {
            println!("start-up with allocations in the database:\n");
            println!("{}", self.startup_table());
            println!("{}", self.startup_targets());
        }
        println!("{}\n", self.conditions());
    }

    /// The smoke run's checks: every request answered exactly once, after
    /// its own block, at a cost, by a daemon that ran. No timing.
    pub fn check_sane(&self) -> anyhow::Result<()> {
        for r in &self.runs {
            let what = format!("burst of {}, {}", r.size, r.design.name());
            ensure!(
                r.blocks.len() == r.size,
                "{what}: {} answers",
                r.blocks.len()
            );
            ensure!(
                r.events.iter().all(|&e| e == 1),
                "{what}: events per request {:?}",
                r.events
            );
            ensure!(
                r.blocks.iter().all(|&b| b >= 1),
                "{what}: an answer in the requests' own block {:?}",
                r.blocks
            );
            ensure!(r.gas.iter().all(|&g| g > 21_000), "{what}: gas {:?}", r.gas);
            ensure!(
                r.operator_wei >= r.wei.iter().sum::<u128>(),
                "{what}: the operator paid {} but its answers cost {}",
                r.operator_wei,
                r.wei.iter().sum::<u128>()
            );
            ensure!(r.peak_rss_kib > 0, "{what}: no peak memory");
            ensure!(r.cpu_seconds >= 0.0, "{what}: CPU {}", r.cpu_seconds);
        }
        for r in &self.startups {
            ensure!(
                r.rss_kib > 0 && r.reconcile_seconds >= 0.0,
                "start-up with {} allocations: RSS {} KiB, reconciled in {} s",
                r.allocations,
                r.rss_kib,
                r.reconcile_seconds
            );
        }
        for &size in &self.bursts {
            ensure!(
                self.run(size, Design::Pipelined).is_some(),
                "the burst of {size} was not run pipelined"
            );
        }
        Ok(())
    }

    fn json(&self) -> serde_json::Value {
        let runs: Vec<serde_json::Value> = self
            .runs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "design": r.design.key(),
                    "size": r.size,
                    "request_block": r.request_block,
                    "blocks": Spread::json(r.block_spread()),
                    "seconds": Spread::json(r.second_spread()),
                    "gas_per_answer": r.gas_per_answer(),
                    "operator_wei": r.operator_wei.to_string(),
                    "operator_wei_per_answer": r.operator_wei_per_answer(),
                    "gwei_per_gas": r.gwei_per_gas(),
                    "cpu_seconds": r.cpu_seconds,
                    "window_seconds": r.window_seconds,
                    "peak_rss_kib": r.peak_rss_kib,
                    "answers_sent_after_block_seconds": r.sent.map(|(a, b)| [a, b]),
                    "per_request": {
                        "blocks": r.blocks,
                        "seconds": r.seconds,
                        "gas": r.gas,
                        "wei": r.wei.iter().map(u128::to_string).collect::<Vec<_>>(),
                        "events": r.events,
                    },
                })
            })
            .collect();
        serde_json::json!({
            "full": self.full,
            "block_seconds": self.block_seconds,
            "one_at_a_time_up_to": self.one_at_a_time_up_to,
            "bursts": self.bursts,
            "machine": self.machine.line(),
            "load_average": [self.load_average.0, self.load_average.1],
            "seconds": self.seconds,
            "runs": runs,
            "startups": self.startups.iter().map(|r| serde_json::json!({
                "allocations": r.allocations,
                "reconcile_seconds": r.reconcile_seconds,
                "spawn_to_reconciled_seconds": r.start_seconds,
                "rss_kib": r.rss_kib,
                "peak_rss_kib": r.peak_rss_kib,
                "fill_seconds": r.fill_seconds,
                "summary": r.summary,
            })).collect::<Vec<_>>(),
        })
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join("control-plane.json");
        std::fs::write(&json, serde_json::to_string_pretty(&self.json())?)
            .with_context(|| format!("writing {}", json.display()))?;
        let plot = match crate::plot::last_answer(self, dir) {
            Ok(name) => format!("![last answer, blocks after the requests' block]({name})\n"),
            Err(e) => format!("(no plot: {e:#})\n"),
        };
        let mut md = String::new();
        let _ = writeln!(md, "# Control plane: bursts of requests\n");
        let _ = writeln!(
            md,
            "Each row: a burst of requests from distinct NFT contracts mined in one block, the real \
             daemon (`blockhost-broker run`) answering it with `pipeline_answers = false` (one at a \
             time, each receipt awaited) or `true` (pipelined). Blocks and seconds run from the \
             requests' block (their confirmation at 0 confirmations) to each answer's block, by the \
             blocks' timestamps. Gas and operator wei are read from the receipts; the CPU time is the \
             daemon's (utime + stime) from just before the burst's block until the last answer was \
             seen; peak RSS is its VmHWM.\n"
        );
        let _ = writeln!(md, "{}", self.table());
        let _ = writeln!(md, "Old (one at a time) / new (pipelined):\n");
        let _ = writeln!(md, "{}", self.ratio_table());
        let _ = writeln!(md, "Targets (issue 15):\n\n{}", self.targets());
        let _ = writeln!(md, "{plot}");
        if !self.startups.is_empty() {
            let _ = writeln!(
                md,
                "## Start-up with allocations in the database\n\nThe database filled through the \
                 store's own transitions (each allocation decided and answered), then the daemon \
                 started on it: reconciliation is the time between its log lines \"NDP responder \
                 attached\" and \"kernel reconciled with the database\" (WireGuard peers through \
                 wireguard-go's UAPI here, routes, the NDP map); memory is read 3 s after it is ready (a few polls on).\n"
            );
            let _ = writeln!(md, "{}", self.startup_table());
            let _ = writeln!(md, "{}", self.startup_targets());
        }
        let _ = writeln!(md, "{}", self.conditions());
        let path = dir.join("control-plane.md");
        std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))
    }

    pub fn runs(&self) -> &[Burst] {
        &self.runs
    }
}
