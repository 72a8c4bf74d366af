//! The daemon's side of the operator's surface (`crate::operator`): the
//! snapshot it publishes after every poll, and the commands it executes
//! between polls — inside its own loop, so that a release never races the
//! daemon's own transactions for the operator key's nonce.

use std::time::Duration;

use ipnet::Ipv6Net;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::Daemon;
use crate::chain::ChainError;
use crate::{
    operator::{
        Command, OnChainRelease, Publisher, Released, Snapshot, TokenChange, control,
        release::slot_of,
        status::{ChainStatus, DaemonCounters, LastPoll, WalletStatus},
    },
    store::now,
};

/// The longest the chain reads of a snapshot may take.
const CHAIN_READS: Duration = Duration::from_secs(3);
/// How often a pause looks at the stop flag.
const STEP: Duration = Duration::from_millis(100);

/// The kind of chain error behind `e` (`other` when none is).
fn error_kind(e: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut source = Some(e);
    while let Some(e) = source {
        if let Some(chain) = e.downcast_ref::<ChainError>() {
            return match chain {
                ChainError::Transient { .. } => "transient",
                ChainError::Reverted { .. } => "reverted",
                ChainError::BadData { .. } => "bad_data",
                ChainError::Config(_) => "config",
                ChainError::WrongChain { .. } => "wrong_chain",
            };
        }
        source = e.source();
    }
    "other"
}

impl Daemon {
    /// The figures as of now: the database, the kernel's peers, the chain
    /// head and the operator's balance (three RPC calls).
    pub(super) async fn snapshot(&self) -> Option<Snapshot> {
        let peers = self
            .kernel
            .tunnel
            .peers()
            .map_err(|e| warn!("status: reading the WireGuard peers: {e}"))
            .ok();
        let mut snapshot =
            match Snapshot::from_store(&self.config, &self.store, peers.as_deref(), now()) {
                Ok(snapshot) => snapshot,
                Err(e) => {
                    warn!("status: reading the database: {e}");
                    return None;
                }
            };
        let status = &mut snapshot.status;
        status.daemon = true;
        status.last_poll = self.last_poll.clone();
        status.counters = Some(DaemonCounters {
            gas_spent_wei: self.chain.gas_spent_wei(),
            ..self.counters.clone()
        });
        if self.stopping() {
            return Some(snapshot);
        }
        // Both at once, and briefly: a slow endpoint must not hold up the
        // loop (its trouble shows as the poll's error).
        let chain_reads =
            async { tokio::join!(self.chain.latest_block(), self.chain.operator_balance()) };
        let Ok((head, balance)) = tokio::time::timeout(CHAIN_READS, chain_reads).await else {
            debug!("status: no chain head or balance within {CHAIN_READS:?}");
            return Some(snapshot);
        };
        match (head, &self.confirmed) {
            (Ok(head), Some(confirmed)) => status.chain = Some(ChainStatus::new(&head, confirmed)),
            (Err(e), _) => debug!("status: reading the chain head: {e}"),
            (Ok(_), None) => {}
        }
        match balance {
            Ok(balance) => {
                let low = self.config.onchain.low_balance_wei;
                status.wallet = Some(WalletStatus::new(self.chain.operator(), balance, low));
            }
            Err(e) => debug!("status: reading the operator's balance: {e}"),
        }
        Some(snapshot)
    }

    /// Records how the poll that just ended went.
    pub(super) fn poll_ended(&mut self, result: &anyhow::Result<()>) {
        let finished_at = now();
        match result {
            Ok(()) => self.counters.last_poll_success_at = Some(finished_at),
            Err(e) => self.count_chain_error(e.as_ref()),
        }
        self.last_poll = Some(LastPoll {
            finished_at,
            error: result.as_ref().err().map(|e| format!("{e:#}")),
        });
    }

    /// Counts a failed poll or upkeep step by the kind of chain error
    /// behind it (`blockhost_broker_chain_errors_total`).
    pub(super) fn count_chain_error(&mut self, e: &(dyn std::error::Error + 'static)) {
        *self
            .counters
            .poll_errors
            .entry(error_kind(e).into())
            .or_default() += 1;
    }

    /// Publishes the figures as of now (kept as they were when the database
    /// cannot be read).
    pub(super) async fn publish(&self, publisher: &Publisher) {
        let Some(snapshot) = self.snapshot().await else {
            return;
        };
        // Said once, when the balance falls below the threshold.
        let was_low = publisher.current().status.wallet.is_some_and(|w| w.low);
        if let Some(w) = snapshot.status.wallet.filter(|w| w.low && !was_low) {
            warn!(
                balance = %w.balance_wei,
                threshold = %w.low_balance_wei,
                "the operator wallet is low on funds (wei): answers and releases may soon fail"
            );
        }
        publisher.publish(snapshot);
    }

    /// Waits `pause` (less when asked to stop), executing the commands that
    /// come meanwhile.
    pub(super) async fn pause_serving(&mut self, pause: Duration, publisher: &mut Publisher) {
        let end = Instant::now() + pause;
        while !self.stopping() && Instant::now() < end {
            self.systemd.ping_if_due();
            self.kernel.follow_upstream_mac();
            let step = STEP.min(end - Instant::now());
            tokio::select! {
                () = tokio::time::sleep(step) => {}
                Some(command) = publisher.commands.recv() => {
                    self.execute(command, publisher).await;
                }
            }
        }
    }

    async fn execute(&mut self, command: Command, publisher: &Publisher) {
        match command {
            Command::Token { change, reply } => {
                let result = self.change_token(change, publisher);
                match &result {
                    Ok(()) => info!("API tokens changed"),
                    Err(e) => warn!("API token change refused: {e}"),
                }
                let _ = reply.send(result);
            }
            Command::Release { prefix, reply } => {
                let result = self.release_for_operator(prefix).await;
                match &result {
                    Ok(released) => {
                        info!(%prefix, on_chain = %released.on_chain, "released for the operator")
                    }
                    Err(e) => warn!(%prefix, "release for the operator failed: {e}"),
                }
                // Published before the reply: a `status` right after the
                // release shows it.
                self.publish(publisher).await;
                // The asker may be gone: the release is done all the same.
                let _ = reply.send(result);
            }
        }
    }

    /// Stores `change` and publishes the tokens it leaves, before the
    /// reply: a revoked token is refused from the next request on.
    fn change_token(&self, change: TokenChange, publisher: &Publisher) -> Result<(), String> {
        let done = match &change {
            TokenChange::Create(token) => self.store.create_token(token),
            TokenChange::Revoke { name } => self.store.revoke_token(name),
        }
        .map_err(|e| e.to_string())?;
        if !done {
            return Err(match change {
                TokenChange::Create(token) => format!("a token named {:?} exists", token.name),
                TokenChange::Revoke { name } => format!("no token is named {name:?}"),
            });
        }
        let tokens = self.store.tokens().map_err(|e| e.to_string())?;
        publisher.publish_tokens(tokens);
        Ok(())
    }

    /// The path of a tunnel that never came up: database (the on-chain
    /// release owed in the same transaction), kernel, then the owed
    /// releases sent.
    async fn release_for_operator(&mut self, prefix: Ipv6Net) -> Result<Released, String> {
        let slot = slot_of(&self.config.broker.pool, prefix).map_err(|e| e.to_string())?;
        let allocation = self
            .store
            .allocation(slot)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| control::unknown(prefix))?;
        let removed = self
            .release(&allocation, "released by the operator", true)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let on_chain = if allocation.contract == self.contracts[0] {
            self.send_owed_releases()
                .await
                .into_iter()
                .find(|(owed, _)| {
                    owed.contract == allocation.contract && owed.nft == allocation.nft
                })
                .map_or_else(
                    || OnChainRelease::Deferred {
                        reason: "the owed release could not be read".into(),
                    },
                    |(_, outcome)| outcome,
                )
        } else {
            OnChainRelease::NotOwed
        };
        Ok(Released {
            prefix,
            nft_contract: allocation.nft,
            contract: allocation.contract,
            request_id: allocation.request_id,
            peer_removed: removed.peer,
            route_removed: removed.route,
            ndp_entry_removed: removed.ndp_entry,
            on_chain,
        })
    }
}
