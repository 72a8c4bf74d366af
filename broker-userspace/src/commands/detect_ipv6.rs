//! `blockhost-broker detect-ipv6`: the host's global IPv6 addresses and
//! routes, the pools they allow and the upstream interface
//! ([`broker_userspace::host_ipv6`]).

use std::{io::Write as _, process::ExitCode};

use anyhow::Context as _;
use broker_userspace::host_ipv6;

#[derive(clap::Args)]
pub struct DetectIpv6Args {
    /// Print JSON (for scripts) instead of the report for a person. Counts
    /// of allocations are JSON numbers, exact up to 2^128 (parse them as
    /// big integers: a double rounds them above 2^53).
    #[arg(long)]
    json: bool,
}

pub fn run(args: DetectIpv6Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let host = runtime.block_on(host_ipv6::detect())?;
    let text = if args.json {
        serde_json::to_string_pretty(&host)? + "\n"
    } else {
        host.to_text()
    };
    // A reader that stops early (`| head`) is no error.
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing the report")
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}
