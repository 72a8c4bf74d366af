//! Start-up with many allocations: the database filled through the store's
//! own transitions (each allocation decided, answered and its tunnel up, as
//! the daemon records them), the daemon started on it, timed to its log line "kernel
//! reconciled with the database" (WireGuard peers, routes and the NDP map
//! made to match), and its memory read once it is ready.

use std::time::{Duration, Instant};

use alloy::primitives::Address;
use anyhow::{Context as _, bail, ensure};
use broker_lab::Lab;
use broker_userspace::store::{
    Store,
    requests::{Decision, Verdict},
};
use wireguard_control::Key;

pub struct Reconcile {
    pub allocations: usize,
    /// Filling the database from the previous count, seconds (redb, one
    /// durable transaction per decision and per answer).
    pub fill_seconds: f64,
    /// From the daemon's spawn to its "kernel reconciled" line.
    pub start_seconds: f64,
    /// From "NDP responder attached" to "kernel reconciled" (the log's
    /// timestamps): the reconciliation alone.
    pub reconcile_seconds: f64,
    /// VmRSS once ready and a few polls on ([`STEADY_AFTER`]), and VmHWM
    /// then, KiB.
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    /// The daemon's own summary ("N allocations; peers +… routes +…").
    pub summary: String,
}

/// An address no daemon watches: the filled allocations' requests are its
/// (their ids never meet the lab's contract's).
const FILL_CONTRACT: Address = Address::repeat_byte(0xfe);

/// How long after "ready" the daemon's memory is read: a few polls (one a
/// second in the lab).
const STEADY_AFTER: Duration = Duration::from_secs(3);

/// A year: no filled allocation is released for want of a handshake while
/// the benchmark runs.
const HANDSHAKE_TIMEOUT: u64 = 365 * 24 * 3600;

/// Each count in turn: the database grown to it, the daemon started on it
/// and stopped. The daemon must be stopped when this is called.
pub fn run(lab: &mut Lab, counts: &[usize]) -> anyhow::Result<Vec<Reconcile>> {
    let mut out = Vec::new();
    for &count in counts {
        eprintln!("start-up with {count} allocations");
        let fill_seconds = fill(lab, count)?;
        let started = Instant::now();
        lab.spawn_broker(None)?;
        let limit = Duration::from_secs(120 + count as u64 / 50);
        let broker = lab.broker()?;
        let reconciled = broker.wait_log(&["kernel reconciled with the database"], 1, limit)?;
        let start_seconds = started.elapsed().as_secs_f64();
        broker.wait_log(&["ready:"], 1, limit)?;
        let attached = broker.wait_log(&["NDP responder attached"], 1, Duration::from_secs(1))?;
        let reconcile_seconds = log_time(&reconciled)? - log_time(&attached)?;
        let pid = broker.pid().context("the daemon's pid")?;
        // "ready" is logged while the first status is still being read:
        // the memory it keeps is what the polls after it hold.
        std::thread::sleep(STEADY_AFTER);
        let (rss_kib, peak_rss_kib) = (status_kib(pid, "VmRSS:")?, status_kib(pid, "VmHWM:")?);
        let summary = reconciled
            .split_once("database: ")
            .map_or(reconciled.as_str(), |(_, s)| s)
            .trim()
            .to_string();
        lab.stop_broker()?;
        ensure!(
            summary.starts_with(&format!("{count} allocations")),
            "the daemon reconciled {summary:?}, not {count} allocations"
        );
        let run = Reconcile {
            allocations: count,
            fill_seconds,
            start_seconds,
            reconcile_seconds,
            rss_kib,
            peak_rss_kib,
            summary,
        };
        eprintln!(
            "  reconciled in {:.2} s ({:.2} s from the start), RSS {} KiB (peak {} KiB); filled in {:.1} s",
            run.reconcile_seconds,
            run.start_seconds,
            run.rss_kib,
            run.peak_rss_kib,
            run.fill_seconds
        );
        out.push(run);
    }
    Ok(out)
}

/// Grows the database's allocations to `count`; the seconds it took.
fn fill(lab: &Lab, count: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let store = Store::open(&lab.config.database.path, lab.config.broker.pool)
        .context("opening the daemon's database")?;
    let have = store.allocations()?.len();
    ensure!(
        have <= count,
        "the database holds {have} allocations already, over {count}"
    );
    for n in have..count {
        let id = n as u64 + 1;
        let mut nft = [0u8; 20];
        nft[12..].copy_from_slice(&(0xf111_0000_0000_0000 + id).to_be_bytes());
        let verdict = Verdict::Valid {
            nft: Address::from(nft),
            wg_key: Key::generate_private().get_public().0,
            server_pubkey: [4; 65],
        };
        let Decision::Granted(grant) = store.decide(FILL_CONTRACT, id, verdict, false)? else {
            bail!("filled request {id} was not granted");
        };
        store.answered(
            FILL_CONTRACT,
            id,
            grant.allocation.slot,
            None,
            HANDSHAKE_TIMEOUT,
        )?;
        // A broker's allocations in steady state: their tunnels came up.
        // (One awaiting its first handshake costs the daemon a read of every
        // peer each poll: 10,000 of them kept its first poll busy for
        // minutes in a debug build.)
        store.tunnel_up(grant.allocation.slot)?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The time of day of a tracing log line, seconds (its RFC 3339 stamp).
fn log_time(line: &str) -> anyhow::Result<f64> {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    let time = stamp
        .split_once('T')
        .and_then(|(_, t)| t.strip_suffix('Z'))
        .with_context(|| format!("no timestamp in {line:?}"))?;
    time.split(':').try_fold(0.0, |acc, part| {
        Ok(acc * 60.0 + part.parse::<f64>().with_context(|| format!("{line:?}"))?)
    })
}

fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{path}: no {field}"))
}
