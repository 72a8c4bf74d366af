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
    /// The request path with the real daemon in broker-lab: bursts of
    /// requests from distinct NFT contracts mined in one block, answered
    /// with pipelined answers and one at a time (`pipeline_answers = true`
    /// and `false`) side by side: blocks and seconds from confirmation to
    /// answer, gas and operator wei per answer, the daemon's CPU time and
    /// peak memory. Writes target/bench/control-plane.json, .md and .png,
    /// and prints a summary; then the daemon's start-up with 1,000, 10,000
    /// and 60,000 allocations in its database. About twenty-five minutes
    /// with the defaults (2-second blocks).
    ControlPlane {
        /// Burst sizes, comma-separated (1..=5000 each).
        #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
        bursts: Vec<usize>,
        /// Seconds between blocks once a burst's block is mined (anvil's
        /// interval mining). Results are stated in blocks too; blocks shorter
        /// than a real chain's count the daemon's own time as more blocks, so
        /// a 12-second chain's figure in blocks is at most the 2-second one.
        #[arg(long, default_value_t = 2)]
        block_seconds: u64,
        /// Run the one-at-a-time design only for bursts up to this size: it
        /// answers one request per block (1,000 blocks for a burst of 1,000).
        #[arg(long, default_value_t = 100)]
        one_at_a_time_up_to: usize,
        /// Then the daemon's start-up with this many allocations in its
        /// database, in increasing order (reconciliation time, memory);
        /// filling takes about 1 ms per allocation. wireguard-go, the
        /// WireGuard here without the kernel module, holds 65,536 peers at
        /// most. `none` skips this part.
        #[arg(long, default_value = "1000,10000,60000")]
        allocations: String,
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
        Bench::ControlPlane {
            bursts,
            block_seconds,
            one_at_a_time_up_to,
            allocations,
        } => {
            let list = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
            cmd::run(
                Command::new("cargo")
                    .current_dir(&root)
                    .args([
                        "bench",
                        "--quiet",
                        "-p",
                        "broker-userspace",
                        "--bench",
                        "control_plane",
                        "--",
                    ])
                    .arg("--out")
                    .arg(root.join("target/bench"))
                    .args(["--bursts", &list(&bursts)])
                    .args(["--allocations", &allocations])
                    .args(["--block-seconds", &block_seconds.to_string()])
                    .args(["--one-at-a-time-up-to", &one_at_a_time_up_to.to_string()]),
            )
        }
    }
}
