//! `cargo xtask fuzz`: the cargo-fuzz targets in fuzz/ (what the broker and
//! the client read from outsiders), each for a fixed time. `cargo xtask
//! test` runs each briefly; run them longer here.
//!
//! The seeds committed under fuzz/corpus/<target>/ stay as they are: what a
//! run finds goes to target/fuzz/corpus/<target>/ (kept between runs) and a
//! crashing input to target/fuzz/artifacts/<target>/.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cmd;

/// Every target in fuzz/fuzz_targets/, and what it reads.
pub const TARGETS: &[(&str, &str)] = &[
    (
        "request",
        "a request's encrypted payload, as the daemon decrypts and checks it",
    ),
    (
        "response",
        "a broker's answer, as broker-client decodes and checks it",
    ),
    ("config", "the configuration file, as Config::load reads it"),
    (
        "solicitation",
        "a frame, as the NDP responder's packet code reads and answers it (against the model)",
    ),
];

/// How long `cargo xtask test` runs each target.
pub const TEST_SECONDS: u64 = 20;

#[derive(clap::Args)]
pub struct Args {
    /// One target (request, response, config, solicitation); all when
    /// omitted.
    pub target: Option<String>,
    /// How long each target runs.
    #[arg(long, default_value_t = 300)]
    pub seconds: u64,
    /// Build without optimizations: a cold build takes a fraction of the
    /// time, each input runs several times slower. `cargo xtask test`'s
    /// short runs use it; long runs want the default.
    #[arg(long)]
    pub dev: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let targets: Vec<&str> = match &args.target {
        Some(t) if TARGETS.iter().any(|(name, _)| name == t) => vec![t.as_str()],
        Some(t) => bail!(
            "no fuzz target {t:?}; the targets are {}",
            TARGETS
                .iter()
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => TARGETS.iter().map(|(name, _)| *name).collect(),
    };
    if args.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    eprintln!(
        "fuzz: building the targets (nightly, address sanitizer, debug assertions{})",
        if args.dev { ", unoptimized" } else { "" }
    );
    let mut build = cargo_fuzz();
    build.arg("build");
    cmd::run(build_flags(&mut build, args.dev))?;
    for target in targets {
        run_target(target, args.seconds, args.dev)?;
    }
    Ok(())
}

/// `cargo +nightly fuzz` in the workspace, its build in target/fuzz/.
fn cargo_fuzz() -> Command {
    let root = cmd::workspace_root();
    let mut c = Command::new("cargo");
    c.current_dir(&root).args(["+nightly", "fuzz"]);
    c
}

/// The flags `build` and `run` share, so that `run` reuses the build.
fn build_flags(c: &mut Command, dev: bool) -> &mut Command {
    let target_dir = cmd::workspace_root().join("target/fuzz");
    if dev {
        c.arg("--dev");
    }
    c.arg("--debug-assertions")
        .arg("--target-dir")
        .arg(target_dir)
}

fn run_target(target: &str, seconds: u64, dev: bool) -> anyhow::Result<()> {
    let root = cmd::workspace_root();
    let what = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map_or("", |(_, w)| *w);
    let corpus = root.join("target/fuzz/corpus").join(target);
    let artifacts = root.join("target/fuzz/artifacts").join(target);
    for dir in [&corpus, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let seeds = root.join("fuzz/corpus").join(target);
    eprintln!("fuzz: {target} for {seconds} s ({what})");
    let mut c = cargo_fuzz();
    c.arg("run");
    build_flags(&mut c, dev)
        .arg(target)
        // New inputs go to the first folder; the seeds are only read.
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // One input taking seconds is a hang, not slowness.
        .arg("-timeout=10")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1");
    if let Err(e) = cmd::run(&mut c) {
        bail!(
            "{e:#}\nfuzz target {target} failed; its input is in {} (replay: cargo +nightly fuzz run {target} <that file>). Make it a regression test in the crate it belongs to.",
            artifacts.display()
        );
    }
    Ok(())
}
