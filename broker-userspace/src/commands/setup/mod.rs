//! `blockhost-broker setup`: from nothing to a running broker. The
//! questions come first, checked as they are answered (the endpoint, the
//! contract, the pool); then what costs money or changes the host: funds,
//! the deployment, the files, the API token, the service.
//!
//! Nothing is lost to an interruption: keys are written (and kept) as soon
//! as they exist, the configuration only once everything it names exists;
//! running `setup` again reuses the keys it finds.

mod ask;
mod files;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use alloy::{
    primitives::{Address, U256, utils::parse_ether},
    signers::local::PrivateKeySigner,
};
use anyhow::{Context as _, bail};
use broker_contracts::{
    BrokerRegistry, BrokerRequests,
    chain::{self, ChainOptions, Connection, ether},
    deploy::{self, Progress},
    keys, protocol,
};
use broker_userspace::{
    config::{self, Config, WireguardImplementation},
    host_ipv4,
    host_ipv6::{self, HostIpv6},
    ipam::Pool,
    ndp::AttachMode,
    numbers::thousands,
    wallet,
};
use ipnet::Ipv6Net;
use tokio::runtime::Runtime;

use self::ask::{Asker, Question};

/// What the operator tells the registry owner (also in --help).
const REGISTRATION: &str = "\
Clients only find brokers listed in the BlockHost registry (BrokerRegistry). At the end,
setup prints what its owner needs to register this broker: the operator address, the
requests contract, the ECIES public key, the region and the capacity.";

/// How often the balance is read while waiting for funds.
const FUNDS_POLL: Duration = Duration::from_secs(5);

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

    /// Blocks on top of a request's before the broker reads it (0 on a
    /// development chain that mines only on demand).
    #[arg(long, value_name = "N", default_value_t = 1)]
    confirmations: u64,
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

    /// Start (or restart) the broker's systemd service at the end. Default:
    /// interactively asked when the unit is installed; otherwise not.
    #[arg(long, conflicts_with = "no_start")]
    start: bool,
    /// Do not start the service.
    #[arg(long)]
    no_start: bool,
}

/// The operator's key: made here, imported, or found from an earlier run.
enum Wallet {
    Generate,
    Import(PathBuf, PrivateKeySigner),
}

/// The chain as answered: the endpoint (shown redacted) and its chain.
struct Chain {
    rpc_url: String,
    shown: String,
    chain_id: u64,
}

impl std::fmt::Display for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (chain {})", self.shown, self.chain_id)
    }
}

/// `deploy`, or a contract the operator owns.
#[derive(Clone, Copy)]
enum Requests {
    Deploy,
    Existing(Address),
}

impl std::fmt::Display for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Requests::Deploy => f.write_str("deploy a new one"),
            Requests::Existing(a) => write!(f, "{a}"),
        }
    }
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
                ndp_pin_dir: self
                    .args
                    .ndp_pin_dir
                    .clone()
                    .unwrap_or_else(|| broker_userspace::ndp::DEFAULT_PIN_DIR.into()),
                dns_zone: None,
                control_socket: self.args.control_socket.clone(),
            },
            wireguard,
            api,
            database_path: state_dir.join("broker.redb"),
            onchain: config::Onchain {
                rpc_url: chain.rpc_url.clone(),
                chain_id: chain.chain_id,
                requests_contract: requests,
                registry_contract: registry,
                legacy_requests_contracts: Vec::new(),
                operator_key_file,
                ecies_key_file,
                poll_interval_secs: self.args.poll_interval,
                confirmations: self.args.confirmations,
                start_request_id: 1,
                max_requests_per_poll: 50,
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

    fn chain(&mut self) -> anyhow::Result<Chain> {
        let runtime = &self.runtime;
        let served = self.ask.value(
            Question {
                text: "JSON-RPC endpoint of the chain",
                flag: "--rpc-url",
                given: self.args.rpc_url.clone(),
                default: None,
            },
            |url| {
                let (endpoint, _) =
                    chain::redact::Endpoint::parse(url).map_err(|e| e.to_string())?;
                let chain_id = runtime
                    .block_on(Connection::chain_id_at(url))
                    .map_err(|e| e.to_string())?;
                Ok(Chain {
                    rpc_url: url.to_string(),
                    shown: endpoint.shown().to_string(),
                    chain_id,
                })
            },
        )?;
        let served_id = served.chain_id;
        // A script states the chain it means; at a terminal the operator
        // confirms the endpoint's.
        let default = self.ask.interactive().then(|| served_id.to_string());
        self.ask.value(
            Question {
                text: "Chain id",
                flag: "--chain-id",
                given: self.args.chain_id.map(|id| id.to_string()),
                default,
            },
            |text| match text.parse::<u64>() {
                Ok(id) if id == served_id => Ok(id),
                Ok(id) => Err(format!(
                    "{} serves chain {served_id}, not {id}",
                    served.shown
                )),
                Err(_) => Err(format!("{text:?} is not a chain id")),
            },
        )?;
        Ok(served)
    }

    fn operator_wallet(
        &mut self,
        path: &Path,
        owner: Option<&files::User>,
    ) -> anyhow::Result<PrivateKeySigner> {
        if path.exists() {
            let signer = keys::read_private_signer(path).with_context(|| {
                format!("the operator key {} from an earlier run", path.display())
            })?;
            if let Some(given) = &self.args.operator_key
                && given != "generate"
            {
                let imported = keys::read_private_signer(Path::new(given))
                    .with_context(|| format!("--operator-key {given}"))?;
                anyhow::ensure!(
                    imported.address() == signer.address(),
                    "{} already holds the key of {}, not {}'s {}: move it away first (whatever its address holds is lost with it)",
                    path.display(),
                    signer.address(),
                    given,
                    imported.address()
                );
            }
            self.ask.say(&format!(
                "  operator {} (the key in {}, kept)",
                signer.address(),
                path.display()
            ));
            return Ok(signer);
        }
        let choice = self.ask.value(
            Question {
                text: "Operator wallet: `generate` a new key, or the path of a key file to import",
                flag: "--operator-key",
                given: self.args.operator_key.clone(),
                default: Some("generate".into()),
            },
            |text| {
                if text == "generate" {
                    return Ok(WalletChoice(Wallet::Generate));
                }
                let source = PathBuf::from(text);
                keys::read_private_signer(&source)
                    .map(|signer| WalletChoice(Wallet::Import(source, signer)))
                    .map_err(|e| e.to_string())
            },
        )?;
        let signer = match choice.0 {
            Wallet::Generate => {
                wallet::generate(path, false)?;
                keys::read_private_signer(path)?
            }
            Wallet::Import(_, signer) => {
                keys::create_secret(path, &signer.to_bytes().0)
                    .with_context(|| format!("writing {}", path.display()))?;
                signer
            }
        };
        files::give(path, owner)?;
        self.ask.say(&format!(
            "  operator {} (key written to {}, mode 0600)",
            signer.address(),
            path.display()
        ));
        Ok(signer)
    }

    fn requests_contract(&mut self, chain: &Chain, operator: Address) -> anyhow::Result<Requests> {
        let runtime = &self.runtime;
        Ok(self.ask.value(
            Question {
                text: "BrokerRequests contract: `deploy` a new one from the operator wallet, or the address of yours",
                flag: "--requests-contract",
                given: self.args.requests_contract.clone(),
                default: Some("deploy".into()),
            },
            |text| {
                if text == "deploy" {
                    return Ok(Requests::Deploy);
                }
                let address: Address = text
                    .parse()
                    .map_err(|_| format!("{text:?} is not an address (0x and 40 hex digits) or `deploy`"))?;
                runtime
                    .block_on(owned_requests_contract(chain, address, operator))
                    .map(|()| Requests::Existing(address))
            },
        )?)
    }

    fn registry_contract(&mut self, chain: &Chain) -> anyhow::Result<Option<Address>> {
        let runtime = &self.runtime;
        let shown = self.ask.value(
            Question {
                text: "BrokerRegistry contract, to check this broker's registration (`none`: skip)",
                flag: "--registry-contract",
                given: self.args.registry_contract.clone(),
                default: Some("none".into()),
            },
            |text| {
                if text == "none" {
                    return Ok(Shown(None));
                }
                let address: Address = text
                    .parse()
                    .map_err(|_| format!("{text:?} is not an address or `none`"))?;
                runtime
                    .block_on(async {
                        connect(chain)
                            .await?
                            .require_contract("the registry", address)
                            .await
                    })
                    .map(|()| Shown(Some(address)))
                    .map_err(|e| e.to_string())
            },
        )?;
        Ok(shown.0)
    }

    fn upstream_interface(&mut self, host: &HostIpv6) -> anyhow::Result<String> {
        self.ask.say(&indent(&host.to_text()));
        Ok(self.ask.value(
            Question {
                text: "Upstream interface (toward the provider's router)",
                flag: "--upstream-interface",
                given: self.args.upstream_interface.clone(),
                default: host.upstream.as_ref().map(|u| u.interface.clone()),
            },
            |name| {
                let known = std::ffi::CString::new(name)
                    .ok()
                    // SAFETY: a NUL-terminated name; the call only reads it.
                    .is_some_and(|c| unsafe { libc::if_nametoindex(c.as_ptr()) } != 0);
                if known {
                    Ok(name.to_string())
                } else {
                    Err(format!("this host has no interface {name:?}"))
                }
            },
        )?)
    }

    fn pool(&mut self, host: &HostIpv6, upstream: &str) -> anyhow::Result<Pool> {
        let candidates: Vec<Ipv6Net> = host
            .pools
            .iter()
            .filter(|p| !p.allocation_sizes.is_empty())
            .map(|p| p.prefix)
            .collect();
        if !candidates.is_empty() && self.ask.interactive() && self.args.pool.is_none() {
            self.ask.say("  Pools found:");
            for (i, p) in candidates.iter().enumerate() {
                self.ask.say(&format!("    {}) {p}", i + 1));
            }
        }
        let default = host
            .pools
            .iter()
            .find(|p| p.upstream && p.interface.as_deref() == Some(upstream))
            .or_else(|| host.pools.first())
            .filter(|p| !p.allocation_sizes.is_empty())
            .map(|p| p.prefix.to_string());
        let upstream_prefix = self.ask.value(
            Question {
                text: "Pool (a prefix, or a number from the list)",
                flag: "--pool",
                given: self.args.pool.clone(),
                default,
            },
            |text| {
                let prefix = match text.parse::<usize>() {
                    Ok(n) if (1..=candidates.len()).contains(&n) => candidates[n - 1],
                    Ok(_) => {
                        return Err(format!("pick 1 to {}, or type a prefix", candidates.len()));
                    }
                    Err(_) => text.parse::<Ipv6Net>().map_err(|_| {
                        format!("{text:?} is not an IPv6 prefix (e.g. 2001:db8:100::/48)")
                    })?,
                };
                if prefix.trunc() != prefix {
                    return Err(format!(
                        "{prefix} has host bits set: did you mean {}?",
                        prefix.trunc()
                    ));
                }
                if host_ipv6::allocation_sizes(prefix).is_empty() {
                    return Err(format!("{prefix} is too small to give any allocation"));
                }
                Ok(prefix)
            },
        )?;
        let sizes = host_ipv6::allocation_sizes(upstream_prefix);
        let (shortest, longest) = (sizes[0].prefix_len, sizes[sizes.len() - 1].prefix_len);
        let suggested = if upstream_prefix.prefix_len() < 64 {
            64
        } else {
            (upstream_prefix.prefix_len() + 8).min(longest)
        };
        let size = self.ask.value(
            Question {
                text: "Allocation size: the prefix length each client gets",
                flag: "--allocation-size",
                given: self.args.allocation_size.clone(),
                default: Some(suggested.to_string()),
            },
            |text| {
                let len: u8 = text
                    .trim_start_matches('/')
                    .parse()
                    .map_err(|_| format!("{text:?} is not a prefix length (e.g. 64)"))?;
                if len > host_ipv6::LONGEST_ALLOCATION {
                    return Err(format!(
                        "/{len} leaves a client no usable prefix (/{} at most)",
                        host_ipv6::LONGEST_ALLOCATION
                    ));
                }
                match sizes.iter().find(|s| s.prefix_len == len) {
                    Some(s) => Ok(Allocations(len, s.allocations)),
                    None => Err(format!(
                        "a /{len} from {upstream_prefix} leaves no allocation (the broker keeps one for itself): pick /{shortest} to /{longest}"
                    )),
                }
            },
        )?;
        Ok(Pool::new(upstream_prefix, size.0)?)
    }

    fn wireguard(&mut self, key_file: &Path) -> anyhow::Result<config::Wireguard> {
        let interface = self.ask.value(
            Question {
                text: "WireGuard interface",
                flag: "--wg-interface",
                given: self.args.wg_interface.clone(),
                default: Some("wg-broker".into()),
            },
            |name| {
                let ok = !name.is_empty()
                    && name.len() <= 15
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if ok {
                    Ok(name.to_string())
                } else {
                    Err("1 to 15 letters, digits, '-', '_' or '.'".into())
                }
            },
        )?;
        let listen_port = self.ask.value(
            Question {
                text: "WireGuard port (UDP)",
                flag: "--wg-port",
                given: self.args.wg_port.clone(),
                default: Some("51820".into()),
            },
            |text| match text.parse::<u16>() {
                Ok(port) if port > 0 => Ok(port),
                _ => Err(format!("{text:?} is not a port (1 to 65535)")),
            },
        )?;
        let detected = self
            .runtime
            .block_on(host_ipv4::endpoint_address())
            .context("reading the host's IPv4 addresses")?;
        let endpoint = self.ask.value(
            Question {
                text: "Endpoint clients connect to (host:port)",
                flag: "--wg-endpoint",
                given: self.args.wg_endpoint.clone(),
                default: detected.map(|a| format!("{a}:{listen_port}")),
            },
            |text| {
                if protocol::is_endpoint(text) {
                    Ok(text.to_string())
                } else {
                    Err(format!(
                        "{text:?} is not host:port (e.g. 203.0.113.10:{listen_port} or [2001:db8::1]:{listen_port})"
                    ))
                }
            },
        )?;
        Ok(config::Wireguard {
            interface,
            listen_port,
            endpoint,
            private_key_file: key_file.to_path_buf(),
            implementation: self.args.wg_implementation.unwrap_or_default(),
            handshake_timeout_secs: 120,
        })
    }

    fn api(&mut self) -> anyhow::Result<Option<config::Api>> {
        let given = match (self.args.api, self.args.no_api) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        };
        let on = self.ask.yes_no(
            "Serve the HTTP API (status, allocations, release, metrics; bearer tokens)",
            "--api / --no-api",
            given,
            Some(false),
        )?;
        if !on {
            return Ok(None);
        }
        let listen = self.ask.value(
            Question {
                text: "API address",
                flag: "--api-listen",
                given: self.args.api_listen.clone(),
                default: Some(config::DEFAULT_API_LISTEN.into()),
            },
            |text| {
                text.parse::<SocketAddr>()
                    .map_err(|_| format!("{text:?} is not address:port (e.g. 127.0.0.1:8080)"))
            },
        )?;
        let (tls_cert, tls_key) = (
            self.args.api_tls_cert.clone(),
            self.args.api_tls_key.clone(),
        );
        let insecure_plaintext = self.args.api_insecure_plaintext;
        if !listen.ip().is_loopback() && tls_cert.is_none() && !insecure_plaintext {
            bail!(
                "the API on {listen} (not loopback) needs TLS: pass --api-tls-cert and --api-tls-key, or --api-insecure-plaintext to send tokens in clear"
            );
        }
        Ok(Some(config::Api {
            listen,
            tls_cert,
            tls_key,
            insecure_plaintext,
        }))
    }

    /// Waits for what the deployment and the reserve need, then deploys
    /// when asked to: the requests contract's address.
    fn fund_and_deploy(
        &mut self,
        chain: &Chain,
        key_file: &Path,
        requests: Requests,
        reserve: U256,
    ) -> anyhow::Result<Address> {
        let operator = keys::read_private_signer(key_file)?;
        let address = operator.address();
        let deployment = match requests {
            Requests::Deploy => Some(
                self.runtime
                    .block_on(deploy::requests_deployment_cost(
                        &chain.rpc_url,
                        chain.chain_id,
                        operator.clone(),
                    ))
                    .context("pricing the deployment")?,
            ),
            Requests::Existing(_) => None,
        };
        let needed = reserve + deployment.map_or(U256::ZERO, |c| c.total());
        let what = match deployment {
            Some(cost) => format!(
                "{} ETH: the deployment (up to {cost}) and the low-balance reserve ({} ETH)",
                ether(needed),
                ether(reserve)
            ),
            None => format!("{} ETH (the low-balance reserve)", ether(needed)),
        };
        let mut balance = self.balance(chain, address)?;
        self.ask.say(&format!(
            "  {address} holds {} ETH; the broker needs {what}",
            ether(balance)
        ));
        if balance < needed {
            balance = self.wait_for_funds(chain, address, needed, deployment.is_some())?;
        }
        if balance < needed && deployment.is_none() {
            self.ask.say(&format!(
                "  ! {address} holds less than the reserve: the broker cannot answer requests until it is funded"
            ));
        }
        let Some(_) = deployment else {
            let Requests::Existing(contract) = requests else {
                unreachable!("no deployment, an existing contract")
            };
            return Ok(contract);
        };
        self.ask.say("  deploying BrokerRequests…");
        let mut lines = Vec::new();
        let deployed = self
            .runtime
            .block_on(deploy::deploy_requests_with_progress(
                &chain.rpc_url,
                chain.chain_id,
                operator,
                |step| match step {
                    Progress::ChainOk { .. } | Progress::Funded { .. } => {}
                    Progress::Sent { transaction } => lines.push(format!(
                        "  transaction {transaction}: waiting for the receipt…"
                    )),
                },
            ))
            .context("deploying BrokerRequests")?;
        for line in lines {
            self.ask.say(&line);
        }
        self.ask.say(&format!(
            "  BrokerRequests at {} (block {}, gas used {})",
            deployed.address, deployed.block, deployed.gas_used
        ));
        Ok(deployed.address)
    }

    fn balance(&self, chain: &Chain, address: Address) -> anyhow::Result<U256> {
        Ok(self
            .runtime
            .block_on(wallet::balance(&chain.rpc_url, chain.chain_id, address))
            .context("reading the operator's balance")?
            .wei)
    }

    /// Interactively until the funds arrive; otherwise up to
    /// --wait-for-funds. The balance at the end.
    fn wait_for_funds(
        &mut self,
        chain: &Chain,
        address: Address,
        needed: U256,
        required: bool,
    ) -> anyhow::Result<U256> {
        let interactive = self.ask.interactive();
        let limit = Duration::from_secs(self.args.wait_for_funds);
        if !interactive && limit.is_zero() {
            if required {
                bail!(
                    "{address} holds too little to deploy: send at least {} ETH to it on chain {} and run setup again (the keys are kept), or pass --wait-for-funds SECS",
                    ether(needed),
                    chain.chain_id
                );
            }
            return self.balance(chain, address);
        }
        self.ask.say(&format!(
            "  Send at least {} ETH to {address} on chain {}.",
            ether(needed),
            chain.chain_id
        ));
        self.ask.say(if interactive {
            "  Waiting for the funds (read every 5 s; Ctrl-C stops: the wallet is kept, run setup again later)…"
        } else {
            "  Waiting for the funds…"
        });
        let started = Instant::now();
        let mut last = None;
        loop {
            let balance = self.balance(chain, address)?;
            if balance >= needed {
                self.ask.say(&format!("  funded: {} ETH", ether(balance)));
                return Ok(balance);
            }
            if last != Some(balance) {
                self.ask.say(&format!("  balance {} ETH", ether(balance)));
                last = Some(balance);
            }
            if !interactive && started.elapsed() >= limit {
                if required {
                    bail!(
                        "{address} was not funded within {} s: send at least {} ETH and run setup again (the keys are kept)",
                        limit.as_secs(),
                        ether(needed)
                    );
                }
                return Ok(balance);
            }
            std::thread::sleep(FUNDS_POLL);
        }
    }

    /// Makes the API's first token when the API is on and the token does
    /// not exist yet; its secret.
    fn api_token(
        &mut self,
        config: &Config,
        owner: Option<&files::User>,
    ) -> anyhow::Result<Option<String>> {
        if config.api.is_none() {
            return Ok(None);
        }
        let name = self.args.api_token_name.clone();
        let secret = match super::token::create_token(config, name.clone(), false) {
            Ok(secret) => secret,
            Err(e) if e.to_string().contains("exists") => {
                self.ask.say(&format!(
                    "  the API token {name:?} exists (from an earlier run); `blockhost-broker token create` makes another"
                ));
                return Ok(None);
            }
            Err(e) => return Err(e.context("making the API token")),
        };
        files::give(&config.database_path, owner)?;
        Ok(Some(secret))
    }

    fn registered(
        &self,
        chain: &Chain,
        registry: Address,
        operator: Address,
    ) -> anyhow::Result<bool> {
        self.runtime
            .block_on(async {
                let conn = connect(chain).await?;
                let registry = BrokerRegistry::new(registry, conn.provider());
                conn.view("isOperator", registry.isOperator(operator).call())
                    .await
            })
            .context("reading the registry")
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

/// A wallet answer, shown without its key.
struct WalletChoice(Wallet);

impl std::fmt::Display for WalletChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Wallet::Generate => f.write_str("generate a new key"),
            Wallet::Import(path, signer) => {
                write!(f, "import {} ({})", path.display(), signer.address())
            }
        }
    }
}

/// An amount of ether, shown in ETH.
struct Eth(U256);

impl std::fmt::Display for Eth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ETH", ether(self.0))
    }
}

/// An allocation size and how many allocations it gives.
struct Allocations(u8, u128);

impl std::fmt::Display for Allocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{} ({} allocations)", self.0, thousands(self.1))
    }
}

async fn connect(chain: &Chain) -> Result<Connection, chain::ChainError> {
    Connection::connect(
        &chain.rpc_url,
        chain.chain_id,
        None,
        ChainOptions::default(),
    )
    .await
}

/// `address` is a BrokerRequests contract `operator` owns: the broker
/// answers from the operator key, which only its owner may.
async fn owned_requests_contract(
    chain: &Chain,
    address: Address,
    operator: Address,
) -> Result<(), String> {
    let conn = connect(chain).await.map_err(|e| e.to_string())?;
    conn.require_contract("the requests contract", address)
        .await
        .map_err(|e| e.to_string())?;
    let contract = BrokerRequests::new(address, conn.provider());
    let owner = conn
        .view("owner", contract.owner().call())
        .await
        .map_err(|e| format!("{address} does not answer as BrokerRequests: {e}"))?;
    if owner != operator {
        return Err(format!(
            "{address} is owned by {owner}, not by the operator {operator}: the broker could not answer its requests"
        ));
    }
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
