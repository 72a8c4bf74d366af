//! `blockhost-broker firewall …`: the daemon's nftables table on its own
//! (`run` installs it at each start).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

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
    /// Install (or replace, atomically) the table for this configuration,
    /// as `run` does at start: for a host firewall that flushes the whole
    /// ruleset when it reloads (the VPS image's nftables.service runs this
    /// after it).
    Apply {
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
            let Some(c) = load(&config) else {
                return Ok(ExitCode::FAILURE);
            };
            print!(
                "{}",
                firewall::ruleset(&c.wireguard.interface, &c.wireguard.allow_to_broker)?
            );
            Ok(ExitCode::SUCCESS)
        }
        FirewallCommand::Apply { config } => {
            let Some(c) = load(&config) else {
                return Ok(ExitCode::FAILURE);
            };
            firewall::install(&c.wireguard.interface, &c.wireguard.allow_to_broker)?;
            println!(
                "installed table {} for {}",
                firewall::TABLE,
                c.wireguard.interface
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

/// The configuration (its keys unread), or None with every problem said.
fn load(path: &Path) -> Option<Config> {
    match Config::load_without_keys(path) {
        Ok(c) => Some(c),
        Err(errors) => {
            for line in errors.to_string().lines() {
                eprintln!("error: {line}");
            }
            None
        }
    }
}
