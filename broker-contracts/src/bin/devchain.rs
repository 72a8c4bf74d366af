//! A local chain with the broker's contracts deployed (what `cargo xtask
//! chain` runs): addresses and a configuration snippet printed, running
//! until Ctrl-C.

use std::path::PathBuf;

use anyhow::Context as _;
use broker_contracts::{devchain, keys};
use clap::Parser;

/// Start anvil on 127.0.0.1 and deploy the broker's contracts in the three
/// phases of a real network: BrokerRegistry from the deployer (anvil account
/// 0), BrokerRequests from the operator (anvil account 1), then the deployer
/// registers the broker with a fresh ECIES public key.
///
/// Writes the operator's Ethereum key and the broker's ECIES secret key
/// (mode 0600) into --dir, prints the addresses and the `[onchain]` lines of
/// a broker configuration, and keeps the chain running until Ctrl-C (or
/// stops it at once with --exit). The keys are anvil's public test keys and
/// a throw-away ECIES key: never use them on a real network.
#[derive(Parser)]
#[command(name = "devchain", version)]
struct Args {
    /// Directory for operator.key and ecies.key (created if missing).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Port for anvil on 127.0.0.1 (default: a free one).
    #[arg(long, value_name = "N")]
    port: Option<u16>,
    /// Stop the chain after printing instead of waiting for Ctrl-C.
    #[arg(long)]
    exit: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();

    eprintln!("starting anvil and deploying (registry, requests, registration)…");
    let chain = devchain::DevChain::start(&devchain::Options {
        port: args.port,
        ..Default::default()
    })
    .await?;
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let operator_key = dir.join("operator.key");
    let ecies_key = dir.join("ecies.key");
    keys::write_secret(&operator_key, &chain.operator.to_bytes().0)
        .with_context(|| format!("writing {}", operator_key.display()))?;
    keys::write_secret(&ecies_key, &chain.ecies_secret)
        .with_context(|| format!("writing {}", ecies_key.display()))?;

    println!(
        "chain:             {} (chain id {})",
        chain.rpc_url, chain.chain_id
    );
    println!("deployer:          {}", chain.deployer.address());
    println!("operator:          {}", chain.operator.address());
    println!("BrokerRegistry:    {}", chain.registry);
    println!("BrokerRequests:    {}", chain.requests);
    println!("broker id:         {}", chain.broker_id);
    println!("ECIES public key:  {}", hex::encode(chain.ecies_public));
    println!();
    print!("{}", chain.config_snippet(&operator_key, &ecies_key));
    if args.exit {
        return Ok(());
    }
    eprintln!("\nrunning; Ctrl-C stops the chain");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
