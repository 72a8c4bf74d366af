//! `blockhost-broker run`: on-chain requests in, working tunnels out.
//!
//! Each poll reads the chain at the confirmed block, first checks that the
//! chain it read before is still the chain (`reorg.rs`: a reorg undoes what
//! it decided on the blocks that went), resumes what a previous
//! poll (or a previous process) left unfinished, takes the next requests of
//! each watched contract in id order (a bounded number per poll), then does
//! the upkeep: owner releases, on-chain releases still owed, tunnels that
//! never completed a handshake.
//!
//! A request goes examine (`examine.rs`: read and judge it, writing
//! nothing) → decide ([`Store::decide`]: one transaction) → apply
//! (`kernel.rs`: peer, route, NDP entry) → answer (`answer.rs`). Every
//! decision commits to the store before the kernel or the chain is touched;
//! the kernel follows the store, and is made to match it at every start.
//!
//! A poll decides all the new requests it takes first, then sets each up
//! and sends its answer without waiting for the one before to be mined
//! (consecutive nonces), then awaits the receipts of that run once (see
//! `answer.rs`).

mod answer;
pub(crate) mod crash_points;
mod examine;
mod expire;
mod kernel;
mod operator;
mod reorg;
mod send;
mod systemd;
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
    api::ApiServer,
    chain::{BlockRef, Chain},
    config::Config,
    ndp::{Interface, Responder, ResponderOptions},
    operator::{
        Reader,
        control::{self, ControlSocket},
        handle,
        status::{DaemonCounters, LastPoll},
    },
    store::{
        Store,
        requests::{Decision, Grant, SentTx, Stage},
    },
    tunnel::{Routes, Tunnel},
};
use crash_points::crash_point;
use kernel::Kernel;
use systemd::Systemd;

/// Longest pause after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How long one poll may spend on requests: past it, the requests left wait
/// for the next poll (after the upkeep), so contracts that make each check
/// slow cannot hold everything else up for long.
const POLL_BUDGET: Duration = Duration::from_secs(30);

/// New requests read concurrently and then decided in one commit, when
/// answers are pipelined.
const DECIDE_AT_ONCE: u64 = 64;

pub struct Daemon {
    config: Config,
    /// Shared with the operator's servers, which read the allocations
    /// from it when asked.
    store: Arc<Store>,
    chain: Chain,
    kernel: Kernel,
    ecies_secret: [u8; 32],
    /// The primary requests contract first, then the legacy ones.
    contracts: Vec<Address>,
    stop: Arc<AtomicBool>,
    /// The block the last poll read at, and how that poll ended: for the
    /// operator's status.
    confirmed: Option<BlockRef>,
    last_poll: Option<LastPoll>,
    /// Failed polls by kind, and the last success: for the metrics.
    counters: DaemonCounters,
    systemd: Systemd,
    /// When this run put the peers on the interface (seconds since the
    /// epoch): no handshake deadline falls before it plus the handshake
    /// timeout (see `upkeep::handshake_overdue`).
    peers_installed_at: u64,
    /// When old records were last pruned (see `upkeep::prune_old_records`).
    last_pruned: Option<std::time::Instant>,
    /// The answers this poll sent whose receipts are not awaited yet.
    run: Vec<answer::InFlight>,
}

/// Runs until SIGTERM or SIGINT (after finishing the request in hand).
pub async fn run(config: Config) -> anyhow::Result<()> {
    crash_points::setup();
    let mut systemd = Systemd::from_env();
    systemd.status("starting");
    let stop = Arc::new(AtomicBool::new(false));
    spawn_signal_watch(stop.clone())?;
    let api = match &config.api {
        Some(api) => Some(ApiServer::bind(api, &config).await?),
        None => None,
    };
    let Some(mut daemon) = Daemon::start(config, stop.clone(), systemd).await? else {
        info!("stopping before the chain ever answered: tunnels and the NDP responder stay up");
        return Ok(());
    };
    let first = daemon
        .snapshot()
        .await
        .context("reading the database for the status")?;
    let tokens = daemon.store.tokens().context("reading the API tokens")?;
    let allocations = Reader::new(
        daemon.store.clone(),
        daemon.config.broker.pool,
        Some(daemon.kernel.tunnel.peer_reader()),
    );
    let (mut publisher, handle) = handle::channel(first, tokens, allocations);
    let socket = ControlSocket::bind(&control::socket_path(&daemon.config))?;
    let pool = daemon.config.broker.pool;
    let api = api.map(|server| tokio::spawn(server.serve(handle.clone(), pool)));
    let server = tokio::spawn(socket.serve(handle, pool));
    let mut failures = 0u32;
    let mut ready = false;
    while !stop.load(Ordering::Relaxed) {
        let result = daemon.poll().await;
        daemon.poll_ended(&result);
        daemon.systemd.ping_if_due();
        match &result {
            Ok(()) => {
                failures = 0;
                let line = daemon.idle_status();
                if ready {
                    daemon.systemd.status(&line);
                } else {
                    // The responder is attached and the tunnel up since
                    // `start`; the first poll that succeeds makes it ready.
                    daemon.systemd.ready(&line);
                    info!("ready: {line}");
                    ready = true;
                }
            }
            Err(e) => {
                failures += 1;
                warn!("poll failed ({failures} in a row): {e:#}");
                daemon
                    .systemd
                    .status(&format!("poll failed ({failures} in a row): {e}"));
            }
        }
        daemon.publish(&publisher).await;
        // The poll's reads (the status counts every allocation and peer)
        // are freed by now: give them back.
        return_freed_memory();
        let pause = pause_after(failures, daemon.config.onchain.poll_interval_secs);
        daemon.pause_serving(pause, &mut publisher).await;
    }
    // Ends the servers (the control socket's removes the socket).
    for task in std::iter::once(server).chain(api) {
        task.abort();
        let _ = task.await;
    }
    info!("stopping: state is on disk, tunnels and the NDP responder stay up");
    Ok(())
}

/// Hands the heap's free pages back to the system. The daemon keeps nothing
/// per allocation in memory, but its reads of all of them (the start's
/// reconciliation, each poll's status) leave freed memory that glibc would
/// otherwise keep: without this its resident memory grew with the number
/// of allocations (`cargo xtask bench control-plane`).
fn return_freed_memory() {
    // SAFETY: malloc_trim only releases free memory; no pointer is touched.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

fn over_budget(budget: tokio::time::Instant) -> bool {
    tokio::time::Instant::now() >= budget
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
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!("{name}: finishing the request in hand");
        systemd::stopping(name);
        stop.store(true, Ordering::Relaxed);
    });
    Ok(())
}

impl Daemon {
    /// Sets up the kernel side, then connects to the chain, retrying while
    /// it is unreachable: None when asked to stop meanwhile.
    async fn start(
        config: Config,
        stop: Arc<AtomicBool>,
        mut systemd: Systemd,
    ) -> anyhow::Result<Option<Daemon>> {
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

        let store = Store::open(&config.database.path, config.broker.pool)?;
        systemd.status(&format!(
            "bringing up the WireGuard interface {}",
            config.wireguard.interface
        ));
        let gateway = config.broker.pool.broker_address();
        // Before Tunnel::open turns forwarding on (see the function).
        crate::tunnel::keep_router_advertisements(&config.broker.upstream_interface)?;
        // Before the interface exists, so no client packet ever meets a host
        // without it (it matches the interface by name).
        crate::firewall::install(
            &config.wireguard.interface,
            &config.wireguard.allow_to_broker,
        )?;
        info!(
            table = crate::firewall::TABLE,
            allowed = ?config.wireguard.allow_to_broker.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "tunnel clients reach the broker itself with ICMPv6 and the allowed services only"
        );
        let tunnel = Tunnel::open(&config.wireguard, &wg_key, gateway).await?;
        let store = Arc::new(match tunnel.max_peers() {
            Some(max) => {
                info!(
                    max,
                    "the {} WireGuard holds this many peers at most: no more allocations than that",
                    tunnel.backend()
                );
                store.limit_allocations(max)
            }
            None => store,
        });
        let routes = Routes::new().await?;
        let pool = config.broker.pool.upstream();
        if routes.hold_unallocated(pool).await? {
            info!(%pool, "the pool's unallocated addresses are unreachable (ICMPv6 at once, no routing loop)");
        } else {
            info!(%pool, "the pool is on-link: neighbor discovery answers its allocated addresses only");
        }
        let upstream = Interface::by_name(&config.broker.upstream_interface)?;
        if matches!(upstream.link_layer, crate::ndp::LinkLayer::Ethernet(_)) {
            crate::tunnel::receive_all_multicast(upstream.index).await?;
        }
        systemd.status(&format!("attaching the NDP responder to {}", upstream.name));
        let mut ndp = Responder::load(&crate::ndp::PinDir::new(&config.broker.ndp_pin_dir))?;
        let (mode, attachment) = ndp.attach(
            &upstream,
            config.broker.ndp_mode,
            ResponderOptions {
                router: config.broker.ndp_router_flag,
                vlan: config.broker.ndp_vlan,
            },
        )?;
        info!(interface = %upstream.name, %mode, via = attachment.describe(mode), "NDP responder attached");
        let mut kernel = Kernel::new(tunnel, routes, ndp);
        let summary = kernel.reconcile(&store.allocations()?).await?;
        let peers_installed_at = crate::store::now();
        info!("kernel reconciled with the database: {summary}");
        return_freed_memory();

        systemd.status("connecting to the chain");
        let chain = loop {
            match Chain::connect(&config.onchain, operator.clone()).await {
                Ok(chain) => break chain.stop_on(stop.clone()),
                Err(e) if e.is_transient() => {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(None);
                    }
                    warn!("chain unreachable, retrying: {e}");
                    systemd.status(&format!("waiting for the chain: {e}"));
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
            store,
            chain,
            kernel,
            ecies_secret,
            contracts,
            stop,
            confirmed: None,
            last_poll: None,
            counters: DaemonCounters::default(),
            systemd,
            peers_installed_at,
            last_pruned: None,
            run: Vec::new(),
        };
        daemon.sync_capacity().await;
        Ok(Some(daemon))
    }

    /// The status line between polls.
    fn idle_status(&self) -> String {
        let block = self.confirmed.map_or(0, |at| at.number);
        match self.store.allocation_count() {
            Ok(count) => format!(
                "watching {} requests contract(s) at block {block}; {count} allocation(s)",
                self.contracts.len(),
            ),
            Err(_) => format!("watching at block {block}"),
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// On-chain capacity = the pool's slots (the broker's own excepted),
    /// or the peers the WireGuard holds when fewer.
    async fn sync_capacity(&self) {
        let slots = self.config.broker.pool.slots() - 1;
        let capacity = u64::try_from(slots)
            .unwrap_or(u64::MAX)
            .min(self.kernel.tunnel.max_peers().unwrap_or(u64::MAX));
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
        self.follow_reorgs(&at).await?;
        self.confirmed = Some(at);
        let result = self.poll_at(&at).await;
        // Also after a failed poll: answers it sent are in the blocks the
        // head covers.
        if let Err(e) = self.record_head(&at).await {
            warn!("recording the chain's head (again next poll): {e:#}");
        }
        result
    }

    async fn poll_at(&mut self, at: &BlockRef) -> anyhow::Result<()> {
        self.systemd.ping_if_due();
        self.systemd
            .status(&format!("polling at block {}", at.number));
        let budget = tokio::time::Instant::now() + POLL_BUDGET;
        let taken = self.take_requests(at, budget).await;
        // Also after a failure: what was sent before it is followed up now.
        self.settle_run().await;
        taken?;
        if !self.stopping() {
            self.upkeep(at).await;
        }
        Ok(())
    }

    /// The unfinished requests, then the new ones of each contract; their
    /// answers join the poll's run.
    async fn take_requests(
        &mut self,
        at: &BlockRef,
        budget: tokio::time::Instant,
    ) -> anyhow::Result<()> {
        self.resume_unfinished(at, budget).await?;
        for contract in self.contracts.clone() {
            if self.stopping() {
                return Ok(());
            }
            self.take_new_requests(contract, at, budget).await?;
        }
        Ok(())
    }

    async fn take_new_requests(
        &mut self,
        contract: Address,
        at: &BlockRef,
        budget: tokio::time::Instant,
    ) -> anyhow::Result<()> {
        let count = self.chain.request_count(contract, at).await?;
        let start = self.config.onchain.start_request_id;
        let next = self.store.next_request(contract, start)?;
        let last = count.min(next.saturating_add(self.config.onchain.max_requests_per_poll - 1));
        if !self.config.broker.pipeline_answers {
            for id in next..=last {
                if self.stopping() {
                    break;
                }
                if over_budget(budget) {
                    info!(%contract, "the poll's time is spent: requests from {id} on wait for the next poll");
                    break;
                }
                self.handle(contract, id, at, true).await?;
            }
            return Ok(());
        }
        // Every decision first: the answers then leave back to back, with
        // no chain reads between them, and land in the same block or two.
        // The requests are read a chunk at a time, concurrently, and each
        // chunk is decided in one commit.
        let mut granted = Vec::new();
        let mut failed = None;
        let mut first = next;
        while first <= last {
            if self.stopping() {
                break;
            }
            if over_budget(budget) {
                info!(%contract, "the poll's time is spent: requests from {first} on wait for the next poll");
                break;
            }
            let chunk = first..=last.min(first.saturating_add(DECIDE_AT_ONCE - 1));
            first = chunk.end().saturating_add(1);
            self.systemd.ping_if_due();
            self.systemd.status(&match (chunk.start(), chunk.end()) {
                (first, last) if first == last => {
                    format!("answering request {first} of {contract}")
                }
                (first, last) => format!("answering requests {first} to {last} of {contract}"),
            });
            let mut verdicts = Vec::new();
            for (id, verdict) in self.examine_all(contract, chunk, at).await {
                match verdict {
                    Ok(verdict) => verdicts.push((id, verdict)),
                    Err(e) => {
                        failed = Some(e.into());
                        break;
                    }
                }
            }
            match self.store.decide_all(contract, at.number, verdicts, true) {
                Ok(decisions) => {
                    for (id, decision) in decisions {
                        if let Some(grant) = decided(contract, id, decision) {
                            granted.push((id, grant));
                        }
                    }
                }
                Err(e) => failed = Some(e.into()),
            }
            if failed.is_some() {
                break;
            }
        }
        // Decided requests are answered even when asked to stop: they are
        // the requests in hand, and sending takes no waiting.
        self.apply_and_answer_all(contract, granted).await;
        failed.map_or(Ok(()), Err)
    }

    async fn resume_unfinished(
        &mut self,
        at: &BlockRef,
        budget: tokio::time::Instant,
    ) -> anyhow::Result<()> {
        for record in self.store.unfinished()? {
            if self.stopping() {
                break;
            }
            if over_budget(budget) {
                info!("the poll's time is spent: unfinished requests wait for the next poll");
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
                        .resume_answer(record.contract, record.id, slot, server_pubkey)
                        .await
                    {
                        warn!(contract = %record.contract, id = record.id, "answer deferred: {e:#}");
                    }
                }
                Stage::Sent {
                    slot,
                    server_pubkey,
                    tx,
                    nonce,
                    max_fee_per_gas,
                    max_priority_fee_per_gas,
                } => {
                    let sent = answer::SentAnswer {
                        slot,
                        server_pubkey,
                        tx: SentTx {
                            tx,
                            nonce,
                            max_fee_per_gas,
                            max_priority_fee_per_gas,
                        },
                        since: record.updated_at,
                    };
                    if let Err(e) = self.resume_sent(record.contract, record.id, sent).await {
                        warn!(contract = %record.contract, id = record.id, "answer not followed up: {e:#}");
                    }
                }
                Stage::Retry { next_at, .. } if next_at <= crate::store::now() => {
                    self.handle(record.contract, record.id, at, false).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Request `id`, the way it goes: examine → decide (advancing the cursor
    /// when `advance`) → apply → answer.
    async fn handle(
        &mut self,
        contract: Address,
        id: u64,
        at: &BlockRef,
        advance: bool,
    ) -> anyhow::Result<()> {
        if let Some(grant) = self.decide_request(contract, id, at, advance).await? {
            self.apply_and_answer(contract, id, &grant).await;
        }
        Ok(())
    }

    /// Request `id` examined and decided (the decision committed); the grant
    /// to set up and answer, if it is one.
    async fn decide_request(
        &mut self,
        contract: Address,
        id: u64,
        at: &BlockRef,
        advance: bool,
    ) -> anyhow::Result<Option<Grant>> {
        // Each request is a step of the loop: a slow one still pings, a
        // hung one does not.
        self.systemd.ping_if_due();
        self.systemd
            .status(&format!("answering request {id} of {contract}"));
        let verdict = self.examine(contract, id, at).await?;
        // Watched for reorgs in the decision's own commit, as a burst is.
        let decisions = self
            .store
            .decide_all(contract, at.number, vec![(id, verdict)], advance)?;
        Ok(decisions
            .into_iter()
            .next()
            .and_then(|(id, decision)| decided(contract, id, decision)))
    }
}

/// The grant to set up and answer, if `decision` on request `id` is one
/// (logged either way).
fn decided(contract: Address, id: u64, decision: Decision) -> Option<Grant> {
    let grant = match decision {
        Decision::Granted(grant) => grant,
        Decision::Rejected(reason) => {
            info!(%contract, id, "rejected (silently): {reason}");
            return None;
        }
        Decision::Skipped(reason) => {
            info!(%contract, id, "skipped: {reason}");
            return None;
        }
        Decision::Retry { last_error, .. } => {
            warn!(%contract, id, "will retry: {last_error}");
            return None;
        }
        Decision::AlreadyFinished => return None,
    };
    let a = &grant.allocation;
    info!(%contract, id, prefix = %a.prefix, nft = %a.nft, "allocated");
    crash_point!("after-decision");
    Some(grant)
}
