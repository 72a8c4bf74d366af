//! The workspace's binaries as the tests and the lab run them, and the
//! broker's NDP responder commands (`blockhost-broker ndp serve|status`).

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use broker_userspace::ndp::PinDir;

use crate::{
    netns::Netns,
    process::{Process, run_bounded},
};

/// The workspace binary `name` (`blockhost-broker`, `broker-client`):
/// beside the running program (target/debug), or in its parent for a test
/// or bench (target/debug/deps), or in `BLOCKHOST_LAB_BIN_DIR`.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("BLOCKHOST_LAB_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().context("finding the running program")?;
            let mut dir = exe
                .parent()
                .context("the program's directory")?
                .to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build it first (cargo build -p broker-userspace -p broker-client)",
            path.display()
        );
    }
    Ok(path)
}

/// `blockhost-broker` in `ns` with the pin directory `pins`, plain output.
pub fn broker_command(ns: &Netns, pins: &PinDir) -> anyhow::Result<Command> {
    let mut cmd = ns.command(binary("blockhost-broker")?);
    cmd.env("BLOCKHOST_BROKER_PIN_DIR", pins.path())
        .env("NO_COLOR", "1");
    Ok(cmd)
}

/// What `ndp serve` logs once the program answers for its prefixes.
const ANSWERING: &str = "answering for";

/// Starts `blockhost-broker ndp serve ARGS` in `ns` and waits (at most
/// 20 s) until it says it answers; an error with its output if it exits
/// first.
pub fn ndp_serve(ns: &Netns, pins: &PinDir, args: &[&str]) -> anyhow::Result<Process> {
    let mut cmd = broker_command(ns, pins)?;
    cmd.args(["ndp", "serve"]).args(args);
    let mut serve = Process::spawn(&format!("ndp serve {args:?}"), cmd)?;
    serve.wait_log(&[ANSWERING], 1, Duration::from_secs(20) * time_scale())?;
    Ok(serve)
}

/// `blockhost-broker ndp status` in `ns`: (exit code, stdout).
pub fn ndp_status(ns: &Netns, pins: &PinDir) -> anyhow::Result<(Option<i32>, String)> {
    let mut cmd = broker_command(ns, pins)?;
    cmd.args(["ndp", "status"]);
    let out = run_bounded(cmd, Duration::from_secs(10) * time_scale())?;
    let status = out
        .status
        .with_context(|| format!("ndp status hung; stderr: {}", out.stderr))?;
    Ok((status.code(), out.stdout))
}

/// How many times slower than this machine kind the machine running the
/// tests may be: `BBT_TIME_SCALE`, which `cargo xtask kernel-test` sets in
/// its emulated (TCG) VMs, where loading the program alone can take seconds;
/// 1 when unset. Bounds that only guard against a hang scale with it.
pub fn time_scale() -> u32 {
    match std::env::var("BBT_TIME_SCALE") {
        Err(_) => 1,
        Ok(v) => v
            .parse()
            .ok()
            .filter(|&n| n >= 1)
            .unwrap_or_else(|| panic!("BBT_TIME_SCALE={v:?}: want a whole number from 1")),
    }
}
