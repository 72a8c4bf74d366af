//! `cargo xtask test`: every test the project has, in one command.

use std::process::Command;

use anyhow::bail;

use crate::cmd;

/// Prefix of every network namespace, WireGuard interface and bpffs pin
/// directory a test makes (broker-lab's `names` gives them), so leftovers
/// of a killed run can be found and removed.
pub const TEST_PREFIX: &str = "bbt-";

#[derive(clap::Args)]
pub struct Args {
    /// Only run Rust tests whose name contains this string.
    filter: Option<String>,
    /// Skip the formatting and lint checks.
    #[arg(long)]
    no_lints: bool,
    /// Skip the responder's tests on Debian 12's and 13's kernels under
    /// qemu (`cargo xtask kernel-test`, a few minutes per kernel).
    #[arg(long)]
    no_kernels: bool,
    /// Skip the packages and the image: `deb-test` (install, upgrade,
    /// remove, purge in a Debian 13 chroot), then `image` and `image-test`
    /// (the VPS image booted under qemu). They need a release build.
    #[arg(long)]
    no_image: bool,
    /// Skip the fuzz targets (`cargo xtask fuzz`, each run for a short
    /// fixed time here).
    #[arg(long)]
    no_fuzz: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!(
            "the tests load XDP programs and create network namespaces: run them as root (`sudo -E cargo xtask test`)"
        );
    }
    let root = cmd::workspace_root();
    remove_leftovers();
    if !args.no_lints {
        eprintln!("test: cargo fmt --check");
        cmd::run(
            Command::new("cargo")
                .current_dir(&root)
                .args(["fmt", "--all", "--", "--check"]),
        )?;
        // The fuzz crate is a workspace of its own, which --all skips.
        cmd::run(Command::new("cargo").current_dir(&root).args([
            "fmt",
            "--manifest-path",
            "fuzz/Cargo.toml",
            "--",
            "--check",
        ]))?;
        eprintln!("test: cargo clippy");
        cmd::run(Command::new("cargo").current_dir(&root).args([
            "clippy",
            "--quiet",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    eprintln!("test: contracts (forge tests, gas snapshot, artifacts)");
    cmd::run(Command::new("bash").arg(root.join("contracts/bin/check")))?;
    let mut test = Command::new("cargo");
    // Every suite runs, so one failure does not hide the others'.
    test.current_dir(&root)
        .args(["test", "--all-targets", "--no-fail-fast"]);
    if let Some(filter) = &args.filter {
        test.arg("--").arg(filter);
    }
    let result = cmd::run(&mut test);
    remove_leftovers();
    result?;
    if !args.no_fuzz {
        eprintln!(
            "test: the fuzz targets, {} s each",
            crate::fuzz::TEST_SECONDS
        );
        // Unoptimized: CI builds them cold, and 20 s runs need no speed.
        crate::fuzz::run(crate::fuzz::Args {
            target: None,
            seconds: crate::fuzz::TEST_SECONDS,
            dev: true,
        })?;
    }
    if !args.no_kernels {
        eprintln!("test: the responder on Debian 12's and 13's kernels (qemu)");
        crate::kernel_test::run(&crate::kernel_test::Args {
            filter: args.filter,
            ..crate::kernel_test::Args::default()
        })?;
    }
    if !args.no_image {
        eprintln!(
            "test: the Debian packages (deb-test), then the VPS image built (twice, to compare) and booted"
        );
        crate::deb::test(crate::deb::Args::default())?;
        // The image of this very build: the package deb-test just made.
        let image = crate::image::run(crate::image::Args {
            deb: Some(crate::image::newest_deb(&root.join("target/debian"))?),
            check_reproducible: true,
            ..crate::image::Args::default()
        })?;
        crate::image::test(crate::image::TestArgs { image: Some(image) })?;
    }
    Ok(())
}

/// Test objects are named `bbt-<pid>-…` (the WireGuard ones with the pid in
/// hex): one whose process still runs belongs to a test in progress, maybe
/// of another checkout, and is not a leftover.
fn owner_alive(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(TEST_PREFIX) else {
        return false;
    };
    rest.split('-').take(2).any(|token| {
        [
            token.parse::<u32>().ok(),
            u32::from_str_radix(token, 16).ok(),
        ]
        .into_iter()
        .flatten()
        .any(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
    })
}

/// Namespaces, pins and WireGuard interfaces left by a test run that was
/// killed before its guards could clean up.
fn remove_leftovers() {
    if let Some(list) = cmd::stdout_of(Command::new("ip").args(["netns", "list"])) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if ns.starts_with(TEST_PREFIX) && !owner_alive(ns) {
                eprintln!("test: removing leftover namespace {ns}");
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
    // wireguard-go exits when its UAPI socket is removed.
    if let Ok(dir) = std::fs::read_dir("/var/run/wireguard") {
        for entry in dir.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEST_PREFIX) && !owner_alive(&name) {
                eprintln!("test: removing leftover WireGuard socket {name}");
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir("/sys/fs/bpf") {
        for entry in dir.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEST_PREFIX) && !owner_alive(&name) {
                eprintln!("test: removing leftover pins /sys/fs/bpf/{name}");
                if let Ok(pins) = std::fs::read_dir(entry.path()) {
                    for pin in pins.filter_map(Result::ok) {
                        let _ = std::fs::remove_file(pin.path());
                    }
                }
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}
