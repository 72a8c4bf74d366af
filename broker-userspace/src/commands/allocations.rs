//! `blockhost-broker allocations list|show|release`: the allocations as the
//! daemon sees them (or the database alone when no daemon runs), and
//! releasing one through the daemon.

use std::{process::ExitCode, time::Duration};

use broker_userspace::{
    config::Config,
    operator::{
        AllocationView, PeerState, Reader, Released,
        control::{self, AskError, Request},
        release::slot_of,
    },
};
use clap::Subcommand;
use ipnet::Ipv6Net;

use super::status::{CommonArgs, ago, ask_or_read, utc};

/// How long a release waits for the daemon: the poll in progress may wait
/// for a receipt, and so may the release's own transaction.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(clap::Args)]
pub struct AllocationsArgs {
    #[command(subcommand)]
    command: AllocationsCommand,
}

#[derive(Subcommand)]
enum AllocationsCommand {
    /// Every allocation: prefix, state of its WireGuard peer, last
    /// handshake, the client's endpoint, when it was allocated, NFT
    /// contract, request, key.
    List {
        #[command(flatten)]
        common: CommonArgs,
        /// Only those whose peer is in this state (active: a handshake
        /// within 3 minutes; idle: an older one; never: none). Needs the
        /// daemon.
        #[arg(long, value_enum)]
        state: Option<PeerState>,
    },
    /// One allocation, by its prefix. Exits 1 when no allocation has it.
    Show {
        #[command(flatten)]
        common: CommonArgs,
        prefix: Ipv6Net,
    },
    /// Release an allocation through the daemon: its WireGuard peer, route
    /// and NDP entry go, its prefix returns to the pool, and its request's
    /// allocation is released on chain (`releaseAllocation`), exactly once
    /// even if the daemon stops midway. Needs the daemon.
    Release {
        #[command(flatten)]
        common: CommonArgs,
        prefix: Ipv6Net,
    },
}

pub fn run(args: AllocationsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        AllocationsCommand::List { common, state } => list(&common, state),
        AllocationsCommand::Show { common, prefix } => show(&common, prefix),
        AllocationsCommand::Release { common, prefix } => release(&common, prefix),
    }
}

fn list(common: &CommonArgs, state: Option<PeerState>) -> anyhow::Result<ExitCode> {
    let config = common.load()?;
    let mut all: Vec<AllocationView> = ask_or_read(&config, &Request::Allocations, || {
        Ok(Ok(Reader::offline(&config)?.all()?))
    })?;
    if let Some(wanted) = state {
        if all.iter().any(|a| a.state.is_none()) {
            anyhow::bail!(
                "--state needs the daemon (the peers' handshakes come from the kernel), and none runs"
            );
        }
        all.retain(|a| a.state == Some(wanted));
    }
    if common.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![
        [
            "PREFIX",
            "STATE",
            "LAST HANDSHAKE",
            "ENDPOINT",
            "ALLOCATED",
            "NFT CONTRACT",
            "REQUEST",
            "CONTRACT",
            "WIREGUARD KEY",
        ]
        .map(String::from),
    ];
    for a in &all {
        rows.push([
            a.prefix.to_string(),
            state_text(a),
            a.last_handshake.map_or("-".into(), ago),
            endpoint_text(a),
            utc(a.allocated_at),
            a.nft_contract.to_string(),
            a.request_id.to_string(),
            a.contract.to_string(),
            a.wireguard_key.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

fn state_text(a: &AllocationView) -> String {
    a.state.map_or("unknown".into(), |s| s.to_string())
}

/// "-" before the client sent anything (or without the daemon).
fn endpoint_text(a: &AllocationView) -> String {
    a.endpoint.map_or("-".into(), |e| e.to_string())
}

fn show(common: &CommonArgs, prefix: Ipv6Net) -> anyhow::Result<ExitCode> {
    let config = common.load()?;
    check_prefix(&config, prefix)?;
    let request = Request::Allocation { prefix };
    let a: AllocationView = ask_or_read(&config, &request, || {
        let found = Reader::offline(&config)?.one(prefix)?;
        Ok(found.ok_or_else(|| anyhow::anyhow!(control::unknown(prefix))))
    })?;
    if common.json {
        println!("{}", serde_json::to_string_pretty(&a)?);
        return Ok(ExitCode::SUCCESS);
    }
    let when = |t: Option<u64>| t.map_or("-".into(), |t| format!("{} ({})", utc(t), ago(t)));
    for (label, value) in [
        ("prefix", a.prefix.to_string()),
        ("state", state_text(&a)),
        ("last handshake", when(a.last_handshake)),
        ("endpoint", endpoint_text(&a)),
        ("allocated", when(Some(a.allocated_at))),
        ("answered", when(a.answered_at)),
        ("NFT contract", a.nft_contract.to_string()),
        ("request", format!("{} of {}", a.request_id, a.contract)),
        ("WireGuard key", a.wireguard_key.clone()),
    ] {
        println!("{label:<15} {value}");
    }
    Ok(ExitCode::SUCCESS)
}

fn release(common: &CommonArgs, prefix: Ipv6Net) -> anyhow::Result<ExitCode> {
    let config = common.load()?;
    check_prefix(&config, prefix)?;
    let socket = control::socket_path(&config);
    let released: Released = match control::ask(
        &socket,
        &Request::Release { prefix },
        RELEASE_TIMEOUT,
    ) {
        Err(AskError::NoDaemon { path }) => anyhow::bail!(
            "no daemon answers on {}: a release goes through the running daemon (start it, then retry)",
            path.display()
        ),
        other => other?,
    };
    if common.json {
        println!("{}", serde_json::to_string_pretty(&released)?);
        return Ok(ExitCode::SUCCESS);
    }
    let r = &released;
    println!(
        "released {} (NFT contract {}, request {} of {})",
        r.prefix, r.nft_contract, r.request_id, r.contract
    );
    let gone: Vec<&str> = [
        (r.peer_removed, "WireGuard peer"),
        (r.route_removed, "route"),
        (r.ndp_entry_removed, "NDP entry"),
    ]
    .iter()
    .filter_map(|(removed, what)| removed.then_some(*what))
    .collect();
    let kernel = if gone.is_empty() {
        "nothing was left to remove".to_string()
    } else {
        format!("{} removed", gone.join(", "))
    };
    println!("  kernel:   {kernel}");
    println!("  on chain: {}", r.on_chain);
    Ok(ExitCode::SUCCESS)
}

/// Refuses, before asking anyone, a prefix no allocation can have.
fn check_prefix(config: &Config, prefix: Ipv6Net) -> anyhow::Result<()> {
    slot_of(&config.broker.pool, prefix)?;
    Ok(())
}
