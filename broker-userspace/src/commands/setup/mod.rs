//! `blockhost-broker setup`: from nothing to a running broker. The
//! questions come first, checked as they are answered (the endpoint, the
//! contract, the pool); then what costs money or changes the host: funds,
//! the deployment, the files, the API token, the service.
//!
//! Nothing is lost to an interruption: keys are written (and kept) as soon
//! as they exist, the configuration only once everything it names exists;
//! running `setup` again reuses the keys it finds.

mod api;
mod ask;
mod contracts;
mod files;
mod network;
mod operator_wallet;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use alloy::primitives::{Address, utils::parse_ether};
use anyhow::{Context as _, bail};
use broker_userspace::{
    config::{self, Config, WireguardImplementation},
    host_ipv6,
    ndp::AttachMode,
    numbers::thousands,
};
use tokio::runtime::Runtime;

use self::{
    ask::{Asker, Question},
    contracts::Eth,
};

/// What the operator tells the registry owner (also in --help).
const REGISTRATION: &str = "\
Clients only find brokers listed in the BlockHost registry (BrokerRegistry). At the end,
setup prints what its owner needs to register this broker: the operator address, the
requests contract, the ECIES public key, the region and the capacity.";

/// The systemd unit the package installs.
const UNIT: &str = "blockhost-broker.service";

/// Every question has a flag; `--non-interactive` takes flags and defaults
/// only, and fails naming the flag a question without a default needs.
#[derive(clap::Args)]
#[command(after_long_help = REGISTRATION)]
pub struct SetupArgs {
    /// Ask nothing: take the flags, else the defaults; a question without a
    /// default is an error naming its flag. For scripts and cloud-init.
    #[arg(long)]
    non_interactive: bool,
    /// The configuration file to write. Keys go beside it (operator.key,
    /// ecies.key, wireguard.key, mode 0600).
    #[arg(long, short, value_name = "PATH", default_value = config::DEFAULT_PATH, env = "BLOCKHOST_BROKER_CONFIG")]
    config: PathBuf,
    /// Where the database goes (broker.redb).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/blockhost-broker")]
    state_dir: PathBuf,
    /// Replace an existing configuration file (keys and the database are
    /// always kept). Interactively, setup asks instead.
    #[arg(long)]
    force: bool,
    /// The system user the daemon runs as: it owns the keys and the state
    /// directory, its group may read the configuration. Default: the
    /// package's `blockhost-broker` user when it exists, else nobody is
    /// changed (the files belong to whoever runs setup).
    #[arg(long, value_name = "USER")]
    user: Option<String>,

    /// JSON-RPC endpoint of the chain (http:// or https://).
    #[arg(long, value_name = "URL")]
    rpc_url: Option<String>,
    /// The chain the endpoint must serve (1 Ethereum, 11155111 Sepolia, …).
    /// Interactively the endpoint's own is offered.
    #[arg(long, value_name = "N")]
    chain_id: Option<u64>,
    /// The operator wallet: `generate` (the default) for a new key, or a key
    /// file to import (hex secret, mode 0600; it is copied beside the
    /// configuration). An operator.key already there is kept.
    #[arg(long, value_name = "FILE|generate")]
    operator_key: Option<String>,
    /// This broker's BrokerRequests contract: `deploy` (the default) to
    /// deploy one from the operator wallet, or the address of one it owns.
    #[arg(long, value_name = "ADDRESS|deploy")]
    requests_contract: Option<String>,
    /// The BlockHost registry, to check whether this broker is registered
    /// (`none`: skip the check).
    #[arg(long, value_name = "ADDRESS|none")]
    registry_contract: Option<String>,
    /// The region the registry lists for this broker (e.g. eu-west).
    #[arg(long, value_name = "NAME")]
    region: Option<String>,
    /// Without enough funds, wait this long for them (interactively setup
    /// waits until they arrive, or Ctrl-C).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    wait_for_funds: u64,
    /// The operator wallet is reported low below this balance, in ETH; setup
    /// asks for this much (plus the deployment) before it goes on.
    #[arg(long, value_name = "ETH")]
    low_balance_eth: Option<String>,

    /// The block the broker reads requests at: `safe` or `finalized` (the
    /// node's block tags), or N blocks under the latest (0 on a development
    /// chain that mines only on demand). `--confirmations N` is its older
    /// spelling.
    #[arg(long, alias = "confirmations", value_name = "safe|finalized|N", default_value = "1", value_parser = parse_confirm)]
    confirm: config::Confirm,
    /// Seconds between the broker's polls of the chain.
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    poll_interval: u64,

    /// The interface toward the provider (the XDP responder's). Default: the
    /// one holding the IPv6 default route.
    #[arg(long, value_name = "NAME")]
    upstream_interface: Option<String>,
    /// The prefix allocations come from (e.g. 2001:db8:100::/48). Default:
    /// the largest pool `detect-ipv6` finds on the upstream interface.
    #[arg(long, value_name = "PREFIX")]
    pool: Option<String>,
    /// The prefix length each client gets (e.g. 64). /127 and /128 leave a
    /// client nothing usable and are refused, and so is a size that leaves
    /// no allocation (the broker keeps one for itself).
    #[arg(long, value_name = "LEN")]
    allocation_size: Option<String>,
    /// How the XDP responder attaches (auto, driver, generic, tc).
    #[arg(long, value_name = "MODE")]
    ndp_mode: Option<AttachMode>,
    /// The responder's bpffs pin directory (default /sys/fs/bpf/blockhost-broker).
    #[arg(long, value_name = "DIR")]
    ndp_pin_dir: Option<PathBuf>,
    /// The operator's control socket (default: in the runtime directory).
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,

    /// The broker's WireGuard interface.
    #[arg(long, value_name = "NAME")]
    wg_interface: Option<String>,
    /// The port it listens on (UDP).
    #[arg(long, value_name = "PORT")]
    wg_port: Option<String>,
    /// The host:port clients connect to. Default: this host's global IPv4
    /// address and the port.
    #[arg(long, value_name = "HOST:PORT")]
    wg_endpoint: Option<String>,
    /// How WireGuard is driven (auto: the kernel module when present, else
    /// wireguard-go).
    #[arg(long, value_name = "HOW")]
    wg_implementation: Option<WireguardImplementation>,

    /// Serve the HTTP API (status, allocations, release, metrics), and make
    /// its first token.
    #[arg(long, conflicts_with = "no_api")]
    api: bool,
    /// No HTTP API (the default).
    #[arg(long)]
    no_api: bool,
    /// The API's address (a non-loopback one needs TLS, or
    /// --api-insecure-plaintext).
    #[arg(long, value_name = "ADDR:PORT")]
    api_listen: Option<String>,
    /// TLS certificate chain (PEM) for the API.
    #[arg(long, value_name = "FILE", requires = "api_tls_key")]
    api_tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the API.
    #[arg(long, value_name = "FILE", requires = "api_tls_cert")]
    api_tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (tokens cross the network
    /// in clear).
    #[arg(long)]
    api_insecure_plaintext: bool,
    /// The name of the API token setup makes (shown once).
    #[arg(long, value_name = "NAME", default_value = "setup")]
    api_token_name: String,
    /// The wallet allowed into the web manager (`[manager] admins`; served
    /// with the API under /manager/), or `none` (the default: closed).
    #[arg(long, value_name = "ADDRESS|none")]
    manager_admin: Option<String>,

    /// Start (or restart) the broker's systemd service at the end. Default:
    /// interactively asked when the unit is installed; otherwise not.
    #[arg(long, conflicts_with = "no_start")]
    start: bool,
    /// Do not start the service.
    #[arg(long)]
    no_start: bool,
}

/// Shows an optional answer.
struct Shown<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Shown<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("none"),
        }
    }
}

pub fn run(args: SetupArgs) -> anyhow::Result<ExitCode> {
    let interactive = !args.non_interactive;
    if interactive && !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!(
            "standard input is not a terminal: run setup at one, or pass --non-interactive with the answers as flags (see --help)"
        );
    }
    let mut ask = if interactive {
        Asker::terminal()
    } else {
        Asker::non_interactive()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    Setup {
        args,
        ask: &mut ask,
        runtime,
    }
    .run()
}

struct Setup<'a> {
    args: SetupArgs,
    ask: &'a mut Asker,
    runtime: Runtime,
}

impl Setup<'_> {
    fn run(mut self) -> anyhow::Result<ExitCode> {
        let args = &self.args;
        let config_path = std::path::absolute(&args.config)
            .with_context(|| format!("resolving {}", args.config.display()))?;
        let key_dir = config_path
            .parent()
            .context("the configuration's directory")?
            .to_path_buf();
        let owner = files::owner(args.user.as_deref())?;
        self.ask.say("blockhost-broker setup");
        self.ask.say(&format!(
            "  configuration {}, keys beside it, database in {}{}",
            config_path.display(),
            args.state_dir.display(),
            owner
                .as_ref()
                .map(|u| format!("; owned by {}", u.name))
                .unwrap_or_default()
        ));
        if config_path.exists() && !self.replace_config(&config_path)? {
            self.ask
                .say("Left the configuration as it is; nothing was changed.");
            return Ok(ExitCode::SUCCESS);
        }

        self.heading("The chain");
        let chain = self.chain()?;
        files::create_dir(&key_dir, 0o755, None)?;

        self.heading("The operator wallet: it owns the requests contract and pays for answers");
        let operator_key_file = key_dir.join("operator.key");
        let operator = self.operator_wallet(&operator_key_file, owner.as_ref())?;
        let requests = self.requests_contract(&chain, operator.address())?;
        let registry = self.registry_contract(&chain)?;
        let region = self.ask.value(
            Question {
                text: "Region the registry lists (e.g. eu-west)",
                flag: "--region",
                given: self.args.region.clone(),
                default: Some("unspecified".into()),
            },
            |text| {
                if text.is_empty() || text.len() > 64 || text.chars().any(char::is_control) {
                    Err("1 to 64 characters, no control characters".into())
                } else {
                    Ok(text.to_string())
                }
            },
        )?;
        let low_balance_wei = self.ask.value(
            Question {
                text: "Warn when the operator wallet holds less than (ETH)",
                flag: "--low-balance-eth",
                given: self.args.low_balance_eth.clone(),
                default: Some("0.01".into()),
            },
            |text| {
                parse_ether(text)
                    .map(Eth)
                    .map_err(|_| format!("{text:?} is not an amount of ETH (e.g. 0.05)"))
            },
        )?;

        self.heading("Keys: the broker's ECIES key (clients encrypt to it) and WireGuard key");
        let ecies_key_file = key_dir.join("ecies.key");
        let ecies_public = files::ecies_key(&ecies_key_file, owner.as_ref())?;
        self.ask.say(&format!(
            "  ECIES key {} (public {})",
            ecies_key_file.display(),
            hex::encode(ecies_public)
        ));
        let wg_key_file = key_dir.join("wireguard.key");
        let wg_public = files::wireguard_key(&wg_key_file, owner.as_ref())?;
        self.ask.say(&format!(
            "  WireGuard key {} (public {})",
            wg_key_file.display(),
            wg_public.to_base64()
        ));

        self.heading("The network: the upstream interface and the pool clients get prefixes from");
        let host = self
            .runtime
            .block_on(host_ipv6::detect())
            .context("reading the host's IPv6 addresses and routes")?;
        let upstream_interface = self.upstream_interface(&host)?;
        let pool = self.pool(&host, &upstream_interface)?;

        self.heading("WireGuard: where clients connect");
        let wireguard = self.wireguard(&wg_key_file)?;

        self.heading("The HTTP API");
        let api = self.api()?;
        let manager = self.manager(api.is_some())?;

        self.heading("Funds");
        let requests =
            self.fund_and_deploy(&chain, &operator_key_file, requests, low_balance_wei.0)?;

        self.heading("Writing the configuration");
        let state_dir = std::path::absolute(&self.args.state_dir)?;
        files::create_dir(&state_dir, 0o750, owner.as_ref())?;
        let config = Config {
            broker: config::Broker {
                upstream_interface,
                pool,
                ndp_mode: self.args.ndp_mode.unwrap_or_default(),
                ndp_router_flag: true,
                ndp_vlan: None,
                ndp_pin_dir: self
                    .args
                    .ndp_pin_dir
                    .clone()
                    .unwrap_or_else(|| broker_userspace::ndp::DEFAULT_PIN_DIR.into()),
                dns_zone: None,
                control_socket: self.args.control_socket.clone(),
                pipeline_answers: true,
            },
            wireguard,
            api,
            manager,
            database: config::Database::at(state_dir.join("broker.redb")),
            onchain: config::Onchain {
                rpc_url: chain.rpc_url.clone(),
                chain_id: chain.chain_id,
                requests_contract: requests,
                registry_contract: registry,
                legacy_requests_contracts: Vec::new(),
                operator_key_file,
                ecies_key_file,
                poll_interval_secs: self.args.poll_interval,
                confirm: self.args.confirm,
                start_request_id: 1,
                max_requests_per_poll: config::DEFAULT_MAX_REQUESTS_PER_POLL,
                log_range_blocks: config::DEFAULT_LOG_RANGE_BLOCKS,
                low_balance_wei: low_balance_wei.0,
            },
        };
        files::write_config(&config_path, &config, owner.as_ref())?;
        // What `run` will read: the same checks as `check-config`.
        Config::load(&config_path).map_err(|e| {
            anyhow::anyhow!("the configuration written does not check (please report this):\n{e}")
        })?;
        self.ask.say(&format!(
            "  wrote {} (check-config: ok)",
            config_path.display()
        ));
        let token = self.api_token(&config, owner.as_ref())?;

        let registered = match registry {
            Some(registry) => Some(self.registered(&chain, registry, operator.address())?),
            None => None,
        };
        self.summary(&Summary {
            config: &config,
            config_path: &config_path,
            operator: operator.address(),
            ecies_public: &ecies_public,
            region: &region,
            registered,
            token: token.as_deref(),
        });
        self.start(&config_path)?;
        Ok(ExitCode::SUCCESS)
    }

    fn heading(&mut self, text: &str) {
        self.ask.say("");
        self.ask.say(&format!("== {text}"));
    }

    fn replace_config(&mut self, path: &Path) -> anyhow::Result<bool> {
        if self.args.force {
            return Ok(true);
        }
        if !self.ask.interactive() {
            bail!(
                "{} exists; pass --force to replace it (keys and the database are kept)",
                path.display()
            );
        }
        Ok(self.ask.yes_no(
            &format!(
                "{} exists. Replace it? Keys and the database are kept",
                path.display()
            ),
            "--force",
            None,
            Some(false),
        )?)
    }

    fn summary(&mut self, s: &Summary<'_>) {
        let c = s.config;
        let pool = c.broker.pool;
        let capacity = pool.slots() - 1;
        self.heading("Done");
        for line in [
            format!("configuration  {}", s.config_path.display()),
            format!("operator       {}", s.operator),
            format!("requests       {}", c.onchain.requests_contract),
            format!(
                "pool           {} in /{} allocations: {} for clients",
                pool.upstream(),
                pool.allocation_size(),
                thousands(capacity)
            ),
            format!(
                "wireguard      {} on {} (port {})",
                c.wireguard.endpoint, c.wireguard.interface, c.wireguard.listen_port
            ),
        ] {
            self.ask.say(&format!("  {line}"));
        }
        if let Some(api) = &c.api {
            self.ask.say(&format!("  api            {}", api.listen));
        }
        for admin in &c.manager.admins {
            self.ask.say(&format!(
                "  manager        /manager/ on the API, for {admin}"
            ));
        }
        if let Some(token) = s.token {
            self.ask.say(&format!(
                "  API token {:?} (shown this once; send it as `Authorization: Bearer …`):",
                self.args.api_token_name
            ));
            self.ask.say(token);
        }
        self.ask.say("");
        match s.registered {
            Some(true) => self
                .ask
                .say("The registry lists this operator: clients can find the broker."),
            _ => {
                if s.registered == Some(false) {
                    self.ask
                        .say("The registry does not list this operator yet.");
                }
                self.ask
                    .say("For the BlockHost registry's owner (registerBroker):");
                for line in [
                    format!("operator           {}", s.operator),
                    format!("requestsContract   {}", c.onchain.requests_contract),
                    format!("encryptionPubkey   0x{}", hex::encode(s.ecies_public)),
                    format!("region             {}", s.region),
                    format!("capacity           {capacity}"),
                ] {
                    self.ask.say(&format!("  {line}"));
                }
            }
        }
    }

    fn start(&mut self, config_path: &Path) -> anyhow::Result<()> {
        let installed = std::process::Command::new("systemctl")
            .args(["cat", UNIT])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let given = match (self.args.start, self.args.no_start) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        };
        if !installed {
            if given == Some(true) {
                bail!(
                    "--start: the systemd unit {UNIT} is not installed (install the blockhost-broker package)"
                );
            }
            self.ask.say("");
            self.ask.say(&format!(
                "Start the broker: blockhost-broker run --config {}",
                config_path.display()
            ));
            return Ok(());
        }
        let start = self.ask.yes_no(
            &format!("Start the broker now (systemctl enable {UNIT}, then restart it)"),
            "--start / --no-start",
            given,
            self.ask.interactive().then_some(true).or(Some(false)),
        )?;
        if !start {
            self.ask
                .say(&format!("Start it with: systemctl enable --now {UNIT}"));
            return Ok(());
        }
        for args in [["enable", UNIT], ["restart", UNIT]] {
            let status = std::process::Command::new("systemctl")
                .args(args)
                .status()
                .with_context(|| format!("running systemctl {}", args.join(" ")))?;
            anyhow::ensure!(
                status.success(),
                "systemctl {} failed ({status}); see journalctl -u {UNIT}",
                args.join(" ")
            );
        }
        self.ask.say(&format!(
            "The broker runs: `blockhost-broker status` shows it, `journalctl -u {UNIT}` its log."
        ));
        Ok(())
    }
}

struct Summary<'a> {
    config: &'a Config,
    config_path: &'a Path,
    operator: Address,
    ecies_public: &'a [u8; 65],
    region: &'a str,
    registered: Option<bool>,
    token: Option<&'a str>,
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn parse_confirm(text: &str) -> Result<config::Confirm, String> {
    config::Confirm::parse(text)
        .ok_or_else(|| format!("\"{text}\" is not safe, finalized or a number of blocks"))
}
