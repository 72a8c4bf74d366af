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
    /// JSON-RPC endpoint of the chain (http or https); else ETH_RPC_URL,
    /// else the public Sepolia endpoint the field client defaults to.
    #[arg(long, env = "BLOCKHOST_RPC_URL", global = true, value_name = "URL")]
    pub rpc_url: Option<String>,

    /// Chain id the endpoint must serve (checked before anything is sent);
    /// else ETH_CHAIN_ID, else 11155111 (Sepolia).
    #[arg(long, env = "BLOCKHOST_CHAIN_ID", global = true, value_name = "ID")]
    pub chain_id: Option<u64>,

    /// The BrokerRegistry contract that lists the brokers (also read from
    /// BROKER_REGISTRY_CONTRACT, the field client's name). Without it the
    /// registry file is read: CONFIG_DIR/registry.json, else --registry-url.
    #[arg(
        long,
        env = "BLOCKHOST_REGISTRY_CONTRACT",
        global = true,
        value_name = "ADDR"
    )]
    pub registry_contract: Option<Address>,

    /// Where the registry file is published (JSON: registry_contract,
    /// chain_id, network), read when no registry contract is given and
    /// CONFIG_DIR/registry.json does not exist.
    #[arg(
        long,
        env = "BLOCKHOST_REGISTRY_URL",
        global = true,
        default_value = crate::discovery::PUBLISHED_URL,
        value_name = "URL"
    )]
    pub registry_url: String,

    /// Use a registry file whose address differs from the one this server
    /// used last (remembered in CONFIG_DIR/known-registry.json).
    #[arg(long, global = true)]
    pub accept_new_registry: bool,

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

/// The field client's defaults (its `DEFAULT_RPC_URL`, `DEFAULT_CHAIN_ID`).
pub const DEFAULT_RPC_URL: &str = "https://ethereum-sepolia-rpc.publicnode.com";
pub const DEFAULT_CHAIN_ID: u64 = 11_155_111;

/// Where a setting came from: `status` reads the chain only when one was
/// configured, never from the defaults alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The option or a BLOCKHOST_* variable.
    Given,
    /// ETH_RPC_URL / ETH_CHAIN_ID.
    Eth,
    Default,
}

impl Global {
    /// --rpc-url > BLOCKHOST_RPC_URL > ETH_RPC_URL > the default.
    pub fn rpc_url(&self) -> (String, Source) {
        if let Some(url) = &self.rpc_url {
            return (url.clone(), Source::Given);
        }
        match env_value("ETH_RPC_URL") {
            Some(url) => (url, Source::Eth),
            None => (DEFAULT_RPC_URL.into(), Source::Default),
        }
    }

    /// --chain-id > BLOCKHOST_CHAIN_ID > ETH_CHAIN_ID > the default.
    pub fn chain_id(&self) -> anyhow::Result<(u64, Source)> {
        if let Some(id) = self.chain_id {
            return Ok((id, Source::Given));
        }
        match env_value("ETH_CHAIN_ID") {
            Some(text) => text
                .trim()
                .parse()
                .map(|id| (id, Source::Eth))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "ETH_CHAIN_ID {:?} is not a chain id (a decimal number)",
                        broker_contracts::error_text::one_line(&text)
                    )
                }),
            None => Ok((DEFAULT_CHAIN_ID, Source::Default)),
        }
    }

    /// The registry named explicitly: --registry-contract,
    /// BLOCKHOST_REGISTRY_CONTRACT, or the field client's
    /// BROKER_REGISTRY_CONTRACT.
    pub fn explicit_registry(&self) -> anyhow::Result<Option<Address>> {
        if let Some(a) = self.registry_contract {
            return Ok(Some(a));
        }
        match env_value("BROKER_REGISTRY_CONTRACT") {
            Some(text) => text.trim().parse().map(Some).map_err(|_| {
                anyhow::anyhow!(
                    "BROKER_REGISTRY_CONTRACT {:?} is not a 0x address",
                    broker_contracts::error_text::one_line(&text)
                )
            }),
            None => Ok(None),
        }
    }
}

/// An environment variable's value; unset and empty are the same (as
/// clap treats the BLOCKHOST_* ones).
fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
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
    /// Bring the tunnel up from the saved allocation now, without making it
    /// persistent: its configuration lives under --runtime-dir (/run), so
    /// nothing brings it back after a reboot (`install` does that).
    Configure(ConfigureArgs),
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
    #[arg(long, value_name = "ID", conflicts_with = "requests_contract")]
    pub broker_id: Option<u64>,

    /// Use the broker of this requests contract directly, without the
    /// registry (with --broker-pubkey).
    #[arg(long, value_name = "ADDR", requires = "broker_pubkey")]
    pub requests_contract: Option<Address>,

    /// That broker's ECIES public key: 130 hex digits (04‖X‖Y).
    #[arg(long, value_name = "HEX", requires = "requests_contract")]
    pub broker_pubkey: Option<String>,

    /// Requests submitted to one broker before giving up on it, when its
    /// answers are stale (another request's id, or not for our key).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub attempts: u32,

    /// Request even when an allocation file exists already (it is replaced).
    #[arg(long)]
    pub force: bool,

    /// Bring the tunnel up at once, as `configure` does (not persistent).
    #[arg(long)]
    pub configure_wg: bool,

    #[command(flatten)]
    pub tunnel: TunnelArgs,
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    /// The NFT contract to renew for; by default the allocation file's.
    #[arg(long, env = "BLOCKHOST_NFT_CONTRACT", value_name = "ADDR")]
    pub nft_contract: Option<Address>,

    #[command(flatten)]
    pub wallet: WalletArg,

    /// Requests submitted before giving up, when answers are stale.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub attempts: u32,

    /// Bring the tunnel up at once, as `configure` does (not persistent).
    #[arg(long)]
    pub configure_wg: bool,

    #[command(flatten)]
    pub tunnel: TunnelArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,

    /// With --requests-contract: the NFT contract's current request there
    /// (read from the chain even when no endpoint is configured).
    #[arg(long, value_name = "ADDR", requires = "requests_contract")]
    pub nft_contract: Option<Address>,

    /// The broker's requests contract to look the NFT contract up in.
    #[arg(long, value_name = "ADDR", requires = "nft_contract")]
    pub requests_contract: Option<Address>,
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
        long = "wg-interface",
        visible_alias = "interface",
        env = "BLOCKHOST_WG_INTERFACE",
        default_value = "wg-broker",
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

    /// Where `configure` (and --configure-wg) keep the configuration of a
    /// tunnel that is not to survive a reboot.
    #[arg(
        long,
        env = "BLOCKHOST_RUNTIME_DIR",
        default_value = "/run/broker-client",
        value_name = "DIR"
    )]
    pub runtime_dir: PathBuf,
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
pub struct ConfigureArgs {
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
    /// The NFT contract whose allocation to release; by default the
    /// allocation file's.
    #[arg(long, env = "BLOCKHOST_NFT_CONTRACT", value_name = "ADDR")]
    pub nft_contract: Option<Address>,

    #[command(flatten)]
    pub wallet: WalletArg,

    /// The broker's requests contract; by default broker-contract.json's,
    /// else the registry broker that holds a request of the NFT contract.
    #[arg(long, value_name = "ADDR")]
    pub requests_contract: Option<Address>,

    /// Also take the tunnel down and remove its wg-quick configuration.
    #[arg(long)]
    pub cleanup_wg: bool,

    /// Clean up locally even when the release on chain fails.
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub tunnel: TunnelArgs,
}
