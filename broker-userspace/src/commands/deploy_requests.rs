//! `blockhost-broker deploy-requests`: deploys the broker's own
//! BrokerRequests contract on a real network, from the operator's key.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use broker_contracts::{
    chain,
    config_snippet::OnchainSnippet,
    deploy::{self, Progress},
    keys,
};
use clap::Args;

/// What the operator does once the contract is on chain (also in --help).
const NEXT_STEPS: &str = "\
Next: ask the BlockHost registry owner to register this broker. Give them the
requests contract address, the operator address and the broker's ECIES public key
(65 bytes, uncompressed 04||X||Y, in hex). Clients only find brokers listed in the
registry. Keep the operator address funded: the broker pays for its answers.";

#[derive(Args)]
#[command(after_long_help = NEXT_STEPS)]
pub struct DeployRequestsArgs {
    /// JSON-RPC endpoint of the chain (http:// or https://).
    #[arg(long, value_name = "URL")]
    rpc_url: String,
    /// The chain the endpoint must serve (e.g. 1 for Ethereum mainnet,
    /// 11155111 for Sepolia); nothing is sent to another chain.
    #[arg(long, value_name = "N")]
    chain_id: u64,
    /// File holding the operator's Ethereum secret key (hex, with or without
    /// 0x), readable by its owner only (mode 0600). The key becomes the
    /// contract's owner and pays for the deployment.
    #[arg(long, value_name = "FILE")]
    operator_key: PathBuf,
}

pub fn run(args: DeployRequestsArgs) -> anyhow::Result<ExitCode> {
    // Everything local first: nothing goes on the wire with a bad argument.
    // Shown as the daemon shows it: a hosted endpoint's path or query holds
    // its API key.
    let (endpoint, _) = chain::redact::Endpoint::parse(&args.rpc_url)?;
    let operator = keys::read_private_signer(&args.operator_key).context("--operator-key")?;
    let key_file = std::path::absolute(&args.operator_key)
        .with_context(|| format!("resolving {}", args.operator_key.display()))?;
    let owner = operator.address();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    eprintln!(
        "connecting to {} (expecting chain {})…",
        endpoint.shown(),
        args.chain_id
    );
    let deployment = runtime.block_on(deploy::deploy_requests_with_progress(
        &args.rpc_url,
        args.chain_id,
        operator,
        report,
    ))?;

    println!("BrokerRequests deployed");
    println!("  contract:     {}", deployment.address);
    println!("  owner:        {owner} (the operator key)");
    println!("  transaction:  {}", deployment.transaction);
    println!(
        "  block:        {} (gas used {})",
        deployment.block, deployment.gas_used
    );
    println!();
    println!("For the broker's configuration:");
    println!();
    print!(
        "{}",
        snippet(&args.rpc_url, args.chain_id, deployment.address, &key_file)
    );
    println!(
        "(the section also needs ecies_key_file: the broker's ECIES secret key file, mode 0600)"
    );
    println!();
    println!("{NEXT_STEPS}");
    Ok(ExitCode::SUCCESS)
}

fn snippet(
    rpc_url: &str,
    chain_id: u64,
    requests: alloy::primitives::Address,
    key_file: &Path,
) -> String {
    OnchainSnippet {
        rpc_url,
        chain_id,
        registry_contract: None,
        requests_contract: requests,
        operator_key_file: key_file,
        ecies_key_file: None,
    }
    .to_string()
}

fn report(step: &Progress) {
    match step {
        Progress::ChainOk { chain_id } => eprintln!("chain {chain_id}: ok"),
        Progress::Funded {
            address,
            balance,
            cost,
        } => {
            eprintln!(
                "operator {address}: balance {} ETH; the deployment costs up to {cost}",
                chain::ether(*balance)
            );
            eprintln!("sending the deployment transaction…");
        }
        Progress::Sent { transaction } => {
            eprintln!("transaction {transaction}: waiting for the receipt…")
        }
    }
}
