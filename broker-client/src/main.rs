//! broker-client: asks a blockhost-broker for an IPv6 prefix on-chain and
//! installs the tunnel (see `broker-client --help` and the README's
//! "Client" section).

use std::process::ExitCode;

use alloy::signers::local::PrivateKeySigner;
use broker_contracts::{
    chain::{ChainOptions, Connection},
    error_text::one_line,
};
use clap::Parser as _;

use broker_client::{
    cli::{Cli, Command, Global, Source},
    discovery, install, keys, registry, release, request, status,
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                e.exit();
            }
            // clap's message and a usage hint take several lines: keep
            // the paragraph that says what is wrong (a missing argument
            // is named on the line after the first).
            let text = e.to_string();
            let what: Vec<&str> = text
                .lines()
                .skip_while(|l| l.trim().is_empty())
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!(
                "broker-client: {} (see --help)",
                one_line(what.join(" ").trim_start_matches("error: "))
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
            let wallet = keys::wallet(&args.wallet.wallet_key)?;
            let chain = connect(g, Some(wallet)).await?;
            // A broker named directly needs no registry (as in the field
            // client).
            let registry = match args.requests_contract {
                Some(_) => None,
                None => Some(discovery::resolve(g, chain.chain_id()).await?),
            };
            request::request(g, args, &chain, registry).await
        }
        Command::Renew(args) => {
            let wallet = keys::wallet(&args.wallet.wallet_key)?;
            let chain = connect(g, Some(wallet)).await?;
            let registry = discovery::named_or_known(g, chain.chain_id())?;
            request::renew(g, args, &chain, registry.map(|r| r.address)).await
        }
        Command::Status(args) => {
            // The chain is read when it was configured or an on-chain
            // lookup was asked for; the defaults alone contact nothing.
            let (_, source) = g.rpc_url();
            let chain = if source != Source::Default || args.requests_contract.is_some() {
                Some(connect(g, None).await?)
            } else {
                None
            };
            status::status(g, args, chain.as_ref()).await
        }
        Command::ListBrokers(args) => {
            let chain = connect(g, None).await?;
            let registry = discovery::resolve(g, chain.chain_id()).await?;
            eprintln!("brokers of {}", registry.describe());
            let brokers = registry::list(&chain, registry.address).await?;
            discovery::remember(&g.config_dir, chain.chain_id(), &registry);
            if args.json {
                println!("{}", serde_json::to_string(&brokers)?);
            } else {
                print!("{}", registry::table(&brokers));
            }
            Ok(())
        }
        Command::Configure(args) => install::configure(g, args).await,
        Command::Install(args) => install::install(g, args).await,
        Command::Release(args) => {
            let wallet = keys::wallet(&args.wallet.wallet_key)?;
            let chain = connect(g, Some(wallet)).await?;
            release::release(g, args, &chain).await
        }
    }
}

async fn connect(g: &Global, wallet: Option<PrivateKeySigner>) -> anyhow::Result<Connection> {
    let (url, _) = g.rpc_url();
    let (chain_id, _) = g.chain_id()?;
    Ok(Connection::connect(&url, chain_id, wallet, ChainOptions::default()).await?)
}
