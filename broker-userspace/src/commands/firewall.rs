//! `blockhost-broker firewall …`: the daemon's nftables table on its own
//! (`run` installs it at each start).

use std::{path::PathBuf, process::ExitCode};

use broker_userspace::{
    config::{self, Config},
    firewall,
};
use clap::Subcommand;

#[derive(clap::Args)]
pub struct FirewallArgs {
    #[command(subcommand)]
    command: FirewallCommand,
}

#[derive(Subcommand)]
pub enum FirewallCommand {
    /// Print the ruleset `run` installs for this configuration (tunnel
    /// clients reach the broker itself with ICMPv6, replies and the
    /// `[wireguard] allow_to_broker` services only).
    Show {
        /// The configuration file.
        #[arg(long, short, default_value = config::DEFAULT_PATH, env = "BLOCKHOST_BROKER_CONFIG")]
        config: PathBuf,
    },
    /// Delete the table (`inet blockhost_broker`): tunnel clients then reach
    /// every service of the host until the next `run`.
    Remove,
}

pub fn run(args: FirewallArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        FirewallCommand::Show { config } => {
            let c = match Config::load_without_keys(&config) {
                Ok(c) => c,
                Err(errors) => {
                    for line in errors.to_string().lines() {
                        eprintln!("error: {line}");
                    }
                    return Ok(ExitCode::FAILURE);
                }
            };
            print!(
                "{}",
                firewall::ruleset(&c.wireguard.interface, &c.wireguard.allow_to_broker)?
            );
            Ok(ExitCode::SUCCESS)
        }
        FirewallCommand::Remove => {
            if firewall::remove()? {
                println!("removed table {}", firewall::TABLE);
            } else {
                println!("no table {}", firewall::TABLE);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
