//! `blockhost-broker wallet`: the operator's key — make one, show its
//! address, read its balance. The key itself is never printed.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use broker_contracts::chain;
use broker_userspace::{
    config::OnchainEndpoint,
    wallet::{self, WalletError},
};
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct WalletArgs {
    #[command(subcommand)]
    command: WalletCommand,
}

#[derive(Subcommand)]
enum WalletCommand {
    /// Create a new operator key (secp256k1) and print its address.
    ///
    /// The key is written as 64 hex digits to FILE, mode 0600 from the
    /// start, atomically (the file holds the whole key or does not exist,
    /// also after a crash). It is never printed. Fund the address before
    /// deploying BrokerRequests: the broker pays for its answers from it.
    Generate(GenerateArgs),
    /// Print the address of the key in FILE.
    ///
    /// FILE must be readable by its owner only (chmod 600), as the broker
    /// itself requires of its key files.
    Address(KeyFileArgs),
    /// Print the balance of the key in FILE on chain, exactly, in ETH and wei.
    ///
    /// The endpoint and chain come from --rpc-url and --chain-id, or else from
    /// the [onchain] section of the broker's configuration file (rpc_url,
    /// chain_id). The endpoint must serve that chain: a balance read on
    /// another network would mislead.
    Balance(BalanceArgs),
}

#[derive(Args)]
struct GenerateArgs {
    /// Where to write the key.
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
    /// Replace an existing FILE. Without it an existing file is never
    /// touched: whatever its key's address holds would be lost with it.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct KeyFileArgs {
    /// The key file: a hex secret key (with or without 0x), readable by its
    /// owner only (chmod 600).
    #[arg(long = "key", short = 'k', value_name = "FILE")]
    key: PathBuf,
}

#[derive(Args)]
struct BalanceArgs {
    #[command(flatten)]
    key: KeyFileArgs,
    /// JSON-RPC endpoint of the chain (http:// or https://); default: the
    /// configuration's [onchain] rpc_url.
    #[arg(long, value_name = "URL")]
    rpc_url: Option<String>,
    /// The chain the endpoint must serve; default: the configuration's
    /// [onchain] chain_id.
    #[arg(long, value_name = "N")]
    chain_id: Option<u64>,
    /// The broker's configuration file, read for what the flags leave out.
    #[arg(long, short, value_name = "PATH", default_value = broker_userspace::config::DEFAULT_PATH, env = "BLOCKHOST_BROKER_CONFIG")]
    config: PathBuf,
}

pub fn run(args: WalletArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        WalletCommand::Generate(args) => generate(args),
        WalletCommand::Address(args) => {
            println!("{}", wallet::address(&args.key)?);
            Ok(ExitCode::SUCCESS)
        }
        WalletCommand::Balance(args) => balance(args),
    }
}

fn generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let generated = match wallet::generate(&args.output, args.force) {
        Ok(generated) => generated,
        Err(e @ WalletError::Exists { .. }) => anyhow::bail!(
            "{e}; pass --force to replace it (whatever its address holds is lost with the key)"
        ),
        Err(e) => return Err(e.into()),
    };
    if let Some(old) = generated.replaced {
        eprintln!("replaced the key of {old}");
    }
    eprintln!(
        "wrote a new operator key to {} (mode 0600); its address:",
        args.output.display()
    );
    println!("{}", generated.address);
    Ok(ExitCode::SUCCESS)
}

fn balance(args: BalanceArgs) -> anyhow::Result<ExitCode> {
    // Everything local first: nothing goes on the wire with a bad argument.
    let address = wallet::address(&args.key.key)?;
    let (rpc_url, chain_id) = endpoint(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let balance = runtime.block_on(wallet::balance(&rpc_url, chain_id, address))?;
    println!("address  {address}");
    println!("chain    {chain_id} at {}", balance.endpoint);
    println!(
        "balance  {} ETH ({} wei)",
        chain::ether(balance.wei),
        balance.wei
    );
    Ok(ExitCode::SUCCESS)
}

/// The flags, else the configuration's `[onchain]` values.
fn endpoint(args: &BalanceArgs) -> anyhow::Result<(String, u64)> {
    let from_file = match (&args.rpc_url, args.chain_id) {
        (Some(_), Some(_)) => OnchainEndpoint::default(),
        _ => OnchainEndpoint::load(&args.config).map_err(|e| {
            anyhow::anyhow!(
                "{e}; pass --rpc-url and --chain-id, or the broker's configuration with --config"
            )
        })?,
    };
    let missing = |flag: &str, key: &str| {
        anyhow::anyhow!(
            "no {flag}, and {} has no [onchain] {key}",
            args.config.display()
        )
    };
    let rpc_url = args
        .rpc_url
        .clone()
        .or(from_file.rpc_url)
        .ok_or_else(|| missing("--rpc-url", "rpc_url"))?;
    let chain_id = args
        .chain_id
        .or(from_file.chain_id)
        .ok_or_else(|| missing("--chain-id", "chain_id"))?;
    Ok((rpc_url, chain_id))
}
