//! The file as written: every key, with its default where it has one, and
//! the typed values still as strings, for [`super::check`] to parse each on
//! its own (a typed field here would end the reading at its first error).

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    pub broker: Broker,
    pub wireguard: Wireguard,
    /// `None`: no API.
    pub api: Option<Api>,
    #[serde(default)]
    pub manager: Manager,
    pub database: Database,
    pub onchain: Onchain,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Broker {
    pub upstream_interface: String,
    pub upstream_prefix: String,
    pub allocation_size: u8,
    /// `None`: `AttachMode::default()`.
    pub ndp_mode: Option<String>,
    #[serde(default = "default_true")]
    pub ndp_router_flag: bool,
    pub ndp_vlan: Option<u16>,
    #[serde(default = "default_pin_dir")]
    pub ndp_pin_dir: PathBuf,
    pub dns_zone: Option<String>,
    /// `None`: under the runtime directory (see `operator::control`).
    pub control_socket: Option<PathBuf>,
    #[serde(default = "default_true")]
    pub pipeline_answers: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Wireguard {
    #[serde(default = "default_wg_interface")]
    pub interface: String,
    #[serde(default = "default_wg_port")]
    pub listen_port: u16,
    pub endpoint: String,
    pub private_key_file: PathBuf,
    /// `None`: `WireguardImplementation::default()`.
    pub implementation: Option<String>,
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_secs: u64,
    /// `tcp/PORT`, `udp/FIRST-LAST`: what tunnel clients may reach on the
    /// broker itself besides ICMPv6 (`crate::firewall`).
    #[serde(default)]
    pub allow_to_broker: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Api {
    #[serde(default = "default_api_listen")]
    pub listen: String,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub insecure_plaintext: bool,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Manager {
    /// Addresses, as written.
    #[serde(default)]
    pub admins: Vec<String>,
    pub session_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Database {
    pub path: PathBuf,
    #[serde(default = "default_retention_days")]
    pub retention_days: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Onchain {
    pub rpc_url: String,
    pub chain_id: u64,
    pub requests_contract: String,
    pub registry_contract: Option<String>,
    #[serde(default)]
    pub legacy_requests_contracts: Vec<String>,
    pub operator_key_file: PathBuf,
    pub ecies_key_file: PathBuf,
    #[serde(default = "default_poll_interval")]
    pub poll_interval_secs: u64,
    /// `"safe"`, `"finalized"` or a number of blocks, as written.
    pub confirm: Option<Confirm>,
    /// The older spelling of `confirm = <blocks>`, still read.
    pub confirmations: Option<u64>,
    #[serde(default = "default_start_request_id")]
    pub start_request_id: u64,
    #[serde(default = "default_max_requests_per_poll")]
    pub max_requests_per_poll: u64,
    #[serde(default = "default_log_range_blocks")]
    pub log_range_blocks: u64,
    /// In ETH, as a decimal string (`"0.05"`).
    #[serde(default = "default_low_balance_eth")]
    pub low_balance_eth: String,
}

/// `[onchain] confirm`: a TOML integer or string, told apart by serde.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Confirm {
    Blocks(i64),
    Tag(String),
}

fn default_api_listen() -> String {
    super::DEFAULT_API_LISTEN.into()
}
fn default_true() -> bool {
    true
}
fn default_pin_dir() -> PathBuf {
    crate::ndp::DEFAULT_PIN_DIR.into()
}
fn default_wg_interface() -> String {
    "wg-broker".into()
}
fn default_wg_port() -> u16 {
    51820
}
fn default_retention_days() -> u64 {
    super::DEFAULT_RETENTION_DAYS
}
fn default_handshake_timeout() -> u64 {
    120
}
fn default_poll_interval() -> u64 {
    5
}
fn default_start_request_id() -> u64 {
    1
}
fn default_log_range_blocks() -> u64 {
    super::DEFAULT_LOG_RANGE_BLOCKS
}
fn default_max_requests_per_poll() -> u64 {
    super::DEFAULT_MAX_REQUESTS_PER_POLL
}
fn default_low_balance_eth() -> String {
    "0.01".into()
}
