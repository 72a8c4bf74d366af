//! broker-client: asks a blockhost-broker for an IPv6 prefix on-chain and
//! installs the tunnel (see `broker-client --help` and the README's
//! "Client" section).

mod cli;
mod files;
mod install;
mod keys;
mod registry;
mod release;
mod request;
mod response;
mod status;

use std::process::ExitCode;

use alloy::{primitives::Address, signers::local::PrivateKeySigner};
use anyhow::Context as _;
use broker_contracts::{
    chain::{ChainOptions, Connection},
    error_text::one_line,
};
use clap::Parser as _;

use crate::cli::{Cli, Command, Global};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                e.exit();
            }
            // clap's message and a usage hint take several lines: keep
            // the first, which says what is wrong.
            let text = e.to_string();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            eprintln!(
                "broker-client: {} (see --help)",
                one_line(first.trim_start_matches("error: "))
            );
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("broker-client: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("broker-client: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    match &cli.command {
        Command::Request(args) => {
            let registry = registry_contract(g)?;
            let wallet = keys::wallet(&args.wallet.wallet_key)?;
            let chain = connect(g, Some(wallet)).await?;
            request::request(g, args, &chain, registry).await
        }
        Command::Renew(args) => {
            let wallet = keys::wallet(&args.wallet.wallet_key)?;
            let chain = connect(g, Some(wallet)).await?;
            request::renew(g, args, &chain, g.registry_contract).await
        }
        Command::Status(args) => {
            let chain = match (&g.rpc_url, g.chain_id) {
                (Some(_), Some(_)) => Some(connect(g, None).await?),
                _ => None,
            };
            status::status(g, args, chain.as_ref()).await
        }
        Command::ListBrokers(args) => {
            let registry = registry_contract(g)?;
            let chain = connect(g, None).await?;
            let brokers = registry::list(&chain, registry).await?;
            if args.json {
                println!("{}", serde_json::to_string(&brokers)?);
            } else {
                print!("{}", registry::table(&brokers));
            }
            Ok(())
        }
        Command::Install(args) => install::install(g, args).await,
        Command::Release(args) => {
            let wallet = keys::wallet(&args.wallet.wallet_key)?;
            let chain = connect(g, Some(wallet)).await?;
            release::release(g, args, &chain).await
        }
    }
}

fn registry_contract(g: &Global) -> anyhow::Result<Address> {
    g.registry_contract
        .context("no registry: give --registry-contract or set BLOCKHOST_REGISTRY_CONTRACT")
}

async fn connect(g: &Global, wallet: Option<PrivateKeySigner>) -> anyhow::Result<Connection> {
    let url = g
        .rpc_url
        .as_deref()
        .context("no chain endpoint: give --rpc-url or set BLOCKHOST_RPC_URL")?;
    let chain_id = g
        .chain_id
        .context("no chain id: give --chain-id or set BLOCKHOST_CHAIN_ID")?;
    Ok(Connection::connect(url, chain_id, wallet, ChainOptions::default()).await?)
}
