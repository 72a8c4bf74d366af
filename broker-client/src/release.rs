//! `release`: give the allocation back. On chain first (the NFT contract's
//! owner calls `releaseOwnAllocation` on the broker's requests contract, and
//! the broker frees the prefix when it sees `AllocationReleased`), then the
//! local files, and with --cleanup-wg the tunnel.

use alloy::primitives::Address;
use broker_contracts::{
    BrokerRequests,
    chain::{ChainError, Connection},
};
use serde_json::json;

use crate::{
    cli::{Global, ReleaseArgs},
    files::{self, parse_address},
    install,
    request::current,
};

/// The contract's answer when the NFT contract has no current request.
const NOTHING_TO_RELEASE: &str = "No allocation for this NFT contract";

pub async fn release(
    global: &Global,
    args: &ReleaseArgs,
    chain: &Connection,
) -> anyhow::Result<()> {
    let config_dir = &global.config_dir;
    let (allocation, contract) = current(config_dir)?;
    let nft = parse_address(
        "nft_contract in the allocation file",
        &allocation.nft_contract,
    )?;
    let requests = parse_address(
        "requests_contract in broker-contract.json",
        &contract.requests_contract,
    )?;
    let released = release_on_chain(chain, requests, nft).await?;
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
            "prefix": allocation.prefix,
            "request_id": allocation.request_id,
            "requests_contract": contract.requests_contract,
            "tunnel_removed": args.cleanup_wg,
        })
    );
    Ok(())
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
