//! Reading one on-chain request and judging it, before any state changes:
//! still worth answering? valid? Nothing here writes anything.

use std::ops::RangeInclusive;

use alloy::primitives::Address;
use broker_contracts::protocol;
use futures::{StreamExt as _, stream};

use super::Daemon;
use crate::{
    chain::{BlockRef, Chain, ChainError, NftCheck, RequestStatus},
    store::requests::Verdict,
};

/// Requests read from the chain at once: a burst's reads overlap instead of
/// waiting for each other's round trips.
const EXAMINE_AT_ONCE: usize = 16;

impl Daemon {
    /// Reads request `id` of `contract` at `at` and judges it. A chain that
    /// cannot be reached leaves it [`Verdict::Unknown`] (retried later),
    /// data the chain returns but that cannot be read rejects it; only other
    /// chain errors are errors.
    pub(super) async fn examine(
        &self,
        contract: Address,
        id: u64,
        at: &BlockRef,
    ) -> Result<Verdict, ChainError> {
        match judge(&self.chain, contract, id, at, &self.ecies_secret).await {
            Err(e) if e.is_transient() => Ok(Verdict::Unknown("chain unreachable".into())),
            Err(ChainError::BadData { call, reason }) => Ok(Verdict::Reject(format!(
                "unreadable on chain: {call}: {reason}"
            ))),
            verdict => verdict,
        }
    }

    /// Requests `ids` of `contract` examined concurrently (a few at a
    /// time), in id order.
    pub(super) async fn examine_all(
        &self,
        contract: Address,
        ids: RangeInclusive<u64>,
        at: &BlockRef,
    ) -> Vec<(u64, Result<Verdict, ChainError>)> {
        stream::iter(ids)
            .map(|id| async move { (id, self.examine(contract, id, at).await) })
            .buffered(EXAMINE_AT_ONCE)
            .collect()
            .await
    }
}

async fn judge(
    chain: &Chain,
    contract: Address,
    id: u64,
    at: &BlockRef,
    ecies_secret: &[u8; 32],
) -> Result<Verdict, ChainError> {
    let request = chain.request(contract, id, at).await?;
    if request.status != RequestStatus::Pending {
        return Ok(Verdict::Skip(format!("status {:?}", request.status)));
    }
    let expiration = chain.expiration_time(contract, at).await?;
    if at.timestamp >= request.submitted_at.saturating_add(expiration) {
        return Ok(Verdict::Skip("expired".into()));
    }
    let current = chain
        .current_request_id(contract, request.nft_contract, at)
        .await?;
    if current != id {
        return Ok(Verdict::Skip(format!("superseded by request {current}")));
    }
    match chain
        .verify_nft(request.nft_contract, request.requester)
        .await?
    {
        NftCheck::Ok => {}
        other => return Ok(Verdict::Reject(format!("NFT contract: {other:?}"))),
    }
    let valid = match protocol::read_request(ecies_secret, &request.encrypted_payload) {
        Ok(v) => v,
        Err(e) => return Ok(Verdict::Reject(e.to_string())),
    };
    Ok(Verdict::Valid {
        nft: request.nft_contract,
        wg_key: valid.wg_pubkey,
        server_pubkey: valid.server_pubkey,
    })
}
