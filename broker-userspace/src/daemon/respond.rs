//! Answering a request whose prefix is set up: never twice (the chain is
//! asked first, and the contract refuses a second answer anyway), and an
//! answered allocation is on disk before anything else happens.

use alloy::primitives::Address;
use broker_contracts::protocol::{self, ResponsePayload};
use tracing::{info, warn};

use super::{Daemon, crash_point};
use crate::db::{
    allocations,
    audit::{self, Event},
    now,
    requests::{self, Stage},
};

impl Daemon {
    pub(super) async fn respond(
        &mut self,
        contract: Address,
        id: u64,
        slot: u128,
        server_pubkey: &str,
    ) -> anyhow::Result<()> {
        let allocation = allocations::get(&self.db.write()?, slot)?;
        let Some(allocation) = allocation.filter(|a| a.contract == contract && a.request_id == id)
        else {
            // Released, or taken over by a newer request of the same NFT.
            let t = self.db.write()?;
            requests::set(
                &t,
                contract,
                id,
                Stage::Skipped {
                    reason: "its allocation changed before the answer".into(),
                },
            )?;
            t.commit()?;
            return Ok(());
        };
        // The kernel may be behind after a crash: idempotent.
        self.kernel.apply(&allocation, None).await?;

        if self.chain.response_on_chain(contract, id).await?.is_some() {
            info!(%contract, id, "already answered on chain (an earlier run sent it)");
            return self.answered(contract, id, slot, "found on chain");
        }
        let mut server = [0u8; 65];
        hex::decode_to_slice(server_pubkey, &mut server)?;
        let payload = ResponsePayload {
            prefix: allocation.prefix.to_string(),
            gateway: self.config.broker.pool.broker_address().to_string(),
            broker_pubkey: self.kernel.tunnel.public_key().to_base64(),
            broker_endpoint: self.config.wireguard.endpoint.clone(),
            dns_zone: self.config.broker.dns_zone.clone(),
        };
        let ciphertext = protocol::encrypt(&server, payload.to_json().as_bytes())?;
        let framed = protocol::frame_response(id, &ciphertext);
        match self.chain.submit_response(contract, id, framed).await {
            Ok(tx) => {
                crash_point!("before-answered");
                info!(%contract, id, %tx, prefix = %allocation.prefix, "answered");
                self.answered(contract, id, slot, &tx.to_string())
            }
            Err(e) if e.is_reverted() => {
                if self.chain.response_on_chain(contract, id).await?.is_some() {
                    return self.answered(contract, id, slot, "found on chain");
                }
                // No longer answerable (expired or superseded meanwhile).
                // The prefix stays with its NFT, but goes back to the pool
                // unless a tunnel comes up with the current key in time.
                warn!(%contract, id, "the answer was refused: {e}");
                let t = self.db.write()?;
                let mut a = allocation;
                a.handshake_deadline = Some(now() + self.config.wireguard.handshake_timeout_secs);
                allocations::update(&t, &a)?;
                requests::set(
                    &t,
                    contract,
                    id,
                    Stage::Skipped {
                        reason: format!("answer refused on chain: {e}"),
                    },
                )?;
                t.commit()?;
                Ok(())
            }
            // Transient: the request stays Allocated and is resumed next poll.
            Err(e) => Err(e.into()),
        }
    }

    fn answered(&mut self, contract: Address, id: u64, slot: u128, tx: &str) -> anyhow::Result<()> {
        let t = self.db.write()?;
        if let Some(mut a) = allocations::get(&t, slot)? {
            a.answered_at = Some(now());
            a.handshake_deadline = Some(now() + self.config.wireguard.handshake_timeout_secs);
            allocations::update(&t, &a)?;
        }
        requests::set(
            &t,
            contract,
            id,
            Stage::Answered {
                slot,
                transaction: tx.to_string(),
            },
        )?;
        audit::record(
            &t,
            Event::Answered {
                contract: contract.to_string(),
                request_id: id,
                transaction: tx.to_string(),
            },
        )?;
        t.commit()?;
        Ok(())
    }
}
