//! `cargo xtask chain`: a local chain with the broker's contracts deployed,
//! for development. The work is the `devchain` binary of broker-contracts
//! (run through `cargo run`), so xtask itself stays free of alloy and builds
//! in seconds on a fresh machine.

use std::process::Command;

use crate::cmd;

#[derive(clap::Args)]
pub struct Args {
    /// Port for anvil on 127.0.0.1 (default: a free one).
    #[arg(long, value_name = "N")]
    port: Option<u16>,
    /// Deploy, print, and stop the chain at once instead of waiting for
    /// Ctrl-C.
    #[arg(long)]
    exit: bool,
}

extern "C" fn ignore(_: libc::c_int) {}

pub fn run(args: Args) -> anyhow::Result<()> {
    let root = cmd::workspace_root();
    let mut devchain = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    devchain
        .current_dir(&root)
        .args(["run", "-q", "-p", "broker-contracts", "--bin", "devchain"])
        .arg("--")
        .arg("--dir")
        .arg(root.join("target/devchain"));
    if let Some(port) = args.port {
        devchain.args(["--port", &port.to_string()]);
    }
    if args.exit {
        devchain.arg("--exit");
    }
    // Ctrl-C reaches the whole foreground process group: devchain stops its
    // chain and exits; xtask waits for that instead of dying first. A
    // handler (unlike SIG_IGN) is reset in the child at exec.
    // SAFETY: the handler does nothing, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, ignore as *const () as libc::sighandler_t) };
    let result = cmd::run(&mut devchain);
    // SAFETY: restoring the default disposition.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    result
}
