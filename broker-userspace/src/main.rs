use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;

/// blockhost-broker: an IPv6 tunnel broker that hands prefixes to BlockHost
/// servers over WireGuard, authenticated on-chain.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker: watch the requests contracts, allocate prefixes, set
    /// up WireGuard peers, routes and the NDP responder, answer on chain,
    /// release tunnels that never come up. Stops cleanly on SIGTERM.
    Run(commands::check_config::CheckConfigArgs),
    /// The XDP Neighbor Discovery responder on the upstream interface.
    Ndp(commands::ndp::NdpArgs),
    /// The daemon's nftables table, which keeps tunnel clients off the
    /// broker's own services (`run` installs it at each start).
    Firewall(commands::firewall::FirewallArgs),
    /// Deploy this broker's BrokerRequests contract from the operator's key,
    /// on a real network.
    ///
    /// The operator key becomes the contract's owner, the account the broker
    /// answers requests from. Before sending anything the command checks that
    /// the endpoint answers and serves --chain-id, and that the key's balance
    /// covers the most the deployment can cost. It shows its progress on
    /// stderr, waits for the receipt, and prints the contract address, the
    /// transaction and the `[onchain]` lines of the broker's configuration
    /// (rpc_url, chain_id, requests_contract, operator_key_file).
    ///
    /// The key is only ever read from the file, never from the command line,
    /// and never printed.
    DeployRequests(commands::deploy_requests::DeployRequestsArgs),
    /// Create the broker's ECIES key: clients encrypt their requests to its
    /// public key, which the registry publishes. Writes the secret (mode
    /// 0600) and prints the 65-byte public key in hex.
    GenerateKey(commands::generate_key::GenerateKeyArgs),
    /// Check the configuration file as `run` reads it: every problem on its
    /// own line, exit status 1 if there is any.
    CheckConfig(commands::check_config::CheckConfigArgs),
    /// The operator's wallet: `generate` a key, show its `address`, read its
    /// `balance` on chain.
    Wallet(commands::wallet::WalletArgs),
    /// Show the host's global IPv6 addresses and routes, the pools a broker
    /// could hand out from them with the allocation sizes each allows, and
    /// the upstream interface (the one holding the IPv6 default route).
    ///
    /// A pool is the prefix of a global address (on-link) or a prefix routed
    /// to this host (a route to an interface without a gateway, e.g. a 6in4
    /// tunnel, or an unreachable/blackhole route). Link-local, temporary,
    /// deprecated, tentative and duplicate addresses are left out. The
    /// broker keeps one allocation of its pool for its own address.
    ///
    /// Reads the network namespace it runs in; needs no privileges.
    #[command(name = "detect-ipv6")]
    DetectIpv6(commands::detect_ipv6::DetectIpv6Args),
    /// The running daemon's figures: pool, requests per contract, chain
    /// lag, operator wallet, NDP responder, WireGuard peers. Without a
    /// daemon, what the database holds.
    Status(commands::status::StatusArgs),
    /// The allocations: list, show one, release one.
    Allocations(commands::allocations::AllocationsArgs),
    /// The HTTP API's bearer tokens: create (shown once), list, revoke.
    Token(commands::token::TokenArgs),
    /// Set the broker up, from nothing to running: operator wallet (made or
    /// imported, funds awaited), BrokerRequests (deployed or given), ECIES
    /// and WireGuard keys, upstream interface and pool (from detect-ipv6),
    /// allocation size, WireGuard endpoint, the HTTP API and its first
    /// token; writes the configuration and keys with their owner and modes,
    /// checks them, prints what the registry owner needs, starts the
    /// service.
    ///
    /// Asks at the terminal; every question also has a flag, and
    /// --non-interactive takes the flags and defaults only (for scripts and
    /// cloud-init). Run again, it keeps the keys it finds.
    Setup(Box<commands::setup::SetupArgs>),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BLOCKHOST_BROKER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => commands::run::run(args),
        Command::Ndp(args) => commands::ndp::run(args),
        Command::Firewall(args) => commands::firewall::run(args),
        Command::DeployRequests(args) => commands::deploy_requests::run(args),
        Command::GenerateKey(args) => commands::generate_key::run(args),
        Command::CheckConfig(args) => commands::check_config::run(args),
        Command::Wallet(args) => commands::wallet::run(args),
        Command::DetectIpv6(args) => commands::detect_ipv6::run(args),
        Command::Status(args) => commands::status::run(args),
        Command::Allocations(args) => commands::allocations::run(args),
        Command::Token(args) => commands::token::run(args),
        Command::Setup(args) => commands::setup::run(*args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
