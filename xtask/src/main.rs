//! `cargo xtask …`: everything around the code — installing what a fresh
//! machine lacks, running every test, the demo.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod chain;
mod cmd;
mod deb;
mod demo;
mod fuzz;
mod image;
mod kernel_test;
mod setup;
mod test;

#[derive(Parser)]
#[command(about = "Set-up, tests and demo for blockhost-broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks: Debian packages, the nightly
    /// toolchain's rust-src, bpf-linker built against the nightly's LLVM.
    /// Idempotent, and quiet when nothing is missing. Needs root to install.
    Setup,
    /// Set up, then run every test: formatting, lints, unit tests, program
    /// tests through BPF_PROG_TEST_RUN and network-namespace tests (root).
    Test(test::Args),
    /// Set up, then bring the whole system up in network namespaces (chain,
    /// router, internet host, broker, BlockHost servers), narrated; a server
    /// gets a prefix and the internet reaches it. Ctrl-C tears it down.
    Demo(demo::Args),
    /// Set up, then run the responder's program and namespace tests inside
    /// qemu on Debian 12's and Debian 13's cloud kernels (6.1 and 6.12),
    /// fetched from the Debian archive into target/kernel-test/.
    KernelTest(kernel_test::Args),
    /// Set up, then run the fuzz targets in fuzz/ (cargo-fuzz, nightly):
    /// what the broker and the client read from outsiders. Five minutes
    /// each by default; what they find is kept under target/fuzz/.
    Fuzz(fuzz::Args),
    /// Set up, then run a benchmark (results in target/bench/).
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Set up, then start a local chain (anvil) with the broker's contracts
    /// deployed and registered; prints the addresses and the broker's
    /// `[onchain]` configuration, keys in target/devchain/. Runs until Ctrl-C.
    Chain(chain::Args),
    /// Set up, then build the Debian packages (blockhost-broker,
    /// blockhost-broker-client) into target/debian/ and check them with
    /// lintian.
    Deb(deb::Args),
    /// Set up, build the packages, then install, upgrade, remove and purge
    /// them in a clean Debian 13 chroot (mmdebstrap), checking each step.
    DebTest(deb::Args),
    /// Set up, then build the broker VPS image (image/README.md):
    /// target/image/blockhost-broker-<version>.qcow2. Root.
    Image(image::Args),
    /// Set up, then boot the image under qemu with a NoCloud seed and check
    /// it configures itself and serves (a few minutes). Root.
    ImageTest(image::TestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Test(args) => setup::run().and_then(|()| test::run(args)),
        Command::KernelTest(args) => setup::run().and_then(|()| kernel_test::run(&args)),
        Command::Demo(args) => setup::run().and_then(|()| demo::run(args)),
        Command::Fuzz(args) => setup::run().and_then(|()| fuzz::run(args)),
        Command::Bench(b) => setup::run().and_then(|()| bench::run(b)),
        Command::Chain(args) => setup::run().and_then(|()| chain::run(args)),
        Command::Deb(args) => setup::run().and_then(|()| deb::run(args)),
        Command::DebTest(args) => setup::run().and_then(|()| deb::test(args)),
        Command::Image(args) => setup::run().and_then(|()| image::run(args).map(drop)),
        Command::ImageTest(args) => setup::run().and_then(|()| image::test(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
