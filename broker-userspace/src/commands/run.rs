//! `blockhost-broker run`: the daemon.

use std::process::ExitCode;

use anyhow::Context as _;
use broker_userspace::{config::Config, daemon};

use super::check_config::CheckConfigArgs;

pub fn run(args: CheckConfigArgs) -> anyhow::Result<ExitCode> {
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(errors) => {
            for line in errors.to_string().lines() {
                eprintln!("error: {line}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    // One thread: the tunnel and the NDP responder act in the network
    // namespace of the thread that calls them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(daemon::run(config))?;
    Ok(ExitCode::SUCCESS)
}
