use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

mod commands;

/// blockhost-broker: an IPv6 tunnel broker that hands prefixes to BlockHost
/// servers over WireGuard, authenticated on-chain.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// bpffs directory holding the NDP responder's pinned maps and XDP link.
    /// One directory per responder; the pins keep it answering while no
    /// daemon runs.
    #[arg(
        long,
        global = true,
        env = "BLOCKHOST_BROKER_PIN_DIR",
        default_value = broker_userspace::ndp::DEFAULT_PIN_DIR
    )]
    pin_dir: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The XDP Neighbor Discovery responder on the upstream interface.
    #[command(subcommand)]
    Ndp(commands::ndp::NdpCommand),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BLOCKHOST_BROKER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let pins = broker_userspace::ndp::PinDir::new(cli.pin_dir);
    let result = match cli.command {
        Command::Ndp(cmd) => commands::ndp::run(cmd, &pins),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
