//! One burst: `size` requests from distinct NFT contracts mined in one
//! block, answered by a daemon started afresh with one design, measured
//! on the chain (blocks, timestamps, receipts) and in /proc (CPU, memory).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use alloy::{
    primitives::{B256, U256},
    providers::Provider as _,
    rpc::types::Filter,
    sol_types::SolEvent as _,
};
use anyhow::{Context as _, bail, ensure};
use broker_contracts::{BrokerRequests, TestNFT, devchain::anvil_signer};
use broker_lab::{
    Lab,
    requests::{CLIENT, CLIENT_TX_GAS, Client, request_id},
};
use broker_userspace::store::Store;
use serde_json::json;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Design {
    /// `pipeline_answers = false`: each answer's receipt awaited before the
    /// next answer is sent.
    OneAtATime,
    /// `pipeline_answers = true`: a poll's answers sent back to back.
    Pipelined,
}

impl Design {
    pub fn name(self) -> &'static str {
        match self {
            Design::OneAtATime => "one at a time",
            Design::Pipelined => "pipelined",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Design::OneAtATime => "one_at_a_time",
            Design::Pipelined => "pipelined",
        }
    }
}

/// What one burst measured. Per-request figures are in request order.
pub struct Burst {
    pub design: Design,
    pub size: usize,
    /// The block the requests were mined (and, at 0 confirmations,
    /// confirmed) in.
    pub request_block: u64,
    /// Per request: blocks from the requests' block to its answer's.
    pub blocks: Vec<u64>,
    /// Per request: seconds between those blocks' timestamps.
    pub seconds: Vec<u64>,
    /// Per answer: gas used and wei paid (its receipt).
    pub gas: Vec<u64>,
    pub wei: Vec<u128>,
    /// Everything the operator paid in the blocks after the requests'
    /// (answers and anything else it sent), from the receipts.
    pub operator_wei: u128,
    /// The daemon's user + system CPU from just before the requests were
    /// mined until the last answer was seen.
    pub cpu_seconds: f64,
    /// That window, wall clock.
    pub window_seconds: f64,
    /// The daemon's peak resident memory (VmHWM) since its start, KiB.
    pub peak_rss_kib: u64,
    /// `ResponseSubmitted` events per request (1 each when all is well).
    pub events: Vec<usize>,
    /// From the requests' block (its timestamp) to the daemon's first and
    /// last "answer sent" log line, seconds: how much of the wait is the
    /// daemon's own work and how much the chain's.
    pub sent: Option<(f64, f64)>,
    /// The requests' block's timestamp (Unix seconds).
    pub requested_at: u64,
}

/// [`Burst::sent`] from the daemon's log (a fresh daemon per burst: its
/// every "answer sent" line is this burst's). The log's clock and anvil's
/// are the same machine's; the block's timestamp is whole seconds.
fn sent_times(log: &str, requested_at: u64) -> Option<(f64, f64)> {
    let times: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("answer sent"))
        .filter_map(|l| {
            let stamp = l.split_whitespace().next()?;
            let (_, time) = stamp.split_once('T')?;
            let mut secs = 0.0;
            for part in time.strip_suffix('Z')?.split(':') {
                secs = secs * 60.0 + part.parse::<f64>().ok()?;
            }
            Some(secs)
        })
        .collect();
    let day = (requested_at % 86_400) as f64;
    // Across midnight the subtraction would be off by a day: none then.
    let first = times.iter().copied().fold(f64::INFINITY, f64::min) - day;
    let last = times.iter().copied().fold(f64::NEG_INFINITY, f64::max) - day;
    (first.is_finite() && first > -1.0 && last < 43_200.0).then_some((first, last))
}

/// Room in a block for any burst: 1,000 requests of at most CLIENT_TX_GAS
/// each must fit in the one block they are mined in (anvil's default
/// limit takes 30).
const BURST_BLOCK_GAS_LIMIT: u64 = 10_000_000_000;

/// The blocks after the burst's, where the answers go: anvil's default
/// limit, as on Ethereum's mainnet until 2025, so that the answers compete
/// for block space as they would there (about 200 answers a block).
pub const ANSWER_BLOCK_GAS_LIMIT: u64 = 30_000_000;

/// The base fee of each burst's block, wei (1 gwei).
pub const BASE_FEE: u64 = 1_000_000_000;

/// Gives the answered allocations a day for their first handshake: no
/// server brings a tunnel up here, and the lab's 120 s would have the
/// daemon release (and pay for) the first answers of a long burst while it
/// still answers the rest.
pub async fn prepare_chain(lab: &mut Lab) -> anyhow::Result<()> {
    lab.config.wireguard.handshake_timeout_secs = 24 * 3600;
    Ok(())
}

async fn set_block_gas_limit(lab: &Lab, limit: u64) -> anyhow::Result<()> {
    lab.anvil("evm_setBlockGasLimit", json!([format!("{limit:#x}")]))
        .await?;
    Ok(())
}

pub async fn run(
    lab: &mut Lab,
    design: Design,
    size: usize,
    block_seconds: u64,
) -> anyhow::Result<Burst> {
    earlier_tunnels_up(lab)?;
    lab.config.broker.pipeline_answers = design == Design::Pipelined;
    lab.start_broker()?;
    lab.broker()?
        .wait_log(&["ready:"], 1, Duration::from_secs(60))?;
    let pid = lab.broker()?.pid().context("the daemon's pid")?;
    let result = measure(lab, pid, size, block_seconds).await;
    // Back to automine whatever happened: the next burst deploys with it.
    let automine = lab.anvil("evm_setAutomine", json!([true])).await;
    let burst = result?;
    automine?;
    let peak_rss_kib = peak_rss_kib(pid)?;
    lab.stop_broker()?;
    let sent = sent_times(&lab.broker_log(), burst.requested_at);
    Ok(Burst {
        design,
        peak_rss_kib,
        sent,
        ..burst
    })
}

async fn measure(
    lab: &mut Lab,
    pid: u32,
    size: usize,
    block_seconds: u64,
) -> anyhow::Result<Burst> {
    let nfts = deploy_nfts(lab, size).await?;
    set_block_gas_limit(lab, BURST_BLOCK_GAS_LIMIT).await?;
    lab.anvil("evm_setAutomine", json!([false])).await?;
    let requests = BrokerRequests::new(lab.chain.requests, lab.wallet(CLIENT)?);
    let mut sent = Vec::new();
    let mut clients = Vec::new();
    for nft in nfts {
        let client = Client::new(CLIENT);
        let payload = lab.encrypt(&client.payload(nft).to_json())?;
        let pending = requests
            .submitRequest(nft, payload.into())
            .gas(CLIENT_TX_GAS)
            // Room for the base fee the burst's block is set to, whatever
            // the fee has fallen to by now.
            .max_fee_per_gas(u128::from(10 * BASE_FEE))
            .max_priority_fee_per_gas(u128::from(BASE_FEE / 10))
            .send()
            .await
            .context("sending submitRequest")?;
        sent.push(*pending.tx_hash());
        clients.push(client);
    }
    // Every burst's block at the same base fee: with blocks far below
    // their gas target the fee falls an eighth a block, and the chain has
    // mined many blocks by the later bursts.
    lab.anvil(
        "anvil_setNextBlockBaseFeePerGas",
        json!([format!("{BASE_FEE:#x}")]),
    )
    .await?;
    let cpu_before = cpu_seconds(pid)?;
    let started = Instant::now();
    lab.anvil("evm_mine", json!([])).await?;
    set_block_gas_limit(lab, ANSWER_BLOCK_GAS_LIMIT).await?;
    lab.anvil("evm_setIntervalMining", json!([block_seconds]))
        .await?;
    let provider = lab.wallet(0)?;
    let mut ids = Vec::new();
    let mut blocks = BTreeSet::new();
    for hash in sent {
        let receipt = mined(&provider, hash).await?;
        ensure!(receipt.status(), "submitRequest {hash} reverted");
        blocks.insert(receipt.block_number.context("a mined receipt")?);
        ids.push(request_id(&receipt)?);
    }
    ensure!(blocks.len() == 1, "the burst spans blocks {blocks:?}");
    let request_block = blocks.into_iter().next().unwrap_or_default();

    // One block per answer for the one-at-a-time design, and some slack.
    let limit = Duration::from_secs(120 + 3 * block_seconds * size as u64);
    let wanted: BTreeSet<u64> = ids.iter().copied().collect();
    let answers = loop {
        lab.check_broker()?;
        let answers = answers_since(lab, request_block).await?;
        if wanted.iter().all(|id| answers.contains_key(id)) {
            break answers;
        }
        if started.elapsed() > limit {
            bail!(
                "{} of {size} requests answered within {limit:?}",
                wanted.iter().filter(|id| answers.contains_key(id)).count()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cpu_seconds = cpu_seconds(pid)? - cpu_before;
    let window_seconds = started.elapsed().as_secs_f64();

    // Each answer as its client reads it: it decrypts, and holds a prefix
    // of the pool for this client.
    for (client, id) in clients.iter().zip(&ids) {
        let answer = lab
            .wait_answer(*id, client, Duration::from_secs(10))
            .await?;
        lab.check_answer(&answer)?;
    }
    let mut timestamps = BTreeMap::new();
    let mut burst = Burst {
        design: Design::Pipelined,
        size,
        request_block,
        blocks: Vec::new(),
        seconds: Vec::new(),
        gas: Vec::new(),
        wei: Vec::new(),
        operator_wei: lab.operator_gas_since(request_block).await?,
        cpu_seconds,
        window_seconds,
        peak_rss_kib: 0,
        events: Vec::new(),
        sent: None,
        requested_at: 0,
    };
    let requested_at = block_time(lab, request_block, &mut timestamps).await?;
    burst.requested_at = requested_at;
    for id in &ids {
        let found = &answers[id];
        burst.events.push(found.len());
        let (block, tx) = found[0];
        burst.blocks.push(block - request_block);
        burst
            .seconds
            .push(block_time(lab, block, &mut timestamps).await? - requested_at);
        let receipt = provider
            .get_transaction_receipt(tx)
            .await?
            .with_context(|| format!("no receipt for the answer {tx}"))?;
        burst.gas.push(receipt.gas_used);
        burst
            .wei
            .push(u128::from(receipt.gas_used) * receipt.effective_gas_price);
    }
    Ok(burst)
}

/// The earlier bursts' servers brought their tunnels up (as real ones do
/// within seconds of their answer): each burst starts from a broker in
/// steady state. Otherwise every earlier allocation still awaits its first
/// handshake, and the daemon reads every WireGuard peer for each of them
/// each poll, which is the earlier bursts' cost, not this one's. The daemon
/// is stopped (redb locks the file).
fn earlier_tunnels_up(lab: &Lab) -> anyhow::Result<()> {
    let store = Store::open(&lab.config.database.path, lab.config.broker.pool)
        .context("opening the daemon's database")?;
    for a in store.allocations()? {
        if a.handshake_deadline.is_some() {
            store.tunnel_up(a.slot)?;
        }
    }
    Ok(())
}

/// `size` TestNFTs owned by CLIENT, deployed with automine on: sent back to
/// back, then their receipts read (each was mined as it was sent).
async fn deploy_nfts(lab: &Lab, size: usize) -> anyhow::Result<Vec<alloy::primitives::Address>> {
    let provider = lab.wallet(CLIENT)?;
    let owner = anvil_signer(CLIENT).address();
    let mut hashes = Vec::new();
    for _ in 0..size {
        let pending = TestNFT::deploy_builder(provider.clone(), owner)
            .send()
            .await
            .context("deploying a TestNFT")?;
        hashes.push(*pending.tx_hash());
    }
    let mut nfts = Vec::new();
    for hash in hashes {
        let receipt = mined(&provider, hash).await?;
        ensure!(receipt.status(), "the TestNFT deployment {hash} reverted");
        nfts.push(receipt.contract_address.context("a deployment's address")?);
    }
    Ok(nfts)
}

/// The receipt of `hash`, waiting (a little) until it is mined: anvil
/// answers a transaction before its automined block is in.
async fn mined(
    provider: &alloy::providers::DynProvider,
    hash: B256,
) -> anyhow::Result<alloy::rpc::types::TransactionReceipt> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(receipt) = provider.get_transaction_receipt(hash).await? {
            return Ok(receipt);
        }
        ensure!(Instant::now() < deadline, "{hash} is not mined after 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every `ResponseSubmitted` after block `after`: per request id, each
/// event's block and transaction, in chain order.
async fn answers_since(lab: &Lab, after: u64) -> anyhow::Result<BTreeMap<u64, Vec<(u64, B256)>>> {
    let filter = Filter::new()
        .address(lab.chain.requests)
        .event_signature(BrokerRequests::ResponseSubmitted::SIGNATURE_HASH)
        // Not after + 1: anvil refuses a range starting past its head.
        .from_block(after);
    let mut answers: BTreeMap<u64, Vec<(u64, B256)>> = BTreeMap::new();
    for log in lab.wallet(0)?.get_logs(&filter).await? {
        let block = log.block_number.context("a mined event")?;
        if block <= after {
            continue;
        }
        let tx = log.transaction_hash.context("an event's transaction")?;
        let event = log.log_decode::<BrokerRequests::ResponseSubmitted>()?;
        let id: U256 = event.inner.data.requestId;
        answers.entry(id.to::<u64>()).or_default().push((block, tx));
    }
    Ok(answers)
}

async fn block_time(lab: &Lab, number: u64, cache: &mut BTreeMap<u64, u64>) -> anyhow::Result<u64> {
    if let Some(t) = cache.get(&number) {
        return Ok(*t);
    }
    let block = lab
        .wallet(0)?
        .get_block_by_number(number.into())
        .await?
        .with_context(|| format!("block {number}"))?;
    cache.insert(number, block.header.timestamp);
    Ok(block.header.timestamp)
}

/// User + system CPU time of process `pid`, seconds (/proc/PID/stat
/// fields 14 and 15, in clock ticks).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces: count from its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path}: no ')'"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: field {n}"))
    };
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(ticks > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok((field(14)? + field(15)?) as f64 / ticks as f64)
}

/// VmHWM of process `pid`, KiB.
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{path}: no VmHWM"))
}
