//! The command line: every option, its environment variable and its help.

use std::path::PathBuf;

use alloy::primitives::Address;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Asks a blockhost-broker for an IPv6 prefix on-chain and installs the
/// WireGuard tunnel it answers with.
///
/// Progress goes to stderr; results go to stdout (JSON with --json where
/// offered). Every failure ends with one line on stderr and exit status 1
/// (2 for a malformed command line).
#[derive(Debug, Parser)]
#[command(name = "broker-client", version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// JSON-RPC endpoint of the chain (http or https).
    #[arg(long, env = "BLOCKHOST_RPC_URL", global = true, value_name = "URL")]
    pub rpc_url: Option<String>,

    /// Chain id the endpoint must serve (checked before anything is sent).
    #[arg(long, env = "BLOCKHOST_CHAIN_ID", global = true, value_name = "ID")]
    pub chain_id: Option<u64>,

    /// The BrokerRegistry contract that lists the brokers.
    #[arg(
        long,
        env = "BLOCKHOST_REGISTRY_CONTRACT",
        global = true,
        value_name = "ADDR"
    )]
    pub registry_contract: Option<Address>,

    /// Where server.key, broker-allocation.json and broker-contract.json live.
    #[arg(
        long,
        env = "BLOCKHOST_CONFIG_DIR",
        global = true,
        default_value = "/etc/blockhost",
        value_name = "DIR"
    )]
    pub config_dir: PathBuf,

    /// Seconds to wait for a broker's answer before trying the next broker.
    #[arg(
        long,
        env = "BLOCKHOST_TIMEOUT",
        global = true,
        default_value_t = 300.0,
        value_name = "SECS"
    )]
    pub timeout: f64,

    /// Seconds between two looks at the chain while waiting for an answer.
    #[arg(
        long,
        env = "BLOCKHOST_POLL_INTERVAL",
        global = true,
        default_value_t = 5.0,
        value_name = "SECS"
    )]
    pub poll_interval: f64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Request a prefix from the first registry broker with free capacity
    /// that answers; writes broker-allocation.json and broker-contract.json.
    Request(RequestArgs),
    /// Request again from the same broker with a new WireGuard key: the
    /// broker keeps the prefix. Rewrites the files (and an installed tunnel).
    Renew(RenewArgs),
    /// The current allocation (from the files) and its request on chain.
    Status(StatusArgs),
    /// The brokers of the registry, with their free capacity.
    ListBrokers(ListArgs),
    /// Write the wg-quick configuration of the allocation, bring the tunnel
    /// up (as the systemd unit wg-quick@IFACE when systemd runs) and check
    /// that the gateway answers through it.
    Install(InstallArgs),
    /// Release the allocation on chain (as the NFT contract's owner) and
    /// remove the local allocation file.
    Release(ReleaseArgs),
}

#[derive(Debug, Args)]
pub struct WalletArg {
    /// Hex secret key of the wallet that owns the NFT contract (mode 0600).
    #[arg(long, env = "BLOCKHOST_WALLET_KEY", value_name = "FILE")]
    pub wallet_key: PathBuf,
}

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// The BlockHost server's NFT contract (its owner() is the wallet).
    #[arg(long, env = "BLOCKHOST_NFT_CONTRACT", value_name = "ADDR")]
    pub nft_contract: Address,

    #[command(flatten)]
    pub wallet: WalletArg,

    /// Only brokers whose registry region is exactly this.
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// Only this broker (registry id).
    #[arg(long, value_name = "ID")]
    pub broker_id: Option<u64>,

    /// Requests submitted to one broker before giving up on it, when its
    /// answers are stale (another request's id, or not for our key).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub attempts: u32,

    /// Request even when an allocation file exists already (it is replaced).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    #[command(flatten)]
    pub wallet: WalletArg,

    /// Requests submitted before giving up, when answers are stale.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub attempts: u32,

    #[command(flatten)]
    pub tunnel: TunnelArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Where and how the tunnel is installed.
#[derive(Debug, Args, Clone)]
pub struct TunnelArgs {
    /// WireGuard interface name (wg-quick's rules: 1-15 of A-Z a-z 0-9 _ = + . -).
    #[arg(
        long,
        env = "BLOCKHOST_WG_INTERFACE",
        default_value = "blockhost0",
        value_name = "IFACE"
    )]
    pub interface: String,

    /// Directory of the wg-quick configuration IFACE.conf.
    #[arg(
        long,
        env = "BLOCKHOST_WG_CONFIG_DIR",
        default_value = "/etc/wireguard",
        value_name = "DIR"
    )]
    pub wg_config_dir: PathBuf,

    /// How the tunnel is brought up: `auto` uses systemd (wg-quick@IFACE)
    /// when it runs and the configuration is in /etc/wireguard, else
    /// `wg-quick up` directly.
    #[arg(
        long,
        env = "BLOCKHOST_SERVICE_MANAGER",
        value_enum,
        default_value_t = ServiceManager::Auto
    )]
    pub service_manager: ServiceManager,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServiceManager {
    Auto,
    Systemd,
    Direct,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub tunnel: TunnelArgs,

    /// Seconds to wait for the gateway to answer pings through the tunnel.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub check_timeout: u64,

    /// Do not ping the gateway after bringing the tunnel up.
    #[arg(long)]
    pub no_check: bool,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub wallet: WalletArg,

    /// Also take the tunnel down and remove its wg-quick configuration.
    #[arg(long)]
    pub cleanup_wg: bool,

    #[command(flatten)]
    pub tunnel: TunnelArgs,
}
