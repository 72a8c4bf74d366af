//! `cargo xtask chain`: a local chain with the broker's contracts deployed,
//! addresses and a configuration snippet printed, running until Ctrl-C.

use std::path::PathBuf;

use anyhow::Context as _;
use broker_contracts::{devchain, keys};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let port = value("--port")
        .map(|p| p.parse())
        .transpose()
        .context("--port")?;
    let dir = PathBuf::from(value("--dir").context("--dir is required")?);
    let exit = args.iter().any(|a| a == "--exit");

    eprintln!("starting anvil and deploying (registry, requests, registration)…");
    let chain = devchain::DevChain::start(&devchain::Options {
        port,
        ..Default::default()
    })
    .await?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
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
    print!(
        "{}",
        chain.config_snippet(
            &operator_key.display().to_string(),
            &ecies_key.display().to_string()
        )
    );
    if exit {
        return Ok(());
    }
    eprintln!("\nrunning; Ctrl-C stops the chain");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
