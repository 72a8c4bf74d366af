//! `cargo xtask bench …`: benchmarks, written to target/bench/.

use std::process::Command;

use anyhow::bail;
use clap::Subcommand;

use crate::cmd;

#[derive(Subcommand)]
pub enum Bench {
    /// The NDP responder: in-kernel cost per packet as allocations grow
    /// (BPF_PROG_TEST_RUN), with the empty program as baseline. Writes
    /// target/bench/ndp.json and ndp.md and prints a summary table.
    Ndp {
        /// Allocation size the map is filled with (49..=128, inside a /48).
        #[arg(long, default_value_t = 120)]
        allocation_size: u8,
    },
}

pub fn run(bench: Bench) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the benchmarks load XDP programs: run them as root");
    }
    let root = cmd::workspace_root();
    match bench {
        Bench::Ndp { allocation_size } => cmd::run(
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
                .args(["--allocation-size", &allocation_size.to_string()]),
        ),
    }
}
