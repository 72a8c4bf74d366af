//! `cargo xtask demo`: builds the binaries, then runs `broker-lab demo`,
//! which brings the whole system up in network namespaces — a chain, the
//! provider's router, an internet host, the broker and BlockHost servers —
//! narrates each step, and tears it all down on Ctrl-C (or at once with
//! `--exit`). See broker-lab/src/bin/broker-lab.rs.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, ensure};

use crate::cmd;

#[derive(clap::Args)]
pub struct Args {
    /// Tear down at once instead of waiting for Ctrl-C.
    #[arg(long)]
    exit: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!(
            "the demo creates network namespaces and loads XDP programs: run it as root (`sudo -E cargo xtask demo`)"
        );
    }
    eprintln!("demo: building blockhost-broker, broker-client and broker-lab");
    let root = cmd::workspace_root();
    cmd::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--quiet",
        "-p",
        "broker-userspace",
        "-p",
        "broker-client",
        "-p",
        "broker-lab",
    ]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"));
    let lab = target.join("debug/broker-lab");
    ensure!(lab.is_file(), "{} was not built", lab.display());
    let mut demo = Command::new(lab);
    demo.arg("demo");
    if args.exit {
        demo.arg("--exit");
    }
    // Ctrl-C reaches the lab too, which tears down; we only wait for it.
    // SAFETY: ignoring SIGINT here has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    cmd::run(&mut demo)
}
