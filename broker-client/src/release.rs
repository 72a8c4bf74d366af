//! `release`: give the allocation back. On chain first (the NFT contract's
//! owner calls `releaseOwnAllocation` on the broker's requests contract, and
//! the broker frees the prefix when it sees `AllocationReleased`), then the
//! local files, and with --cleanup-wg the tunnel.

use alloy::primitives::Address;
use broker_contracts::{
    BrokerRequests,
    chain::{ChainError, Connection},
    error_text::one_line,
};
use serde_json::json;

use crate::{
    cli::{Global, ReleaseArgs},
    discovery,
    files::{self, parse_address},
    install, registry,
};

/// The contract's answer when the NFT contract has no current request.
const NOTHING_TO_RELEASE: &str = "No allocation for this NFT contract";

pub async fn release(
    global: &Global,
    args: &ReleaseArgs,
    chain: &Connection,
) -> anyhow::Result<()> {
    let config_dir = &global.config_dir;
    let allocation = files::read_allocation(config_dir)?;
    let contract = files::read_contract(config_dir)?;
    let nft = match (args.nft_contract, &allocation) {
        (Some(nft), _) => nft,
        (None, Some(a)) => parse_address("nft_contract in the allocation file", &a.nft_contract)?,
        (None, None) => anyhow::bail!(
            "no allocation: {} does not exist (give --nft-contract to release on chain anyway)",
            files::allocation_path(config_dir).display()
        ),
    };
    let requests = match (args.requests_contract, &contract) {
        (Some(r), _) => r,
        (None, Some(c)) => parse_address(
            "requests_contract in broker-contract.json",
            &c.requests_contract,
        )?,
        (None, None) => find_broker(global, chain, nft).await?,
    };
    let released = match release_on_chain(chain, requests, nft).await {
        Ok(released) => released,
        Err(e) if args.force => {
            eprintln!(
                "warning: the release on chain failed ({}); cleaning up locally (--force)",
                one_line(&format!("{e:#}"))
            );
            false
        }
        Err(e) => {
            return Err(
                e.context("releasing on chain (--force cleans up locally even when this fails)")
            );
        }
    };
    if files::remove(&files::allocation_path(config_dir))? {
        eprintln!("removed {}", files::allocation_path(config_dir).display());
    }
    if args.cleanup_wg {
        install::remove(&args.tunnel)?;
    }
    println!(
        "{}",
        json!({
            "released": released,
            "prefix": allocation.as_ref().map(|a| a.prefix.clone()),
            "request_id": allocation.as_ref().map(|a| a.request_id),
            "requests_contract": requests.to_string(),
            "tunnel_removed": args.cleanup_wg,
        })
    );
    Ok(())
}

/// The registry broker whose requests contract holds a request of `nft`
/// (the field client's search when neither --requests-contract nor
/// broker-contract.json says).
async fn find_broker(global: &Global, chain: &Connection, nft: Address) -> anyhow::Result<Address> {
    let registry = discovery::resolve(global, chain.chain_id()).await?;
    eprintln!(
        "looking for the broker holding {nft}'s request in {}",
        registry.describe()
    );
    for broker in registry::list(chain, registry.address).await? {
        let contract = BrokerRequests::new(broker.requests_contract, chain.provider());
        if let Ok(id) = chain
            .view(
                "nftContractToRequestId",
                contract.nftContractToRequestId(nft).call(),
            )
            .await
            && !id.is_zero()
        {
            eprintln!("found request {id} at broker #{}", broker.id);
            return Ok(broker.requests_contract);
        }
    }
    anyhow::bail!("no broker of the registry holds a request of {nft} (give --requests-contract)")
}

/// True when this call released it; false when the chain had nothing to
/// release any more (released before, expired, or answered elsewhere).
async fn release_on_chain(
    chain: &Connection,
    requests: Address,
    nft: Address,
) -> anyhow::Result<bool> {
    let contract = BrokerRequests::new(requests, chain.provider());
    let tx = contract
        .releaseOwnAllocation(nft)
        .into_transaction_request();
    match chain.transact("releaseOwnAllocation", tx).await {
        Ok(receipt) => {
            eprintln!(
                "released the allocation of {nft} at {requests} (transaction {})",
                receipt.transaction_hash
            );
            Ok(true)
        }
        Err(e @ ChainError::Reverted { .. })
            if e.revert_reason()
                .is_some_and(|r| r.contains(NOTHING_TO_RELEASE)) =>
        {
            eprintln!("note: nothing to release on chain ({e}); cleaning up locally");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}
