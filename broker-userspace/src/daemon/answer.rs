//! Setting up a granted prefix and answering its request: never twice (the
//! chain is asked first, and the contract refuses a second answer anyway),
//! and an answered allocation is on disk before anything else happens.
//! A failure here never holds up the requests behind it: the request stays
//! `Allocated`, and the next poll resumes it.

use alloy::primitives::Address;
use broker_contracts::protocol::{self, ResponsePayload};
use tracing::{info, warn};

use super::{Daemon, crash_point};
use crate::store::{allocations::Allocation, requests::Grant};

impl Daemon {
    /// Sets `grant` up in the kernel, then answers request `id` with it.
    pub(super) async fn apply_and_answer(&mut self, contract: Address, id: u64, grant: &Grant) {
        let done = match self.kernel.apply(&grant.allocation, grant.old_wg_key).await {
            Ok(()) => {
                crash_point!("after-kernel");
                self.answer(contract, id, &grant.allocation, &grant.server_pubkey)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            warn!(%contract, id, "answer deferred: {e:#}");
        }
    }

    /// Request `id`, left `Allocated` to `slot` by a failure or a crash:
    /// set up again (the kernel may be behind after a crash) and answered,
    /// unless its allocation changed meanwhile.
    pub(super) async fn resume_answer(
        &mut self,
        contract: Address,
        id: u64,
        slot: u128,
        server_pubkey: [u8; 65],
    ) -> anyhow::Result<()> {
        let allocation = self
            .store
            .allocation(slot)?
            .filter(|a| a.contract == contract && a.request_id == id);
        let Some(allocation) = allocation else {
            // Released, or taken over by a newer request of the same NFT.
            let reason = "its allocation changed before the answer".into();
            return Ok(self.store.skip(contract, id, reason)?);
        };
        let grant = Grant {
            allocation,
            old_wg_key: None,
            server_pubkey,
        };
        self.apply_and_answer(contract, id, &grant).await;
        Ok(())
    }

    async fn answer(
        &mut self,
        contract: Address,
        id: u64,
        allocation: &Allocation,
        server_pubkey: &[u8; 65],
    ) -> anyhow::Result<()> {
        let timeout = self.config.wireguard.handshake_timeout_secs;
        let slot = allocation.slot;
        if self.chain.response_on_chain(contract, id).await?.is_some() {
            info!(%contract, id, "already answered on chain (an earlier run sent it)");
            return Ok(self.store.answered(contract, id, slot, None, timeout)?);
        }
        let payload = ResponsePayload {
            prefix: allocation.prefix.to_string(),
            gateway: self.config.broker.pool.broker_address().to_string(),
            broker_pubkey: self.kernel.tunnel.public_key().to_base64(),
            broker_endpoint: self.config.wireguard.endpoint.clone(),
            dns_zone: self.config.broker.dns_zone.clone(),
        };
        let ciphertext = protocol::encrypt(server_pubkey, payload.to_json().as_bytes())?;
        let framed = protocol::frame_response(id, &ciphertext);
        match self.chain.submit_response(contract, id, framed).await {
            Ok(tx) => {
                crash_point!("before-answered");
                info!(%contract, id, %tx, prefix = %allocation.prefix, "answered");
                Ok(self.store.answered(contract, id, slot, Some(tx), timeout)?)
            }
            Err(e) if e.is_reverted() => {
                if self.chain.response_on_chain(contract, id).await?.is_some() {
                    return Ok(self.store.answered(contract, id, slot, None, timeout)?);
                }
                // No longer answerable (expired or superseded meanwhile).
                warn!(%contract, id, "the answer was refused: {e}");
                let reason = format!("answer refused on chain: {e}");
                Ok(self.store.refused(contract, id, slot, reason, timeout)?)
            }
            // Transient: the request stays Allocated and is resumed next poll.
            Err(e) => Err(e.into()),
        }
    }
}
