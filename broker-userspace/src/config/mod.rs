//! `/etc/blockhost-broker/config.toml`: read strictly, checked whole, and
//! written by serialising a [`Config`].
//!
//! Unknown keys are errors (a misspelt key must not silently fall back to a
//! default), and so are malformed values, an allocation size not longer
//! than the upstream prefix, and key files that are missing, malformed or
//! readable by group or others. [`Config::load`] reports every problem it
//! finds, one line each, rather than stopping at the first: it reads the
//! file as written ([`file`]), then checks it section by section ([`check`]).

mod check;
mod file;
#[cfg(test)]
mod tests;

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use alloy::primitives::{Address, U256};
use clap::ValueEnum;
use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize, Serializer};

use crate::{firewall::Allowed, ipam::Pool, ndp::AttachMode};

pub const DEFAULT_PATH: &str = "/etc/blockhost-broker/config.toml";

/// Everything wrong with a configuration file, one problem per line.
#[derive(Debug)]
pub struct ConfigErrors {
    pub path: PathBuf,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {p}", self.path.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// How WireGuard interfaces are driven (`[wireguard] implementation`),
/// spelt alike in the file, on a command line (clap) and in messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WireguardImplementation {
    /// The kernel module when present, else wireguard-go.
    #[default]
    Auto,
    /// The kernel module only.
    Kernel,
    /// wireguard-go only.
    Userspace,
}

impl fmt::Display for WireguardImplementation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.to_possible_value().expect("no variant is skipped");
        f.write_str(name.get_name())
    }
}

/// A checked configuration. It serialises to the file it is read from:
/// [`Config::load`] reads what `toml::to_string` writes as the same
/// `Config`, which is how tests and set-up write one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    pub broker: Broker,
    pub wireguard: Wireguard,
    /// `[api]`: the HTTP API, served when the section is present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<Api>,
    /// `[manager]`: who may log in to the web manager (served on the
    /// `[api]` listener under `/manager/`).
    #[serde(skip_serializing_if = "Manager::is_default")]
    pub manager: Manager,
    pub database: Database,
    pub onchain: Onchain,
}

/// `[database] retention_days` when the file does not give it.
pub const DEFAULT_RETENTION_DAYS: u64 = 90;
/// The longest retention the configuration accepts: ten years.
pub const MAX_RETENTION_DAYS: u64 = 3650;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Database {
    pub path: PathBuf,
    /// Days a finished request's record and an audit entry are kept: both
    /// grow with what anyone sends the contract, so they are pruned (see
    /// `Store::prune`).
    pub retention_days: u64,
}

impl Database {
    /// `path` with the default retention.
    pub fn at(path: PathBuf) -> Database {
        Database {
            path,
            retention_days: DEFAULT_RETENTION_DAYS,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Broker {
    pub upstream_interface: String,
    /// `upstream_prefix` and `allocation_size`.
    #[serde(flatten, serialize_with = "pool_keys")]
    pub pool: Pool,
    pub ndp_mode: AttachMode,
    pub ndp_router_flag: bool,
    /// Answer only solicitations tagged with this VLAN id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ndp_vlan: Option<u16>,
    pub ndp_pin_dir: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_zone: Option<String>,
    /// The operator's control socket; `None`: the default under the runtime
    /// directory (`operator::control::socket_path`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<PathBuf>,
    /// Answers of one poll sent back to back at consecutive nonces and
    /// their receipts awaited once (true), or each awaited before the next
    /// is sent (false: the design before issue 15, kept for the benchmark).
    pub pipeline_answers: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Wireguard {
    pub interface: String,
    pub listen_port: u16,
    /// `host:port` that clients connect to (the response's `brokerEndpoint`).
    pub endpoint: String,
    pub private_key_file: PathBuf,
    pub implementation: WireguardImplementation,
    pub handshake_timeout_secs: u64,
    /// Services on the broker itself that tunnel clients may reach (the
    /// daemon's nftables table, `crate::firewall`); empty: none.
    pub allow_to_broker: Vec<Allowed>,
}

/// The HTTP API (`crate::api`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Api {
    /// Default [`DEFAULT_API_LISTEN`].
    pub listen: SocketAddr,
    /// HTTPS with this certificate chain and key (PEM); both or neither.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address: the operator's explicit
    /// choice (the tokens then cross the network in clear).
    pub insecure_plaintext: bool,
}

/// The web manager (`crate::manager`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Manager {
    /// The wallets that may log in. Empty (the default): nobody, the
    /// manager is closed.
    pub admins: Vec<Address>,
    /// How long a login lasts. Default [`DEFAULT_SESSION_SECS`].
    pub session_secs: u64,
}

/// `[manager] session_secs` when the file does not give it: an hour.
pub const DEFAULT_SESSION_SECS: u64 = 3600;

impl Default for Manager {
    fn default() -> Self {
        Manager {
            admins: Vec::new(),
            session_secs: DEFAULT_SESSION_SECS,
        }
    }
}

impl Manager {
    fn is_default(&self) -> bool {
        *self == Manager::default()
    }
}

/// `[onchain] log_range_blocks` when the file does not give it.
pub const DEFAULT_LOG_RANGE_BLOCKS: u64 = 1000;

/// `[onchain] max_requests_per_poll` when the file does not give it: a
/// burst of a thousand servers is answered in one run (the poll's time
/// budget bounds the work anyway).
pub const DEFAULT_MAX_REQUESTS_PER_POLL: u64 = 1000;

/// `[onchain] confirm` when the file does not give it: one block on top of
/// the one read at, as before the tags were known.
pub const DEFAULT_CONFIRM: Confirm = Confirm::Blocks(1);

/// `[onchain] confirm`: which block the daemon reads requests at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirm {
    /// The latest block minus this many (0: the latest). A reorg deeper
    /// than this is noticed and undone (see `daemon/reorg.rs`).
    Blocks(u64),
    /// The node's `safe` block (proof-of-stake chains: justified, reorged
    /// only by a rare consensus failure).
    Safe,
    /// The node's `finalized` block (never reorged without slashing a third
    /// of the validators), minutes behind the head on Ethereum.
    Finalized,
}

impl Confirm {
    /// `"safe"`, `"finalized"` or a number of blocks, as the file says it.
    pub fn parse(text: &str) -> Option<Confirm> {
        match text {
            "safe" => Some(Confirm::Safe),
            "finalized" => Some(Confirm::Finalized),
            _ => text.parse().ok().map(Confirm::Blocks),
        }
    }

    /// The block tag, for the tags.
    pub fn tag(self) -> Option<&'static str> {
        match self {
            Confirm::Blocks(_) => None,
            Confirm::Safe => Some("safe"),
            Confirm::Finalized => Some("finalized"),
        }
    }
}

impl fmt::Display for Confirm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, self.tag()) {
            (_, Some(tag)) => f.write_str(tag),
            (Confirm::Blocks(n), None) => write!(f, "{n} block(s)"),
            _ => unreachable!("only Blocks has no tag"),
        }
    }
}

impl Serialize for Confirm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (self, self.tag()) {
            (_, Some(tag)) => s.serialize_str(tag),
            (Confirm::Blocks(n), None) => s.serialize_u64(*n),
            _ => unreachable!("only Blocks has no tag"),
        }
    }
}

/// `[api] listen` when the section does not give it.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:8080";

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Onchain {
    pub rpc_url: String,
    pub chain_id: u64,
    pub requests_contract: Address,
    /// Read and checked; used from the operator-surface release on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_contract: Option<Address>,
    pub legacy_requests_contracts: Vec<Address>,
    pub operator_key_file: PathBuf,
    pub ecies_key_file: PathBuf,
    pub poll_interval_secs: u64,
    /// Which block the daemon reads at.
    pub confirm: Confirm,
    pub start_request_id: u64,
    pub max_requests_per_poll: u64,
    /// Blocks per `eth_getLogs` call at most (providers cap ranges; the
    /// daemon halves it, down to one block, when one refuses a range or
    /// its result count).
    pub log_range_blocks: u64,
    /// `low_balance_eth`: below this balance (in wei) the operator wallet
    /// is reported low (`status`), as it may soon fail to answer.
    #[serde(rename = "low_balance_eth", serialize_with = "ether")]
    pub low_balance_wei: U256,
}

// The keys of the file that `Config` holds in other shapes.

fn ether<S: Serializer>(wei: &U256, s: S) -> Result<S::Ok, S::Error> {
    broker_contracts::chain::ether(*wei).serialize(s)
}

fn pool_keys<S: Serializer>(pool: &Pool, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct PoolKeys {
        upstream_prefix: Ipv6Net,
        allocation_size: u8,
    }
    PoolKeys {
        upstream_prefix: pool.upstream(),
        allocation_size: pool.allocation_size(),
    }
    .serialize(s)
}

impl Config {
    /// Reads and checks `path`, reporting every problem found.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Self::load_checking(path, check::Keys::Read)
    }

    /// [`Config::load`] for the operator's commands (`status`,
    /// `allocations`), which use no key: run by members of the daemon's
    /// group, they may not be allowed to read the keys, so the key files
    /// are not read (their other checks stay).
    pub fn load_without_keys(path: &Path) -> Result<Config, ConfigErrors> {
        Self::load_checking(path, check::Keys::Skip)
    }

    fn load_checking(path: &Path, keys: check::Keys) -> Result<Config, ConfigErrors> {
        let fail = |problems: Vec<String>| ConfigErrors {
            path: path.to_path_buf(),
            problems,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(vec![e.to_string()]))?;
        Self::parse_checking(path, &text, keys)
    }

    /// [`Config::load`] of `text` as if read from `path` (which problems
    /// name); the key files it names are read as `load` reads them. For
    /// the fuzz target, which feeds it what no file system would hold.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        Self::parse_checking(path, text, check::Keys::Read)
    }

    fn parse_checking(path: &Path, text: &str, keys: check::Keys) -> Result<Config, ConfigErrors> {
        let fail = |problems: Vec<String>| ConfigErrors {
            path: path.to_path_buf(),
            problems,
        };
        let file: file::File =
            toml::from_str(text).map_err(|e| fail(vec![toml_error(text, &e)]))?;
        let mut problems = check::Problems::new(keys);
        match check::config(file, &mut problems) {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(fail(problems.into_lines())),
        }
    }
}

/// The chain a configuration names (`[onchain] rpc_url` and `chain_id`),
/// each None where the file does not give it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct OnchainEndpoint {
    pub rpc_url: Option<String>,
    pub chain_id: Option<u64>,
}

impl OnchainEndpoint {
    /// Reads `[onchain] rpc_url` and `chain_id` of the file at `path` and
    /// nothing else: for commands that only need the chain (`wallet
    /// balance`), also while the rest of the configuration is unfinished.
    pub fn load(path: &Path) -> Result<OnchainEndpoint, ConfigErrors> {
        #[derive(Deserialize)]
        struct OnlyOnchain {
            #[serde(default)]
            onchain: OnchainEndpoint,
        }
        let fail = |problem: String| ConfigErrors {
            path: path.to_path_buf(),
            problems: vec![problem],
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let file: OnlyOnchain = toml::from_str(&text).map_err(|e| fail(toml_error(&text, &e)))?;
        Ok(file.onchain)
    }
}

/// toml's message on one line, with the line it points at.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().lines().next().unwrap_or("invalid TOML").trim();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message.to_string(),
    }
}
