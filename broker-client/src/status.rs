//! `status`: the allocation as the files record it and, when a chain is
//! configured, what the chain says of its request.

use alloy::primitives::{Address, U256};
use broker_contracts::{BrokerRequests, chain::Connection};
use serde_json::{Value, json};

use crate::{
    cli::{Global, StatusArgs},
    files,
    files::parse_address,
    install,
};

const STATUS_NAMES: [&str; 4] = ["pending", "approved", "rejected", "expired"];

pub async fn status(
    global: &Global,
    args: &StatusArgs,
    chain: Option<&Connection>,
) -> anyhow::Result<()> {
    let config_dir = &global.config_dir;
    let allocation = files::read_allocation(config_dir)?;
    let contract = files::read_contract(config_dir)?;
    let mut out = json!({
        "allocation": Value::Null,
        "broker": contract.as_ref().map(|c| json!({
            "broker_id": c.broker_id,
            "requests_contract": c.requests_contract,
        })),
        "onchain": Value::Null,
    });
    if let Some(a) = &allocation {
        out["allocation"] = json!({
            "prefix": a.prefix,
            "gateway": a.gateway,
            "tunnel_address": install::tunnel_address(&a.prefix).map(|x| x.to_string()).ok(),
            "broker_endpoint": a.broker_endpoint,
            "broker_pubkey": a.broker_pubkey,
            "nft_contract": a.nft_contract,
            "request_id": a.request_id,
            "wg_public_key": a.wg_public_key,
            "allocated_at": a.allocated_at,
            "broker_wallet": a.broker_wallet,
            "dns_zone": a.dns_zone,
        });
    }
    if let (Some(chain), Some(a), Some(c)) = (chain, &allocation, &contract) {
        out["onchain"] = onchain(chain, a, c).await?;
    }
    if let (Some(chain), Some(nft), Some(requests)) =
        (chain, args.nft_contract, args.requests_contract)
    {
        out["lookup"] = lookup(chain, nft, requests).await?;
    }
    if args.json {
        println!("{out}");
        return Ok(());
    }
    match &allocation {
        None => println!(
            "no allocation ({} does not exist)",
            files::allocation_path(config_dir).display()
        ),
        Some(_) => {
            println!("allocation:");
            print_fields(&out["allocation"]);
        }
    }
    if let Some(b) = out.get("broker").filter(|b| !b.is_null()) {
        println!("broker:");
        print_fields(b);
    }
    if out["onchain"].is_null() {
        if allocation.is_some() && chain.is_none() {
            println!("on chain: not checked (no --rpc-url / BLOCKHOST_RPC_URL / ETH_RPC_URL)");
        }
    } else {
        println!("on chain:");
        print_fields(&out["onchain"]);
    }
    if let Some(l) = out.get("lookup") {
        println!("on chain, the NFT contract's current request:");
        print_fields(l);
    }
    Ok(())
}

fn print_fields(v: &Value) {
    if let Some(map) = v.as_object() {
        for (k, v) in map {
            let shown = match v {
                Value::String(s) => s.clone(),
                Value::Null => "-".into(),
                other => other.to_string(),
            };
            println!("  {k}: {shown}");
        }
    }
}

/// The field client's `status --nft-contract --requests-contract`: the
/// NFT contract's current request at that broker.
async fn lookup(chain: &Connection, nft: Address, requests: Address) -> anyhow::Result<Value> {
    let contract = BrokerRequests::new(requests, chain.provider());
    let current = chain
        .view(
            "nftContractToRequestId",
            contract.nftContractToRequestId(nft).call(),
        )
        .await?;
    let status = if current.is_zero() {
        Value::Null
    } else {
        let request = chain
            .view("getRequest", contract.getRequest(current).call())
            .await?;
        json!(
            STATUS_NAMES
                .get(usize::from(request.status))
                .copied()
                .unwrap_or("unknown")
        )
    };
    Ok(json!({
        "nft_contract": nft.to_string(),
        "requests_contract": requests.to_string(),
        "current_request_id": current.to_string(),
        "status": status,
    }))
}

async fn onchain(
    chain: &Connection,
    a: &files::Allocation,
    c: &files::BrokerContract,
) -> anyhow::Result<Value> {
    let requests = parse_address("requests_contract", &c.requests_contract)?;
    let nft = parse_address("nft_contract", &a.nft_contract)?;
    let contract = BrokerRequests::new(requests, chain.provider());
    let request = chain
        .view(
            "getRequest",
            contract.getRequest(U256::from(a.request_id)).call(),
        )
        .await?;
    let current = chain
        .view(
            "nftContractToRequestId",
            contract.nftContractToRequestId(nft).call(),
        )
        .await?;
    let status = request.status;
    Ok(json!({
        "request_id": a.request_id,
        "status": STATUS_NAMES.get(usize::from(status)).copied().unwrap_or("unknown"),
        "current_request_id": current.to_string(),
        "is_current": current == U256::from(a.request_id),
        "submitted_at": request.submittedAt.to_string(),
        "responded_at": request.respondedAt.to_string(),
    }))
}
