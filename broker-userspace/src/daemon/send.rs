//! The daemon's transactions (answers, on-chain releases): signed here,
//! written down, then broadcast, so whatever happens after the broadcast
//! (a crash, a receipt that does not come) later polls follow that
//! transaction up at its nonce instead of sending another.

use broker_contracts::chain::{Fees, Prepared, Signed};

use super::Daemon;
use crate::store::{StoreError, requests::SentTx};

impl Daemon {
    /// Signs `prepared` at the next nonce, or at `replacing`'s nonce with
    /// fees high enough to replace it; `record` writes the transaction down
    /// before it is broadcast. A failed broadcast leaves it recorded: the
    /// next poll finds it dropped and sends it again at the same nonce.
    pub(super) async fn sign_record_send(
        &self,
        call: &str,
        prepared: Prepared,
        replacing: Option<&SentTx>,
        record: impl FnOnce(SentTx) -> Result<(), StoreError>,
    ) -> anyhow::Result<Signed> {
        let _sending = self.chain.lock_sends().await;
        let (nonce, prepared) = match replacing {
            Some(old) => {
                let old_fees = Fees::Eip1559 {
                    max_fee_per_gas: old.max_fee_per_gas,
                    max_priority_fee_per_gas: old.max_priority_fee_per_gas,
                };
                let fees = old_fees.replacing(prepared.cost.fees);
                (old.nonce, prepared.with_fees(fees))
            }
            None => (self.chain.pending_nonce(call).await?, prepared),
        };
        let signed = self.chain.sign(call, &prepared, nonce).await?;
        let fees = signed.cost.fees;
        record(SentTx {
            tx: signed.hash,
            nonce,
            max_fee_per_gas: fees.max_fee_per_gas(),
            max_priority_fee_per_gas: fees.priority_fee_per_gas(),
        })?;
        self.chain.broadcast(call, &signed).await?;
        Ok(signed)
    }
}
