//! `blockhost-broker run`: on-chain requests in, working tunnels out.
//!
//! Each poll reads the chain at the confirmed block, resumes what a previous
//! poll (or a previous process) left unfinished, takes the next requests of
//! each watched contract in id order (a bounded number per poll), then does
//! the upkeep: owner releases, on-chain releases still owed, tunnels that
//! never completed a handshake. Every decision commits to the database
//! before the kernel or the chain is touched; the kernel follows the
//! database, and is made to match it at every start.

pub(crate) mod crash_points;
mod examine;
mod kernel;
mod respond;
mod upkeep;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use alloy::primitives::Address;
use anyhow::Context as _;
use broker_contracts::keys;
use tracing::{info, warn};

use crate::{
    chain::{BlockRef, Chain, ChainError},
    config::Config,
    db::{
        Db,
        allocations::{self, Decision},
        audit::{self, Event},
        cursors,
        requests::{self, Stage},
    },
    ndp::{Interface, Responder, ResponderOptions},
    tunnel::{Routes, Tunnel},
};
use crash_points::crash_point;
use examine::Verdict;
use kernel::Kernel;

/// Longest pause after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub struct Daemon {
    config: Config,
    db: Db,
    chain: Chain,
    kernel: Kernel,
    ecies_secret: [u8; 32],
    /// The primary requests contract first, then the legacy ones.
    contracts: Vec<Address>,
    stop: Arc<AtomicBool>,
}

/// Runs until SIGTERM or SIGINT (after finishing the request in hand).
pub async fn run(config: Config) -> anyhow::Result<()> {
    crash_points::setup();
    let stop = Arc::new(AtomicBool::new(false));
    spawn_signal_watch(stop.clone())?;
    let Some(mut daemon) = Daemon::start(config, stop.clone()).await? else {
        info!("stopping before the chain ever answered: tunnels and the NDP responder stay up");
        return Ok(());
    };
    let mut failures = 0u32;
    while !stop.load(Ordering::Relaxed) {
        match daemon.poll().await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                warn!("poll failed ({failures} in a row): {e:#}");
            }
        }
        let pause = pause_after(failures, daemon.config.onchain.poll_interval_secs);
        sleep_unless_stopped(pause, &stop).await;
    }
    info!("stopping: state is on disk, tunnels and the NDP responder stay up");
    Ok(())
}

fn pause_after(failures: u32, poll_interval: u64) -> Duration {
    let base = Duration::from_secs(poll_interval);
    if failures == 0 {
        return base;
    }
    (base * 2u32.saturating_pow(failures.min(10))).min(MAX_BACKOFF)
}

async fn sleep_unless_stopped(pause: Duration, stop: &AtomicBool) {
    let step = Duration::from_millis(100);
    let mut slept = Duration::ZERO;
    while slept < pause && !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(step).await;
        slept += step;
    }
}

fn spawn_signal_watch(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: finishing the request in hand"),
            _ = int.recv() => info!("SIGINT: finishing the request in hand"),
        }
        stop.store(true, Ordering::Relaxed);
    });
    Ok(())
}

impl Daemon {
    /// Sets up the kernel side, then connects to the chain, retrying while
    /// it is unreachable: None when asked to stop meanwhile.
    async fn start(config: Config, stop: Arc<AtomicBool>) -> anyhow::Result<Option<Daemon>> {
        let ecies_secret = keys::read_secret(&config.onchain.ecies_key_file)?;
        let operator = keys::read_signer(&config.onchain.operator_key_file)?;
        let wg_text = std::fs::read_to_string(&config.wireguard.private_key_file)
            .with_context(|| format!("reading {}", config.wireguard.private_key_file.display()))?;
        let wg_key = wireguard_control::Key::from_base64(wg_text.trim()).map_err(|_| {
            anyhow::anyhow!(
                "{}: not a WireGuard key",
                config.wireguard.private_key_file.display()
            )
        })?;

        let db = Db::open(&config.database_path, config.broker.pool)?;
        let gateway = config.broker.pool.broker_address();
        let tunnel = Tunnel::open(&config.wireguard, &wg_key, gateway).await?;
        let routes = Routes::new().await?;
        let upstream = Interface::by_name(&config.broker.upstream_interface)?;
        let mut ndp = Responder::load(&crate::ndp::PinDir::new(&config.broker.ndp_pin_dir))?;
        let mode = ndp.attach(
            &upstream,
            config.broker.ndp_mode,
            ResponderOptions {
                router: config.broker.ndp_router_flag,
            },
        )?;
        info!(interface = %upstream.name, %mode, "NDP responder attached");
        let mut kernel = Kernel {
            tunnel,
            routes,
            ndp,
        };
        let all = allocations::all(&db.read()?)?;
        let summary = kernel.reconcile(&all).await?;
        info!("kernel reconciled with the database: {summary}");

        let chain = loop {
            match Chain::connect(&config.onchain, operator.clone()).await {
                Ok(chain) => break chain.stop_on(stop.clone()),
                Err(e) if e.is_transient() => {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(None);
                    }
                    warn!("chain unreachable, retrying: {e}");
                    sleep_unless_stopped(
                        Duration::from_secs(config.onchain.poll_interval_secs),
                        &stop,
                    )
                    .await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let mut contracts = vec![config.onchain.requests_contract];
        contracts.extend(&config.onchain.legacy_requests_contracts);
        let daemon = Daemon {
            config,
            db,
            chain,
            kernel,
            ecies_secret,
            contracts,
            stop,
        };
        daemon.sync_capacity().await;
        Ok(Some(daemon))
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// On-chain capacity = the pool's slots (the broker's own excepted).
    async fn sync_capacity(&self) {
        let slots = self.config.broker.pool.slots() - 1;
        let capacity = u64::try_from(slots).unwrap_or(u64::MAX);
        match self
            .chain
            .sync_total_capacity(self.contracts[0], capacity)
            .await
        {
            Ok(Some(tx)) => info!(%tx, capacity, "set totalCapacity on chain"),
            Ok(None) => {}
            Err(e) => warn!("could not sync totalCapacity (retried at next start): {e}"),
        }
    }

    async fn poll(&mut self) -> anyhow::Result<()> {
        let at = self.chain.safe_block().await?;
        self.resume_unfinished(&at).await?;
        for contract in self.contracts.clone() {
            if self.stopping() {
                return Ok(());
            }
            self.take_new_requests(contract, &at).await?;
        }
        if !self.stopping() {
            self.upkeep(&at).await?;
        }
        Ok(())
    }

    async fn take_new_requests(&mut self, contract: Address, at: &BlockRef) -> anyhow::Result<()> {
        let count = self.chain.request_count(contract, at).await?;
        let start = self.config.onchain.start_request_id;
        let next = {
            let t = self.db.write()?;
            cursors::next_request(&t, contract, start)?
        };
        let last = count.min(next.saturating_add(self.config.onchain.max_requests_per_poll - 1));
        for id in next..=last {
            if self.stopping() {
                break;
            }
            self.handle(contract, id, at, true).await?;
        }
        Ok(())
    }

    async fn resume_unfinished(&mut self, at: &BlockRef) -> anyhow::Result<()> {
        let unfinished = requests::unfinished(&self.db.write()?)?;
        for record in unfinished {
            if self.stopping() {
                break;
            }
            match record.stage {
                Stage::Allocated {
                    slot,
                    server_pubkey,
                } => {
                    // A failure here must not hold up the requests behind
                    // it: the request stays Allocated and comes back next poll.
                    if let Err(e) = self
                        .respond(record.contract, record.id, slot, &server_pubkey)
                        .await
                    {
                        warn!(contract = %record.contract, id = record.id, "answer deferred: {e:#}");
                    }
                }
                Stage::Retry { next_at, .. } if next_at <= crate::db::now() => {
                    self.handle(record.contract, record.id, at, false).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Judges request `id`, records the decision (advancing the cursor when
    /// `advance`), then sets up and answers a valid one.
    async fn handle(
        &mut self,
        contract: Address,
        id: u64,
        at: &BlockRef,
        advance: bool,
    ) -> anyhow::Result<()> {
        let verdict =
            match examine::examine(&self.chain, contract, id, at, &self.ecies_secret).await {
                Ok(v) => Some(v),
                Err(e) if e.is_transient() => None,
                Err(ChainError::BadData { call, reason }) => Some(Verdict::Reject(format!(
                    "unreadable on chain: {call}: {reason}"
                ))),
                Err(e) => return Err(e.into()),
            };
        let t = self.db.write()?;
        if requests::get(&t, contract, id)?.is_some_and(|r| r.stage.is_finished()) {
            return Ok(());
        }
        let mut setup = None;
        let stage = match verdict {
            None => retry_stage(
                requests::get(&t, contract, id)?.map(|r| r.stage),
                "chain unreachable",
            ),
            Some(Verdict::Skip(reason)) => Stage::Skipped { reason },
            Some(Verdict::Reject(reason)) => reject(&t, contract, id, reason)?,
            Some(Verdict::Valid { request, valid }) => {
                let pool = *self.db.pool();
                match allocations::allocate(
                    &t,
                    &pool,
                    contract,
                    id,
                    request.nft_contract,
                    valid.wg_pubkey,
                )? {
                    Decision::New(a) => {
                        let slot = a.slot;
                        setup = Some((a, None, valid.server_pubkey));
                        Stage::Allocated {
                            slot,
                            server_pubkey: hex::encode(valid.server_pubkey),
                        }
                    }
                    Decision::Rotated {
                        allocation,
                        old_wg_key,
                    } => {
                        let slot = allocation.slot;
                        setup = Some((allocation, Some(old_wg_key), valid.server_pubkey));
                        Stage::Allocated {
                            slot,
                            server_pubkey: hex::encode(valid.server_pubkey),
                        }
                    }
                    Decision::KeyInUse => reject(
                        &t,
                        contract,
                        id,
                        "its WireGuard key belongs to another allocation".into(),
                    )?,
                    Decision::PoolFull => retry_stage(None, "no prefix free"),
                }
            }
        };
        match &stage {
            Stage::Rejected { reason } => info!(%contract, id, "rejected (silently): {reason}"),
            Stage::Skipped { reason } => info!(%contract, id, "skipped: {reason}"),
            Stage::Retry { last_error, .. } => warn!(%contract, id, "will retry: {last_error}"),
            _ => {}
        }
        requests::set(&t, contract, id, stage)?;
        if advance {
            cursors::set_next_request(&t, contract, id + 1)?;
        }
        t.commit()?;

        if let Some((allocation, old_key, server_pubkey)) = setup {
            info!(%contract, id, prefix = %allocation.prefix, nft = %allocation.nft, "allocated");
            crash_point!("after-decision");
            // The decision is on disk: whatever fails from here on is
            // resumed next poll (the request stays Allocated), without
            // holding up the requests behind it.
            let done = match self.kernel.apply(&allocation, old_key).await {
                Ok(()) => {
                    crash_point!("after-kernel");
                    self.respond(contract, id, allocation.slot, &hex::encode(server_pubkey))
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = done {
                warn!(%contract, id, "answer deferred: {e:#}");
            }
        }
        Ok(())
    }
}

/// A silent rejection: audited, never answered, never retried.
fn reject(
    t: &redb::WriteTransaction,
    contract: Address,
    id: u64,
    reason: String,
) -> Result<Stage, crate::db::DbError> {
    audit::record(
        t,
        Event::Rejected {
            contract: contract.to_string(),
            request_id: id,
            reason: reason.clone(),
        },
    )?;
    Ok(Stage::Rejected { reason })
}

/// The next retry after a transient failure: attempts count up, the wait
/// doubles (from 10 s to at most an hour).
fn retry_stage(previous: Option<Stage>, error: &str) -> Stage {
    let attempts = match previous {
        Some(Stage::Retry { attempts, .. }) => attempts + 1,
        _ => 1,
    };
    let wait = 10u64.saturating_mul(1 << attempts.min(9)).min(3600);
    Stage::Retry {
        attempts,
        next_at: crate::db::now() + wait,
        last_error: error.to_string(),
    }
}
