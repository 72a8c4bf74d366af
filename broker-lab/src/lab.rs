//! The running system: a chain with the contracts, the broker daemon and
//! the BlockHost servers with their NFT contracts and wallets, in the
//! namespaces of [`Topology`]. Everything is stopped and removed when the
//! lab drops, also after an error or a failed test.

use std::{
    fs,
    io::Write as _,
    net::IpAddr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use alloy::{
    network::EthereumWallet,
    primitives::Address,
    providers::{DynProvider, Provider as _, ProviderBuilder},
};
use anyhow::{Context as _, bail};
use broker_contracts::{
    TestNFT,
    devchain::{self, DevChain, anvil_signer},
    keys,
};
use wireguard_control::Key;

use crate::{
    narrate::Narrator,
    netns::{Netns, run},
    process::{Process, stop_wireguard_go, tail},
    topology::{
        ALLOCATION_SIZE, BROKER_V4, CHAIN_ADDR, RPC_PORT, SERVERS, Topology, UPSTREAM_IF,
        UPSTREAM_PREFIX, WG_PORT,
    },
};

pub struct Options {
    /// Prefix of every name the lab gives: namespaces, WireGuard
    /// interfaces, the pin directory.
    pub names: String,
    /// Where keys, configurations, the database and logs go.
    pub dir: PathBuf,
    pub handshake_timeout_secs: u64,
}

/// A BlockHost server: its namespace (in the topology), wallet, NFT
/// contract and the files of its `broker-client`.
pub struct Server {
    pub number: usize,
    pub wallet: Address,
    pub wallet_key: PathBuf,
    pub nft: Address,
    /// broker-client's `--config-dir`.
    pub config_dir: PathBuf,
    pub wg_config_dir: PathBuf,
    pub interface: String,
}

/// What a `broker-client` run printed.
pub struct ClientOutput {
    pub stdout: String,
    pub stderr: String,
}

pub struct Lab {
    broker: Option<Process>,
    names: String,
    pub servers: Vec<Server>,
    pub broker_interface: String,
    pub pin_dir: PathBuf,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub narrator: Narrator,
    bins: PathBuf,
    pub chain: DevChain,
    pub net: Topology,
}

impl Lab {
    /// Builds the namespaces, starts the chain (the calling thread moves
    /// into the chain's namespace for good: run this on a thread of its
    /// own with a current-thread runtime), deploys the contracts, gives each
    /// server a wallet and an NFT contract, and writes the broker's keys and
    /// configuration. The broker is started by [`Lab::start_broker`].
    pub async fn start(options: Options, narrator: Narrator) -> anyhow::Result<Lab> {
        let bins = binaries_dir()?;
        fs::create_dir_all(&options.dir)
            .with_context(|| format!("creating {}", options.dir.display()))?;

        narrator.step("Network namespaces: a chain host, the provider's router, an internet host, the broker and two BlockHost servers");
        let net = Topology::build(&options.names)?;
        narrator.done(&format!(
            "namespaces {}{{chain,router,internet,broker,server1,server2}}",
            options.names
        ));

        narrator.step(
            "The chain: anvil, then BrokerRegistry, BrokerRequests and the broker's registration",
        );
        net.chain.enter()?;
        let chain = DevChain::start(&devchain::Options {
            host: CHAIN_ADDR.parse::<IpAddr>()?,
            port: Some(RPC_PORT),
            region: "lab".into(),
            capacity: 0,
        })
        .await
        .context("starting the chain")?;
        narrator.done(&format!(
            "anvil at {}; registry {}, requests {} (broker id {})",
            chain.rpc_url, chain.registry, chain.requests, chain.broker_id
        ));

        let broker_interface = format!("{}wg", options.names);
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/{}",
            options.names.trim_end_matches('-')
        ));
        let config = write_broker_files(&options, &chain, &broker_interface, &pin_dir)?;
        let mut lab = Lab {
            broker: None,
            names: options.names.clone(),
            servers: Vec::new(),
            broker_interface,
            pin_dir,
            dir: options.dir.clone(),
            config,
            narrator,
            bins,
            chain,
            net,
        };

        lab.narrator.step(
            "BlockHost servers: a wallet and an NFT contract (ERC-721, owner() = the wallet) each",
        );
        for number in 1..=SERVERS {
            let server = lab.make_server(&options, number).await?;
            lab.narrator.done(&format!(
                "server{number}: wallet {}, NFT contract {}",
                server.wallet, server.nft
            ));
            lab.servers.push(server);
        }
        Ok(lab)
    }

    async fn make_server(&self, options: &Options, number: usize) -> anyhow::Result<Server> {
        // anvil accounts 0 and 1 are the deployer and the operator.
        let signer = anvil_signer(1 + number);
        let dir = options.dir.join(format!("server{number}"));
        fs::create_dir_all(&dir)?;
        let wallet_key = dir.join("wallet.key");
        keys::write_secret(&wallet_key, &signer.to_bytes().0)?;
        let provider: DynProvider = ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer.clone()))
            .connect_http(self.chain.rpc_url.parse()?)
            .erased();
        let nft = *TestNFT::deploy(provider, signer.address())
            .await
            .with_context(|| format!("deploying server{number}'s NFT contract"))?
            .address();
        Ok(Server {
            number,
            wallet: signer.address(),
            wallet_key,
            nft,
            config_dir: dir.join("etc-blockhost"),
            wg_config_dir: dir.join("etc-wireguard"),
            interface: format!("{}s{number}", options.names),
        })
    }

    /// Starts `blockhost-broker run` in the broker's namespace and waits
    /// until its NDP responder and tunnel interface are up.
    pub fn start_broker(&mut self) -> anyhow::Result<()> {
        self.narrator
            .step("The broker: blockhost-broker run (XDP NDP responder on its upstream interface, WireGuard, watching BrokerRequests)");
        let mut cmd = self.net.broker.command(self.binary("blockhost-broker"));
        cmd.args(["run", "--config"]).arg(&self.config);
        let log = self.dir.join("broker.log");
        let mut broker = Process::spawn("the broker", cmd, log)?;
        let attached = broker.wait_log("NDP responder attached", Duration::from_secs(30))?;
        broker.wait_log(
            "kernel reconciled with the database",
            Duration::from_secs(30),
        )?;
        self.narrator
            .done(&format!("pid {}; {}", broker.pid(), message_of(&attached)));
        self.narrator
            .detail(&format!("its log: {}", broker.log.display()));
        self.broker = Some(broker);
        Ok(())
    }

    /// Stops the broker with SIGTERM (it must exit 0).
    pub fn stop_broker(&mut self) -> anyhow::Result<()> {
        if let Some(mut broker) = self.broker.take() {
            let status = broker.stop(Duration::from_secs(30))?;
            if !status.success() {
                bail!(
                    "the broker exited with {status}:\n{}",
                    tail(&broker.log_text(), 20)
                );
            }
        }
        Ok(())
    }

    /// Waits until the broker logs a line with all of `needles`.
    pub fn wait_broker_log(&mut self, needles: &[&str], limit: Duration) -> anyhow::Result<String> {
        let broker = self.broker.as_mut().context("the broker is not running")?;
        broker.wait_log_all(needles, limit)
    }

    pub fn broker_log(&self) -> String {
        self.broker
            .as_ref()
            .map(Process::log_text)
            .unwrap_or_default()
    }

    /// Fails if the broker exited.
    pub fn check_broker(&mut self) -> anyhow::Result<()> {
        match self.broker.as_mut().map(|b| (b.exited(), b.log_text())) {
            Some((Some(status), log)) => bail!("the broker exited ({status}):\n{}", tail(&log, 20)),
            Some((None, _)) => Ok(()),
            None => bail!("the broker is not running"),
        }
    }

    /// Runs `broker-client ARGS` in server `number`'s namespace, set up
    /// through the environment as an operator would (RPC, registry, its
    /// files and tunnel). An error, with what it printed, unless it exits 0.
    pub fn client(&self, number: usize, args: &[&str]) -> anyhow::Result<ClientOutput> {
        let child = self.spawn_client(number, args)?;
        self.finish_client(number, args, child)
    }

    /// Starts `broker-client ARGS` as [`Lab::client`] does, without waiting.
    pub fn spawn_client(&self, number: usize, args: &[&str]) -> anyhow::Result<Child> {
        let server = &self.servers[number - 1];
        let mut cmd = self.net.servers[number - 1].command(self.binary("broker-client"));
        cmd.args(args)
            .env("BLOCKHOST_RPC_URL", &self.chain.rpc_url)
            .env("BLOCKHOST_CHAIN_ID", self.chain.chain_id.to_string())
            .env(
                "BLOCKHOST_REGISTRY_CONTRACT",
                self.chain.registry.to_string(),
            )
            .env("BLOCKHOST_CONFIG_DIR", &server.config_dir)
            .env("BLOCKHOST_WALLET_KEY", &server.wallet_key)
            .env("BLOCKHOST_WG_INTERFACE", &server.interface)
            .env("BLOCKHOST_WG_CONFIG_DIR", &server.wg_config_dir)
            .env("BLOCKHOST_SERVICE_MANAGER", "direct")
            .env("BLOCKHOST_POLL_INTERVAL", "1")
            .env("BLOCKHOST_TIMEOUT", "120")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = client_shown(number, args);
        self.narrator.command(&shown);
        cmd.spawn().with_context(|| format!("running {shown}"))
    }

    /// Waits for a client started by [`Lab::spawn_client`].
    pub fn finish_client(
        &self,
        number: usize,
        args: &[&str],
        child: Child,
    ) -> anyhow::Result<ClientOutput> {
        let shown = client_shown(number, args);
        let out = child
            .wait_with_output()
            .with_context(|| format!("running {shown}"))?;
        let output = ClientOutput {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        self.narrator.output(&output.stderr);
        self.narrator.output(&output.stdout);
        if !out.status.success() {
            bail!(
                "{shown}: {}\n{}{}",
                out.status,
                output.stderr,
                output.stdout
            );
        }
        Ok(output)
    }

    /// Server `number`'s `broker-allocation.json`.
    pub fn allocation(&self, number: usize) -> anyhow::Result<serde_json::Value> {
        let path = self.servers[number - 1]
            .config_dir
            .join("broker-allocation.json");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The broker's answered prefix for server `number`, from its file.
    pub fn prefix(&self, number: usize) -> anyhow::Result<ipnet::Ipv6Net> {
        let value = self.allocation(number)?;
        let prefix = value["prefix"]
            .as_str()
            .context("no prefix in broker-allocation.json")?;
        prefix
            .parse()
            .with_context(|| format!("{prefix} is not a prefix"))
    }

    /// Runs a command in namespace `ns`, showing it (and its output) when
    /// narrating: the commands a reader can type by hand.
    pub fn shell(&self, ns: &Netns, args: &[&str]) -> anyhow::Result<String> {
        let short = ns.name().trim_start_matches(&self.names).to_string();
        self.narrator
            .command(&format!("{short}$ {}", args.join(" ")));
        let out = run(ns.command(args[0]).args(&args[1..]))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        self.narrator.output(&text);
        Ok(text)
    }

    /// The workspace binary `name` the lab runs.
    pub fn binary(&self, name: &str) -> PathBuf {
        self.bins.join(name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut broker) = self.broker.take() {
            let _ = broker.stop(Duration::from_secs(15));
        }
        // The responder stays attached (and its maps pinned) after the
        // daemon exits, by design: take it away.
        if self.pin_dir.exists() {
            let detach = self
                .net
                .broker
                .command(self.binary("blockhost-broker"))
                .args(["ndp", "--pin-dir"])
                .arg(&self.pin_dir)
                .arg("detach")
                .output();
            if !detach.is_ok_and(|o| o.status.success()) {
                let _ = fs::remove_dir_all(&self.pin_dir);
            }
        }
        for server in &self.servers {
            stop_wireguard_go(&server.interface);
        }
        stop_wireguard_go(&self.broker_interface);
        // Then the chain (anvil) and the namespaces drop.
    }
}

/// The directory with the workspace's binaries: the one of the running
/// program (target/debug), or its parent for a test (target/debug/deps),
/// or `BLOCKHOST_LAB_BIN_DIR`.
fn binaries_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("BLOCKHOST_LAB_BIN_DIR") {
        return Ok(dir.into());
    }
    let exe = std::env::current_exe().context("finding the running program")?;
    let mut dir = exe
        .parent()
        .context("the program's directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    for name in ["blockhost-broker", "broker-client"] {
        if !dir.join(name).is_file() {
            bail!(
                "{} is missing: build it first (cargo build -p broker-userspace -p broker-client)",
                dir.join(name).display()
            );
        }
    }
    Ok(dir)
}

/// The broker's keys and configuration, in `dir/broker/`.
fn write_broker_files(
    options: &Options,
    chain: &DevChain,
    interface: &str,
    pin_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let dir = options.dir.join("broker");
    fs::create_dir_all(&dir)?;
    let operator_key = dir.join("operator.key");
    keys::write_secret(&operator_key, &chain.operator.to_bytes().0)?;
    let ecies_key = dir.join("ecies.key");
    keys::write_secret(&ecies_key, &chain.ecies_secret)?;
    let wg_key = dir.join("wg.key");
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&wg_key)
        .and_then(|mut f| writeln!(f, "{}", Key::generate_private().to_base64()))
        .with_context(|| format!("writing {}", wg_key.display()))?;
    let config = dir.join("config.toml");
    let onchain = chain.config_snippet(&operator_key, &ecies_key);
    let text = format!(
        r#"[broker]
upstream_interface = "{UPSTREAM_IF}"
upstream_prefix = "{UPSTREAM_PREFIX}"
allocation_size = {ALLOCATION_SIZE}
# A veth delivers native-mode XDP answers only when its peer runs an XDP
# program too; the router's side runs none.
ndp_mode = "generic"
ndp_pin_dir = "{pins}"
control_socket = "{socket}"

[wireguard]
interface = "{interface}"
listen_port = {WG_PORT}
endpoint = "{BROKER_V4}:{WG_PORT}"
private_key_file = "{wg_key}"
implementation = "userspace"
handshake_timeout_secs = {timeout}

[database]
path = "{db}"

{onchain}poll_interval_secs = 1
confirmations = 0
"#,
        pins = pin_dir.display(),
        socket = dir.join("control.sock").display(),
        wg_key = wg_key.display(),
        timeout = options.handshake_timeout_secs,
        db = dir.join("state/broker.redb").display(),
    );
    fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
    Ok(config)
}

fn client_shown(number: usize, args: &[&str]) -> String {
    format!("server{number}$ broker-client {}", args.join(" "))
}

/// The message of a tracing log line (after the level and target).
fn message_of(line: &str) -> &str {
    line.split_once(": ").map_or(line, |(_, m)| m)
}
