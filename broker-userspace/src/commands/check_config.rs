//! `blockhost-broker check-config`: read the configuration as `run` would
//! and report every problem, one line each.

use std::{path::PathBuf, process::ExitCode};

use broker_userspace::config::{self, Config};

#[derive(clap::Args)]
pub struct CheckConfigArgs {
    /// The configuration file.
    #[arg(long, short, default_value = config::DEFAULT_PATH, env = "BLOCKHOST_BROKER_CONFIG")]
    pub config: PathBuf,
}

pub fn run(args: CheckConfigArgs) -> anyhow::Result<ExitCode> {
    match Config::load(&args.config) {
        Ok(c) => {
            println!(
                "{}: ok — /{}s of {} on {}, WireGuard {} port {}, {} requests contract(s) on chain {}",
                args.config.display(),
                c.broker.pool.allocation_size(),
                c.broker.pool.upstream(),
                c.broker.upstream_interface,
                c.wireguard.interface,
                c.wireguard.listen_port,
                1 + c.onchain.legacy_requests_contracts.len(),
                c.onchain.chain_id
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for line in errors.to_string().lines() {
                eprintln!("error: {line}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
