//! `cargo xtask bench …`: benchmarks, written to target/bench/.

use std::process::Command;

use anyhow::bail;
use clap::{Subcommand, ValueEnum};

use crate::cmd;

#[derive(Subcommand)]
pub enum Bench {
    /// The NDP responder against the designs it replaces, on this machine:
    /// in-kernel cost per packet as allocations grow (BPF_PROG_TEST_RUN,
    /// empty program as baseline); answered solicitations per second across
    /// a veth between two namespaces for our responder (native and generic
    /// XDP), the kernel's proxy_ndp with per-address entries and ndppd;
    /// resolution latency, multicast and unicast; time and memory to install
    /// 1,000 and 10,000 allocations and how much of each is answered. Takes
    /// several minutes. Writes target/bench/ndp.json, ndp.md and PNG plots,
    /// and prints a summary.
    Ndp {
        /// Allocation size the map is filled with (49..=128, inside a /48).
        #[arg(long, default_value_t = 120)]
        allocation_size: u8,
        /// Run one part alone and print its table (nothing written).
        #[arg(long, value_enum)]
        only: Option<NdpPart>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum NdpPart {
    /// In-kernel cost per packet (BPF_PROG_TEST_RUN), about a minute.
    KernelCost,
}

pub fn run(bench: Bench) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the benchmarks load XDP programs: run them as root");
    }
    let root = cmd::workspace_root();
    match bench {
        Bench::Ndp {
            allocation_size,
            only,
        } => cmd::run(
            Command::new("cargo")
                .current_dir(&root)
                .args([
                    "bench",
                    "--quiet",
                    "-p",
                    "broker-userspace",
                    "--bench",
                    "ndp",
                    "--",
                ])
                .arg("--out")
                .arg(root.join("target/bench"))
                .args(["--allocation-size", &allocation_size.to_string()])
                .args(only.iter().flat_map(|part| match part {
                    NdpPart::KernelCost => ["--only", "kernel-cost"],
                })),
        ),
    }
}
