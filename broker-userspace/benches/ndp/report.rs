//! The benchmark's outputs: a summary table, `ndp.json`, `ndp.md`.

use std::{fmt::Write as _, path::Path};

use crate::kernel_cost::{Case, Point};

/// Per-packet cost at the most allocations may be at most this many times
/// the cost at one allocation.
const FLATNESS_TARGET: f64 = 1.5;

pub struct Report {
    full: bool,
    allocation_size: u8,
    machine: Machine,
    kernel_cost: Vec<Point>,
}

struct Machine {
    kernel: String,
    cpu: String,
    cores: usize,
}

impl Machine {
    fn read() -> Self {
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
}

impl Report {
    pub fn new(full: bool, allocation_size: u8, kernel_cost: Vec<Point>) -> Self {
        Report {
            full,
            allocation_size,
            machine: Machine::read(),
            kernel_cost,
        }
    }

    fn cost(&self, allocations: usize, case: Case) -> Option<f64> {
        self.kernel_cost
            .iter()
            .find(|p| p.allocations == allocations && p.case == case)
            .map(|p| p.median_ns)
    }

    fn allocation_counts(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.kernel_cost.iter().map(|p| p.allocations).collect();
        v.dedup();
        v
    }

    /// (raw ratio, ratio net of the empty program) of the answered cost at
    /// the most allocations to the cost at the fewest.
    fn flatness(&self) -> Option<(f64, f64)> {
        let counts = self.allocation_counts();
        let (first, last) = (*counts.first()?, *counts.last()?);
        let a = self.cost(first, Case::AnsweredOne)?;
        let b = self.cost(last, Case::AnsweredOne)?;
        let base_a = self.cost(first, Case::EmptyProgram)?;
        let base_b = self.cost(last, Case::EmptyProgram)?;
        Some((b / a, (b - base_b) / (a - base_a)))
    }

    fn table(&self) -> String {
        let mut s = String::new();
        let names: Vec<&str> = Case::ALL.iter().map(|c| c.name()).collect();
        let _ = writeln!(s, "| allocations | {} |", names.join(" | "));
        let _ = writeln!(s, "|---:|{}", "---:|".repeat(names.len()));
        for n in self.allocation_counts() {
            let cells: Vec<String> = Case::ALL
                .iter()
                .map(|c| {
                    self.cost(n, *c)
                        .map_or("-".into(), |v| format!("{v:.0} ns"))
                })
                .collect();
            let _ = writeln!(s, "| {n} | {} |", cells.join(" | "));
        }
        s
    }

    fn flatness_line(&self) -> String {
        let counts = self.allocation_counts();
        match self.flatness() {
            Some((raw, net)) => format!(
                "answered cost (one target) at {} allocations vs {}: {raw:.2}x (net of the empty program: {net:.2}x); target ≤ {FLATNESS_TARGET}x: {}",
                counts.last().unwrap_or(&0),
                counts.first().unwrap_or(&0),
                if net <= FLATNESS_TARGET {
                    "met"
                } else {
                    "NOT met"
                }
            ),
            None => "flatness: not measured".into(),
        }
    }

    pub fn print_summary(&self) {
        println!(
            "In-kernel cost per packet (BPF_PROG_TEST_RUN, kernel-reported mean over in-kernel repeats, median of runs){}",
            if self.full {
                ""
            } else {
                " — smoke run, numbers not meaningful"
            }
        );
        println!(
            "machine: {} ({} cores), kernel {}",
            self.machine.cpu, self.machine.cores, self.machine.kernel
        );
        print!("{}", self.table());
        println!("{}", self.flatness_line());
    }

    /// For the smoke run: the numbers exist and are not absurd.
    pub fn check_sane(&self) -> anyhow::Result<()> {
        for p in &self.kernel_cost {
            anyhow::ensure!(
                p.median_ns > 0.0 && p.median_ns < 1_000_000.0,
                "implausible cost {p:?}"
            );
        }
        anyhow::ensure!(self.flatness().is_some(), "no flatness figure");
        Ok(())
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let points: Vec<serde_json::Value> = self
            .kernel_cost
            .iter()
            .map(|p| {
                serde_json::json!({
                    "allocations": p.allocations,
                    "case": p.case.name(),
                    "median_ns": p.median_ns,
                    "min_run_ns": p.min_run_ns,
                    "max_run_ns": p.max_run_ns,
                })
            })
            .collect();
        let flatness = self.flatness().map(|(raw, net)| {
            serde_json::json!({"raw_ratio": raw, "net_ratio": net, "target": FLATNESS_TARGET})
        });
        let json = serde_json::json!({
            "machine": {
                "cpu": self.machine.cpu,
                "cores": self.machine.cores,
                "kernel": self.machine.kernel,
            },
            "kernel_cost": {
                "method": "BPF_PROG_TEST_RUN with in-kernel repeats, kernel-reported mean ns per packet, median of runs; answered and not-ours cases re-arm the frame from a map before each run and have that cost subtracted",
                "points": points,
                "flatness": flatness,
            },
        });
        std::fs::write(
            dir.join("ndp.json"),
            serde_json::to_string_pretty(&json)? + "\n",
        )?;
        let md = format!(
            "# NDP responder benchmark\n\nMachine: {} ({} cores), kernel {}.\n\n\
             ## 1. In-kernel cost per packet\n\nBPF_PROG_TEST_RUN with the kernel repeating each \
             run; kernel-reported mean ns per packet, median of runs. Solicitations are re-armed \
             from a map before each repetition (that copy's cost is measured and subtracted). \
             \"One target\" solicits one address over and over: the algorithm's cost. \"4096 \
             targets\" cycles through addresses spread over the allocations, so a large map is \
             probed out of the CPU caches. Allocations are /{}s spread over a /48. The empty \
             program is the floor any XDP program pays here.\n\n{}\n{}\n",
            self.machine.cpu,
            self.machine.cores,
            self.machine.kernel,
            self.allocation_size,
            self.table(),
            self.flatness_line()
        );
        std::fs::write(dir.join("ndp.md"), md)?;
        Ok(())
    }
}
