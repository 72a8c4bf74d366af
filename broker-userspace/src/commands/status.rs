//! `blockhost-broker status`: the daemon's figures, from its control
//! socket, or the database's alone when no daemon runs.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use broker_contracts::chain::ether;
use broker_userspace::{
    config::{self, Config},
    operator::{
        Snapshot, Status,
        control::{self, AskError, Request},
        status::ContractRole,
    },
    store::{self, StoreError},
};

/// How long a read waits for the daemon.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

/// What every operator command takes.
#[derive(clap::Args)]
pub struct CommonArgs {
    /// The configuration file (for the control socket's path and, when no
    /// daemon runs, the database's).
    #[arg(long, short, default_value = config::DEFAULT_PATH, env = "BLOCKHOST_BROKER_CONFIG")]
    pub config: PathBuf,
    /// JSON instead of text, for scripts.
    #[arg(long)]
    pub json: bool,
}

impl CommonArgs {
    pub fn load(&self) -> anyhow::Result<Config> {
        Config::load_without_keys(&self.config).map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// The daemon's answer to `request`, or `offline()`'s read of the
/// database when no daemon runs.
pub fn ask_or_read<T: serde::de::DeserializeOwned>(
    config: &Config,
    request: &Request,
    offline: impl FnOnce() -> Result<anyhow::Result<T>, StoreError>,
) -> anyhow::Result<T> {
    let socket = control::socket_path(config);
    match control::ask(&socket, request, READ_TIMEOUT) {
        Err(AskError::NoDaemon { .. }) => offline().map_err(|e| {
            anyhow::anyhow!(
                "no daemon answers on {}, and the database cannot be read: {e}",
                socket.display()
            )
        })?,
        answer => Ok(answer?),
    }
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let config = args.common.load()?;
    let status: Status = ask_or_read(&config, &Request::Status, || {
        Ok(Ok(Snapshot::read_offline(&config)?.status))
    })?;
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", text(&status));
    }
    Ok(ExitCode::SUCCESS)
}

fn text(s: &Status) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| out.push_str(&format!("{label:<10} {value}\n"));
    if s.daemon {
        line("daemon", format!("running, figures of {}", utc(s.taken_at)));
    } else {
        line(
            "daemon",
            "not running: figures from the database; the chain, the wallet and the WireGuard peers need the daemon"
                .into(),
        );
    }
    let p = &s.pool;
    line(
        "pool",
        format!(
            "{} in /{}s: {} used, {} free, {} in all",
            p.upstream_prefix, p.allocation_size, p.used, p.free, p.total
        ),
    );
    line(
        "requests",
        format!(
            "{:<8} {:<42} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "", "contract", "seen", "answered", "rejected", "skipped", "pending"
        ),
    );
    for c in &s.contracts {
        let role = match c.role {
            ContractRole::Primary => "primary",
            ContractRole::Legacy => "legacy",
        };
        let r = c.requests;
        line(
            "",
            format!(
                "{role:<8} {:<42} {:>8} {:>8} {:>8} {:>8} {:>8}",
                c.address.to_string(),
                r.seen,
                r.answered,
                r.rejected,
                r.skipped,
                r.pending
            ),
        );
    }
    if let Some(poll) = &s.last_poll {
        let outcome = poll
            .error
            .as_deref()
            .map_or("ok".into(), |e| format!("failed: {e}"));
        line("last poll", format!("{}, {outcome}", utc(poll.finished_at)));
    }
    if let Some(c) = &s.chain {
        line(
            "chain",
            format!(
                "head {} ({}), confirmed {}: {} blocks, {} s behind",
                c.head,
                utc(c.head_timestamp),
                c.confirmed,
                c.lag_blocks,
                c.lag_seconds
            ),
        );
    } else if s.daemon {
        line("chain", "unknown (no poll has read it yet)".into());
    }
    if let Some(w) = &s.wallet {
        line(
            "wallet",
            format!("{} holds {} ETH", w.address, ether(w.balance_wei)),
        );
        if w.low {
            line(
                "",
                format!(
                    "LOW: below {} ETH ([onchain] low_balance_eth): fund it, or answers and releases will fail",
                    ether(w.low_balance_wei)
                ),
            );
        }
    }
    match &s.ndp {
        Some(n) => {
            let c = n.counters;
            line(
                "ndp",
                format!(
                    "{} ({} mode{}, {}), {} prefixes; seen {} answered {} not_ours {} invalid {} failed {}",
                    n.interface.as_deref().unwrap_or("(interface gone)"),
                    n.mode.as_deref().unwrap_or("unknown"),
                    n.attachment
                        .as_deref()
                        .map_or(String::new(), |a| format!(" by {a}")),
                    if n.attached {
                        "attached"
                    } else {
                        "NOT attached"
                    },
                    n.prefixes,
                    c.seen,
                    c.answered,
                    c.not_ours,
                    c.invalid,
                    c.failed
                ),
            );
        }
        None => line(
            "ndp",
            "no responder pinned (or its pins cannot be read)".into(),
        ),
    }
    if let Some(p) = &s.peers {
        line(
            "peers",
            format!(
                "{} active, {} idle, {} never connected (active: a handshake within 3 min)",
                p.active, p.idle, p.never
            ),
        );
    }
    if s.owed_releases > 0 {
        line(
            "owed",
            format!(
                "{} on-chain releases not sent yet (retried every poll)",
                s.owed_releases
            ),
        );
    }
    out
}

/// `secs` since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// How long ago `secs` was, shortly.
pub fn ago(secs: u64) -> String {
    let d = store::now().saturating_sub(secs);
    match d {
        0..120 => format!("{d} s ago"),
        120..7200 => format!("{} min ago", d / 60),
        7200..172_800 => format!("{} h ago", d / 3600),
        _ => format!("{} days ago", d / 86_400),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(super::utc(1_795_962_061), "2026-11-29 14:21:01 UTC");
    }
}
