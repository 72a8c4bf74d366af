//! The benchmark's outputs: a summary table, `ndp.json` (every raw number),
//! `ndp.md` and PNG plots. Nothing here states a figure the run did not
//! produce: what was not measured shows as "-" or "not reached".

use std::{fmt::Write as _, path::Path};

use broker_userspace::numbers::thousands;

use crate::{
    kernel_cost::{Case, Point},
    lab::Design,
    latency::{Kind, Series},
    link_rate::{Coverage, DesignRun},
    plot,
    provisioning::Install,
};

/// Per-packet cost at the most allocations may be at most this many times
/// the cost at one allocation.
const FLATNESS_TARGET: f64 = 1.5;
/// Our responder (native) must answer at least this many times the rate of
/// the kernel proxy and of ndppd.
const RATE_TARGET: f64 = 10.0;

pub struct Report {
    pub full: bool,
    pub allocation_size: u8,
    pub machine: Machine,
    pub kernel_cost: Vec<Point>,
    pub link_allocations: usize,
    pub link_flood_seconds: f64,
    pub link_drain_seconds: f64,
    pub link_drain_prompt_seconds: f64,
    pub link: Vec<DesignRun>,
    pub provisioning: Vec<Install>,
    /// The whole run, wall clock.
    pub seconds: f64,
    /// The 1-minute load average when the run started and ended: the
    /// machine may be shared, and other work there weighs on every figure.
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

fn duration(micros: f64) -> String {
    if micros < 1_000.0 {
        format!("{micros:.0} µs")
    } else if micros < 1_000_000.0 {
        format!("{:.1} ms", micros / 1e3)
    } else {
        format!("{:.2} s", micros / 1e6)
    }
}

fn bytes(b: u64) -> String {
    if b < 10 * 1024 {
        format!("{b} B")
    } else if b < 10 * 1024 * 1024 {
        format!("{:.0} KiB", b as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", b as f64 / 1024.0 / 1024.0)
    }
}

fn fraction(c: &Coverage) -> String {
    if c.sampled == 0 {
        return "-".into();
    }
    format!(
        "{} of {} ({:.1} %)",
        thousands(c.answered),
        thousands(c.sampled),
        100.0 * c.answered as f64 / c.sampled as f64
    )
}

impl Report {
    fn cost(&self, allocations: usize, case: Case) -> Option<f64> {
        self.kernel_cost
            .iter()
            .find(|p| p.allocations == allocations && p.case == case)
            .map(|p| p.median_ns)
    }

    pub fn allocation_counts(&self) -> Vec<usize> {
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

    fn cost_table(&self) -> String {
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
            let _ = writeln!(s, "| {} | {} |", thousands(n as u64), cells.join(" | "));
        }
        s
    }

    fn flatness_line(&self) -> String {
        let counts = self.allocation_counts();
        match self.flatness() {
            Some((raw, net)) => format!(
                "answered cost (one target) at {} allocations vs {}: {raw:.2}x (net of the empty program: {net:.2}x); target ≤ {FLATNESS_TARGET}x: {}",
                thousands(*counts.last().unwrap_or(&0) as u64),
                thousands(*counts.first().unwrap_or(&0) as u64),
                if net <= FLATNESS_TARGET {
                    "met"
                } else {
                    "NOT met"
                }
            ),
            None => "flatness: not measured".into(),
        }
    }

    fn run_of(&self, design: Design) -> Option<&DesignRun> {
        self.link.iter().find(|r| r.design == design)
    }

    fn native_rate(&self) -> Option<f64> {
        self.run_of(Design::Native)
            .map(|r| r.rate.answered_per_second())
    }

    fn rate_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| design | NS sent/s | NA answered/s | answered by the end of the flood | loss | our responder (native) answers ×… |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
        let native = self.native_rate();
        for r in &self.link {
            let rate = r.rate.answered_per_second();
            let ratio = match native {
                Some(n) if rate > 0.0 => format!("{:.1}", n / rate),
                Some(_) => "∞ (none answered)".into(),
                None => "-".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} of {} | {:.1} % | {} |",
                r.design.name(),
                thousands(r.rate.sent.rate() as u64),
                thousands(rate as u64),
                thousands(r.rate.answered_at_stop),
                thousands(r.rate.answered),
                100.0 * r.rate.loss(),
                ratio
            );
        }
        s
    }

    fn rate_target_line(&self) -> String {
        let Some(native) = self.native_rate() else {
            return "answered rate: not measured".into();
        };
        let mut parts = Vec::new();
        let mut met = true;
        for d in [Design::KernelProxy, Design::Ndppd] {
            if let Some(r) = self.run_of(d) {
                let rate = r.rate.answered_per_second();
                let x = if rate > 0.0 {
                    native / rate
                } else {
                    f64::INFINITY
                };
                met &= x >= RATE_TARGET;
                parts.push(format!("{:.1}x {}", x, d.key()));
            }
        }
        format!(
            "answered rate of our responder (native): {}; target ≥ {RATE_TARGET}x both: {}",
            parts.join(", "),
            if met { "met" } else { "NOT met" }
        )
    }

    fn latency_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| design | solicitation | answered | median | p99 | max |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
        for r in &self.link {
            for series in &r.latency {
                let q = |v: Option<f64>| v.map_or("-".into(), duration);
                let _ = writeln!(
                    s,
                    "| {} | {} | {} of {} | {} | {} | {} |",
                    r.design.name(),
                    series.kind.name(),
                    series.answered(),
                    series.sent,
                    q(series.quantile(0.5)),
                    q(series.quantile(0.99)),
                    q(series.micros.last().copied()),
                );
            }
        }
        s
    }

    fn install_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| design | method | allocations | installed | entries | time | memory |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---|");
        for i in &self.provisioning {
            let time = if i.completed {
                format!("{:.3} s", i.seconds)
            } else {
                format!("not reached: stopped after {:.1} s", i.seconds)
            };
            let fixed = i.memory_fixed_bytes.map_or(String::new(), |b| {
                format!(", plus {} held by the empty map", bytes(b))
            });
            let memory = i.memory_bytes.map_or("-".into(), |b| {
                format!("{} ({}{fixed})", bytes(b), i.memory_what)
            });
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                i.design.name(),
                i.method,
                thousands(i.allocations as u64),
                thousands(i.installed as u64),
                thousands(i.entries),
                time,
                memory
            );
        }
        s
    }

    fn coverage_table(&self) -> String {
        let mut s = String::new();
        let per = 1u128 << (128 - u32::from(self.allocation_size));
        let _ = writeln!(
            s,
            "| design | addresses per allocation the design covers | random addresses answered | every address, once each |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|");
        for r in &self.link {
            let covered = match r.design {
                Design::KernelProxy => per.min(256),
                _ => per,
            };
            let _ = writeln!(
                s,
                "| {} | {} of {} | {} | {} |",
                r.design.name(),
                covered,
                per,
                fraction(&r.coverage),
                r.sweep.as_ref().map_or("not run".into(), fraction)
            );
        }
        s
    }

    /// Every address of every allocation answered by our responder, both modes.
    fn every_address_line(&self) -> String {
        let total = (1u128 << (128 - u32::from(self.allocation_size)))
            .saturating_mul(self.link_allocations as u128);
        let mut parts = Vec::new();
        let mut met = true;
        for d in [Design::Native, Design::Generic] {
            match self.run_of(d).and_then(|r| r.sweep.as_ref()) {
                Some(c) => {
                    met &= u128::from(c.answered) == total && u128::from(c.sampled) == total;
                    parts.push(format!("{} {}", d.key(), fraction(c)));
                }
                None => {
                    met = false;
                    parts.push(format!("{} not swept", d.key()));
                }
            }
        }
        format!(
            "every address of every allocation answered ({} addresses): {}; target: {}",
            thousands(total.min(u128::from(u64::MAX)) as u64),
            parts.join(", "),
            if met { "met" } else { "NOT met" }
        )
    }

    /// The machine and part 1 of the summary.
    pub fn print_kernel_cost(&self) {
        let note = if self.full {
            ""
        } else {
            " — smoke run, numbers not meaningful"
        };
        println!("machine: {}{note}", self.machine.line());
        println!(
            "1. In-kernel cost per packet (BPF_PROG_TEST_RUN, kernel-reported mean over in-kernel repeats, median of runs)"
        );
        print!("{}", self.cost_table());
        println!("{}", self.flatness_line());
    }

    pub fn print_summary(&self) {
        self.print_kernel_cost();
        println!(
            "2. Answered solicitations per second across a veth ({} allocations /{}, {:.1} s flood)",
            self.link_allocations, self.allocation_size, self.link_flood_seconds
        );
        print!("{}", self.rate_table());
        println!("{}", self.rate_target_line());
        println!("3. Resolution latency, one solicitation at a time");
        print!("{}", self.latency_table());
        println!("4. Provisioning");
        print!("{}", self.install_table());
        print!("{}", self.coverage_table());
        println!("{}", self.every_address_line());
        println!(
            "whole run: {:.0} s; 1-minute load average at start {} and end {}",
            self.seconds,
            self.load_average
                .0
                .map_or("-".into(), |l| format!("{l:.2}")),
            self.load_average
                .1
                .map_or("-".into(), |l| format!("{l:.2}")),
        );
    }

    /// For the smoke run: every part produced numbers, and they are not
    /// absurd. Never a performance check.
    pub fn check_sane(&self) -> anyhow::Result<()> {
        for p in &self.kernel_cost {
            anyhow::ensure!(
                p.median_ns > 0.0 && p.median_ns < 1_000_000.0,
                "implausible cost {p:?}"
            );
        }
        anyhow::ensure!(self.flatness().is_some(), "no flatness figure");
        anyhow::ensure!(self.link.len() == Design::ALL.len(), "not every design ran");
        for r in &self.link {
            let name = r.design.name();
            anyhow::ensure!(r.rate.sent.frames > 0, "{name}: nothing sent");
            anyhow::ensure!(
                r.rate.answered <= r.rate.sent.frames,
                "{name}: more advertisements ({}) than solicitations ({})",
                r.rate.answered,
                r.rate.sent.frames
            );
            anyhow::ensure!(
                r.coverage.answered <= r.coverage.sampled,
                "{name}: more answers than solicitations in the coverage run"
            );
            anyhow::ensure!(
                r.latency.iter().any(|s| s.answered() > 0),
                "{name}: no latency sample answered"
            );
            if matches!(r.design, Design::Native | Design::Generic) {
                anyhow::ensure!(r.rate.answered > 0, "{name}: answered nothing");
                anyhow::ensure!(
                    r.latency
                        .iter()
                        .all(|s: &Series| s.answered() > 0 || s.kind != Kind::Multicast),
                    "{name}: no multicast solicitation answered"
                );
            }
        }
        for i in &self.provisioning {
            anyhow::ensure!(
                i.entries > 0 && i.seconds > 0.0,
                "provisioning installed nothing: {i:?}"
            );
        }
        Ok(())
    }

    fn json(&self) -> serde_json::Value {
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
        let native = self.native_rate();
        let coverage =
            |c: &Coverage| serde_json::json!({"sampled": c.sampled, "answered": c.answered});
        let designs: Vec<serde_json::Value> = self
            .link
            .iter()
            .map(|r| {
                let rate = r.rate.answered_per_second();
                serde_json::json!({
                    "design": r.design.key(),
                    "name": r.design.name(),
                    "setup_seconds": r.setup_seconds,
                    "rate": {
                        "sent": r.rate.sent.frames,
                        "seconds": r.rate.sent.elapsed.as_secs_f64(),
                        "sent_per_second": r.rate.sent.rate(),
                        "answered_at_stop": r.rate.answered_at_stop,
                        "answered": r.rate.answered,
                        "answered_per_second": rate,
                        "loss": r.rate.loss(),
                        "native_over_this": native.filter(|_| rate > 0.0).map(|n| n / rate),
                        "responder_seen": r.rate.responder_seen,
                        "responder_answered": r.rate.responder_answered,
                    },
                    "latency": r.latency.iter().map(|s| serde_json::json!({
                        "kind": s.kind.name(),
                        "sent": s.sent,
                        "answered": s.answered(),
                        "median_us": s.quantile(0.5),
                        "p99_us": s.quantile(0.99),
                        "samples_us": s.micros,
                    })).collect::<Vec<_>>(),
                    "coverage_random": coverage(&r.coverage),
                    "coverage_every_address": r.sweep.as_ref().map(coverage),
                })
            })
            .collect();
        let installs: Vec<serde_json::Value> = self
            .provisioning
            .iter()
            .map(|i| {
                serde_json::json!({
                    "design": i.design.key(),
                    "method": i.method,
                    "allocations": i.allocations,
                    "installed": i.installed,
                    "entries": i.entries,
                    "seconds": i.seconds,
                    "completed": i.completed,
                    "memory_bytes": i.memory_bytes,
                    "memory_fixed_bytes": i.memory_fixed_bytes,
                    "memory_what": i.memory_what,
                })
            })
            .collect();
        serde_json::json!({
            "machine": {
                "cpu": self.machine.cpu,
                "cores": self.machine.cores,
                "kernel": self.machine.kernel,
            },
            "full_run": self.full,
            "run_seconds": self.seconds,
            "load_average_1min": {"start": self.load_average.0, "end": self.load_average.1},
            "allocation_size": self.allocation_size,
            "kernel_cost": {
                "method": "BPF_PROG_TEST_RUN with in-kernel repeats, kernel-reported mean ns per packet, median of runs; answered and not-ours cases re-arm the frame from a map before each run and have that cost subtracted",
                "points": points,
                "flatness": flatness,
            },
            "link": {
                "method": "two network namespaces joined by a veth; AF_PACKET TX ring (TPACKET_V2, PACKET_QDISC_BYPASS) sends multicast NS for 4096 targets spread over the allocations; an XDP program on the generator's veth counts the NAs; answered counted after a drain period following the flood",
                "allocations": self.link_allocations,
                "flood_seconds": self.link_flood_seconds,
                "drain_seconds_kernel_proxy": self.link_drain_seconds,
                "drain_seconds_others": self.link_drain_prompt_seconds,
                "rate_target": RATE_TARGET,
                "designs": designs,
            },
            "provisioning": installs,
        })
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("ndp.json"),
            serde_json::to_string_pretty(&self.json())? + "\n",
        )?;
        let plots = match plot::all(self, dir) {
            Ok(files) => files
                .iter()
                .map(|f| format!("![{f}]({f})\n"))
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => {
                eprintln!("no plots: {e:#}");
                format!("(no plots: {e:#})\n")
            }
        };
        let mut md = String::new();
        let _ = write!(
            md,
            "# NDP responder benchmark\n\nMachine: {}. Every figure below comes from one run of \
             `cargo xtask bench ndp` ({:.0} s) on it; the raw numbers are in `ndp.json`. \
             1-minute load average at the start and the end of the run: {} and {} (other work \
             on the machine weighs on every figure).\n\n",
            self.machine.line(),
            self.seconds,
            self.load_average
                .0
                .map_or("-".into(), |l| format!("{l:.2}")),
            self.load_average
                .1
                .map_or("-".into(), |l| format!("{l:.2}")),
        );
        let _ = write!(
            md,
            "## 1. In-kernel cost per packet\n\nBPF_PROG_TEST_RUN with the kernel repeating each \
             run; kernel-reported mean ns per packet, median of runs. Solicitations are re-armed \
             from a map before each repetition (that copy's cost is measured and subtracted). \
             \"One target\" solicits one address over and over: the algorithm's cost. \"4096 \
             targets\" cycles through addresses spread over the allocations, so a large map is \
             probed out of the CPU caches. Allocations are /{}s spread over a /48. The empty \
             program is the floor any XDP program pays here.\n\n{}\n{}\n\n",
            self.allocation_size,
            self.cost_table(),
            self.flatness_line()
        );
        let _ = write!(
            md,
            "## 2. Answered solicitations per second across a link\n\nTwo network namespaces \
             joined by a veth. The generator sends multicast Neighbor Solicitations (as a router \
             resolving an address does) for 4096 targets spread over {} /{} allocations, as fast \
             as the kernel takes them, for {:.1} s, from an AF_PACKET TX ring with \
             PACKET_QDISC_BYPASS on one core; an XDP program on the generator's veth counts the \
             advertisements that come back (it is also the XDP program native mode needs on the \
             peer veth; it runs in every design). Answers are counted until {:.1} s after the \
             flood for the kernel proxy, which answers late on purpose ({:.1} s for the others). \
             The receiving side's work shares the two cores with the generator, so how fast a \
             design takes solicitations off the link also sets the rate it is offered. Our responder runs in the \
             mode its row names (native = XDP driver mode on the veth, generic = SKB mode); the \
             kernel proxy has `proxy_ndp` on and 256 `ip -6 neigh add proxy` entries per \
             allocation (the old broker's design; default proxy_delay and proxy_qlen); ndppd \
             (Debian's) runs with one static rule per allocation. Loss = 1 − answered/sent.\n\n{}\n{}\n\n",
            self.link_allocations,
            self.allocation_size,
            self.link_flood_seconds,
            self.link_drain_seconds,
            self.link_drain_prompt_seconds,
            self.rate_table(),
            self.rate_target_line()
        );
        let _ = write!(
            md,
            "## 3. Resolution latency\n\nOne solicitation at a time, in the same labs, for \
             addresses every design covers: from just before the generator's `sendto` to the \
             kernel's receive timestamp of the advertisement on the generator's side. A series \
             stops at its sample count, after a time budget, or after 5 unanswered probes with \
             none answered; a probe waits at most 1.5 s.\n\n{}\n",
            self.latency_table()
        );
        let _ = write!(
            md,
            "## 4. Provisioning\n\nTime and memory to install the allocations (/{}s). The kernel \
             proxy runs are stopped at a time budget: a row marked \"not reached\" says how far \
             they got, not how long they would take. Our responder's time is for the map updates \
             alone (the daemon adds a WireGuard peer and a route per allocation in every \
             design).\n\n{}\n\nHow much of each allocation is answered, measured in the link labs \
             of part 2: solicitations for random addresses of the allocations at 50 a second \
             (slow enough for the kernel proxy's queue), and, where it takes seconds, every \
             address of every allocation once at 10,000 a second (a design that answers fewer \
             than that loses some there: for it, that column measures its rate, not its \
             coverage).\n\n{}\n{}\n\n",
            self.allocation_size,
            self.install_table(),
            self.coverage_table(),
            self.every_address_line()
        );
        let _ = write!(md, "## Plots\n\n{plots}");
        std::fs::write(dir.join("ndp.md"), md)?;
        Ok(())
    }

    pub fn link(&self) -> &[DesignRun] {
        &self.link
    }

    pub fn kernel_cost(&self) -> &[Point] {
        &self.kernel_cost
    }

    pub fn provisioning(&self) -> &[Install] {
        &self.provisioning
    }
}
