//! Part 1: in-kernel cost per packet through BPF_PROG_TEST_RUN.
//!
//! The kernel repeats each run many times and reports the mean time per
//! packet. The responder rewrites a solicitation into an advertisement on its
//! first run, so answered solicitations go through `ndp_responder_bench` (an
//! object of its own, broker-ebpf's `ndp-responder-bench`, sharing the
//! responder's pinned maps), which first copies a fresh frame over the packet
//! (cycling through one frame, or through frames whose targets are spread
//! over the allocations) and then runs the responder's own code. The copy's
//! own cost is measured (re-arming frames the responder ignores at once,
//! against the responder on the same frames without re-arming) and
//! subtracted. Both objects run with their log records off, as a daemon at
//! the default log level does.

use std::net::Ipv6Addr;

use aya::{
    Ebpf, EbpfLoader,
    maps::Array,
    programs::{TestRun, TestRunOptions, Xdp},
};
use broker_common::bench::{
    BENCH_COUNT_MAP, BENCH_FRAME_LEN, BENCH_FRAMES_MAP, BENCH_MAX_FRAMES, BENCH_PROGRAM_NAME,
    BenchFrame,
};
use broker_userspace::ndp::{LinkLayer, PassProgram, PinDir, Responder, ResponderOptions, detach};
use ipnet::Ipv6Net;

use crate::frames::{BROKER_MAC, Ns};

static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ndp-responder-bench"));

/// The upstream prefix allocations are carved from.
pub const UPSTREAM: u128 = 0x2001_0db8_0100_0000_0000_0000_0000_0000;

pub struct Plan {
    pub allocation_size: u8,
    pub allocations: Vec<usize>,
    pub runs: usize,
    pub repeat: u32,
}

impl Plan {
    pub fn full(allocation_size: u8) -> Self {
        Plan {
            allocation_size,
            allocations: vec![1, 1_000, 100_000, 1_000_000],
            runs: 11,
            repeat: 1_000_000,
        }
    }

    pub fn smoke(allocation_size: u8) -> Self {
        Plan {
            allocation_size,
            allocations: vec![1, 1_000],
            runs: 3,
            repeat: 1_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// One target, solicited over and over: the algorithm's cost.
    AnsweredOne,
    /// Targets cycling over 4096 allocations: with a large map, lookups
    /// leave the CPU caches, as they would under real traffic.
    AnsweredSpread,
    NotOursSpread,
    Other,
    EmptyProgram,
}

impl Case {
    pub const ALL: [Case; 5] = [
        Case::AnsweredOne,
        Case::AnsweredSpread,
        Case::NotOursSpread,
        Case::Other,
        Case::EmptyProgram,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Case::AnsweredOne => "NS answered, one target",
            Case::AnsweredSpread => "NS answered, 4096 targets",
            Case::NotOursSpread => "NS not ours, 4096 targets",
            Case::Other => "other traffic",
            Case::EmptyProgram => "empty program",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Point {
    pub allocations: usize,
    pub case: Case,
    /// Median over runs, ns per packet, re-arming cost removed.
    pub median_ns: f64,
    pub min_run_ns: f64,
    pub max_run_ns: f64,
}

/// The `i`-th allocation: indices are spread over the whole upstream by an
/// odd multiplier, a bijection modulo 2^bits, so no two collide.
pub fn allocation(i: u64, size: u8) -> Ipv6Net {
    let bits = u32::from(size) - 48;
    let index = u128::from(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) & ((1u128 << bits) - 1);
    let network = UPSTREAM | (index << (128 - u32::from(size)));
    Ipv6Net::new(Ipv6Addr::from(network), size).expect("valid length")
}

/// Some address inside `net` other than its network address.
fn host_in(net: Ipv6Net, salt: u64) -> Ipv6Addr {
    let host_bits = 128 - u32::from(net.prefix_len());
    let mask = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    let host = (u128::from(salt.wrapping_mul(0xd1b5_4a32_d192_ed03)) & mask).max(1);
    Ipv6Addr::from(u128::from(net.network()) | host)
}

/// Frames for `case`, all of one length (re-arming needs that).
fn frames(case: Case, allocations: usize, size: u8) -> Vec<Vec<u8>> {
    let n = match case {
        Case::AnsweredOne | Case::Other | Case::EmptyProgram => 1,
        Case::AnsweredSpread | Case::NotOursSpread => BENCH_MAX_FRAMES as u64,
    };
    (0..n)
        .map(|k| match case {
            Case::AnsweredOne | Case::AnsweredSpread | Case::EmptyProgram => {
                let i = (k * 7919) % allocations as u64;
                Ns::multicast(host_in(allocation(i, size), k)).frame()
            }
            // Allocation indices past the filled ones are never in the map.
            Case::NotOursSpread => {
                Ns::multicast(host_in(allocation(allocations as u64 + k, size), k)).frame()
            }
            Case::Other => {
                // A UDP datagram: parsed as far as the next-header field.
                let mut f = Ns::multicast(host_in(allocation(k, size), k)).frame();
                f[20] = 17;
                f
            }
        })
        .collect()
}

/// The benchmark's object, its program loaded, its responder maps those
/// pinned under `pins` (the responder's), its log records off.
fn load_bench(pins: &PinDir) -> anyhow::Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pins.path())
        .override_global(aya_log::LEVEL, &0u8, true)
        .load(BENCH_OBJECT)?;
    let program: &mut Xdp = ebpf
        .program_mut(BENCH_PROGRAM_NAME)
        .ok_or_else(|| anyhow::anyhow!("no {BENCH_PROGRAM_NAME}"))?
        .try_into()?;
    program.load()?;
    Ok(ebpf)
}

fn load_bench_frames(ebpf: &mut Ebpf, frames: &[Vec<u8>]) -> anyhow::Result<()> {
    let mut array: Array<_, BenchFrame> = Array::try_from(
        ebpf.map_mut(BENCH_FRAMES_MAP)
            .ok_or_else(|| anyhow::anyhow!("no {BENCH_FRAMES_MAP}"))?,
    )?;
    for (i, f) in frames.iter().enumerate() {
        let mut data = [0u8; BENCH_FRAME_LEN];
        data[..f.len()].copy_from_slice(f);
        array.set(i as u32, BenchFrame { data }, 0)?;
    }
    let mut count: Array<_, u32> = Array::try_from(
        ebpf.map_mut(BENCH_COUNT_MAP)
            .ok_or_else(|| anyhow::anyhow!("no {BENCH_COUNT_MAP}"))?,
    )?;
    count.set(0, frames.len() as u32, 0)?;
    Ok(())
}

/// Kernel-reported mean ns per packet over `repeat` runs on `frame`.
fn time(program: &mut Xdp, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
    let mut out = vec![0u8; 512];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.repeat = repeat;
    let r = program.test_run(opts)?;
    Ok(r.duration.as_nanos() as f64)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Pins(PinDir);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = detach(&self.0);
    }
}

enum Which {
    Responder,
    Bench,
    Pass,
}

struct Programs {
    responder: Responder,
    bench: Ebpf,
    pass: PassProgram,
}

impl Programs {
    fn get(&mut self, which: Which) -> anyhow::Result<&mut Xdp> {
        Ok(match which {
            Which::Responder => self.responder.program()?,
            Which::Pass => self.pass.program()?,
            Which::Bench => self
                .bench
                .program_mut(BENCH_PROGRAM_NAME)
                .ok_or_else(|| anyhow::anyhow!("no {BENCH_PROGRAM_NAME}"))?
                .try_into()?,
        })
    }

    /// One measurement: the kernel's mean time per packet over
    /// `plan.repeat` runs of `frame`, re-arming cost removed where it applies.
    fn once(&mut self, case: Case, frame: &[u8], plan: &Plan, rearm: f64) -> anyhow::Result<f64> {
        Ok(match case {
            Case::Other => time(self.get(Which::Responder)?, frame, plan.repeat)?,
            Case::EmptyProgram => time(self.get(Which::Pass)?, frame, plan.repeat)?,
            _ => time(self.get(Which::Bench)?, frame, plan.repeat)? - rearm,
        })
    }
}

fn spread(samples: &[f64]) -> (f64, f64, f64) {
    let mut v = samples.to_vec();
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    (median(&mut v), min, max)
}

/// What copying a frame over the packet costs: frames the responder drops
/// at the first header, with and without re-arming, measured in pairs.
fn rearm_cost(programs: &mut Programs, plan: &Plan) -> anyhow::Result<f64> {
    let other = frames(Case::Other, 1, plan.allocation_size);
    load_bench_frames(&mut programs.bench, &other)?;
    let mut differences = Vec::with_capacity(plan.runs);
    for _ in 0..plan.runs {
        let rearmed = time(programs.get(Which::Bench)?, &other[0], plan.repeat)?;
        let plain = time(programs.get(Which::Responder)?, &other[0], plan.repeat)?;
        differences.push(rearmed - plain);
    }
    Ok(median(&mut differences).max(0.0))
}

pub fn run(plan: &Plan) -> anyhow::Result<Vec<Point>> {
    // The "bbt-" prefix lets `cargo xtask test` sweep the pins of a killed run.
    let pins = Pins(PinDir::new(format!(
        "/sys/fs/bpf/bbt-bench-{}",
        std::process::id()
    )));
    let mut responder = Responder::load_with_log_level(&pins.0, None)?;
    responder.configure_detached(LinkLayer::Ethernet(BROKER_MAC), ResponderOptions::default())?;
    let mut programs = Programs {
        responder,
        bench: load_bench(&pins.0)?,
        pass: PassProgram::load()?,
    };
    let rearm = rearm_cost(&mut programs, plan)?;
    eprintln!("  re-arming a frame costs {rearm:.1} ns; subtracted below");
    let size = plan.allocation_size;
    let mut filled = 0usize;
    let mut points = Vec::new();
    for &allocations in &plan.allocations {
        while filled < allocations {
            programs.responder.insert(allocation(filled as u64, size))?;
            filled += 1;
            if filled.is_multiple_of(100_000) {
                eprintln!("  filled {filled} of {allocations} allocations");
            }
        }
        // Cases interleaved run by run, so that drift on a shared machine
        // weighs on all of them alike.
        let cases: Vec<(Case, Vec<Vec<u8>>)> = Case::ALL
            .iter()
            .map(|&c| (c, frames(c, allocations, size)))
            .collect();
        let mut samples = vec![Vec::with_capacity(plan.runs); cases.len()];
        for run in 0..=plan.runs {
            for (i, (case, frames)) in cases.iter().enumerate() {
                if matches!(
                    case,
                    Case::AnsweredOne | Case::AnsweredSpread | Case::NotOursSpread
                ) {
                    load_bench_frames(&mut programs.bench, frames)?;
                }
                let ns = programs.once(*case, &frames[0], plan, rearm)?;
                // Run 0 only warms caches, predictors and clocks.
                if run > 0 {
                    samples[i].push(ns);
                }
            }
        }
        for ((case, _), samples) in cases.iter().zip(&samples) {
            let (median_ns, min_run_ns, max_run_ns) = spread(samples);
            points.push(Point {
                allocations,
                case: *case,
                median_ns,
                min_run_ns,
                max_run_ns,
            });
        }
        eprintln!("  measured at {allocations} allocations");
    }
    let counters = programs.responder.counters()?;
    anyhow::ensure!(
        counters.failed == 0
            && counters.answered > 0
            && counters.not_ours > 0
            && counters.invalid == 0,
        "the benchmark frames did not exercise the program as intended: {counters:?}"
    );
    Ok(points)
}
