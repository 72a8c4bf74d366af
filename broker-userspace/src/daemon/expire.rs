//! Telling the chain at once that the requests rejected silently are over:
//! BrokerRequests lets its owner `markExpired` any pending request, so
//! throwaway NFT contracts cannot hold the broker's capacity for a whole
//! expiration time. One transaction per poll, broadcast and not waited for:
//! the call is idempotent (a request no longer pending is skipped), so one
//! that is dropped or sent twice after a crash costs a little gas at worst,
//! and a request it never reaches expires on its own.

use tracing::info;

use super::Daemon;
use crate::chain::expire_call;

/// Requests per `markExpired`: about 17,600 gas each, so a transaction
/// stays near 3.5 M gas, far below any block's limit.
const BATCH: usize = 200;

impl Daemon {
    pub(super) async fn expire_rejected(&mut self) -> anyhow::Result<()> {
        let owed = self.store.owed_expiries(BATCH)?;
        if owed.is_empty() {
            return Ok(());
        }
        let primary = self.config.onchain.requests_contract;
        // Legacy V1 contracts expire nothing before its deadline.
        let (ours, legacy): (Vec<_>, Vec<_>) = owed.into_iter().partition(|(c, _)| *c == primary);
        self.store.expiries_done(&legacy)?;
        if ours.is_empty() {
            return Ok(());
        }
        let ids: Vec<u64> = ours.iter().map(|&(_, id)| id).collect();
        let call = expire_call(primary, &ids);
        let prepared = self.chain.prepare_expire(primary, &ids).await?;
        let signed = self
            .sign_record_send(&call, prepared, None, |_| Ok(()))
            .await?;
        self.store.expiries_done(&ours)?;
        info!(
            requests = ids.len(),
            tx = %signed.hash,
            "rejected requests expired on chain: the capacity they held is free"
        );
        Ok(())
    }
}
