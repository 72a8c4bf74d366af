//! The running system: a chain with the contracts, the broker daemon and
//! the BlockHost servers with their NFT contracts and wallets, in the
//! namespaces of [`Topology`]. Everything is stopped and removed when the
//! lab drops, also after an error or a failed test.
//!
//! The broker's configuration is a real [`Config`] ([`Lab::config`]): a
//! test changes what it is about before it starts the broker, and each
//! start writes it out (`toml::to_string`, the file `Config::load` reads).

use std::{
    fs,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use alloy::{
    network::EthereumWallet,
    primitives::Address,
    providers::{DynProvider, Provider as _, ProviderBuilder},
    signers::local::PrivateKeySigner,
};
use anyhow::{Context as _, bail};
use broker_contracts::{
    TestNFT,
    devchain::{self, DevChain, anvil_signer},
    keys,
};
use broker_userspace::{
    config::{self, Config, WireguardImplementation},
    ipam::Pool,
    ndp::AttachMode,
};
use wireguard_control::Key;

use crate::{
    broker::binary,
    files::write_private,
    names::{MAX_INTERFACE_NAME, lab_prefix},
    narrate::Narrator,
    netns::{Netns, run},
    pins::TestPins,
    process::{Process, tail},
    relay::Relay,
    topology::{
        ALLOCATION_SIZE, BROKER_V4, CHAIN_ADDR, RPC_PORT, SERVERS, Topology, UPSTREAM_IF,
        UPSTREAM_PREFIX, WG_PORT,
    },
    wireguard::WireguardGo,
};

pub struct Options {
    /// Prefix of every name the lab gives: namespaces, WireGuard
    /// interfaces, the pin directory.
    pub names: String,
    /// Where keys, configurations, the database and logs go.
    pub dir: PathBuf,
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

/// Fields drop in order: the broker processes first, then the WireGuard
/// interfaces, the pins, the chain and the namespaces.
pub struct Lab {
    /// Every broker started, the current one last (their logs stay).
    brokers: Vec<Process>,
    wireguard: Vec<WireguardGo>,
    _pins: TestPins,
    names: String,
    pub servers: Vec<Server>,
    /// The broker's configuration, written at each start.
    pub config: Config,
    /// Extra environment of each broker start (e.g. `NOTIFY_SOCKET`, as a
    /// service manager sets it).
    pub broker_env: Vec<(String, String)>,
    /// A command each broker start runs the broker under (`setpriv …`, to
    /// run it with fewer privileges), the broker's command line appended.
    pub broker_wrapper: Vec<String>,
    pub config_path: PathBuf,
    /// The broker's WireGuard public key (the answers' `broker_pubkey`).
    pub broker_public: Key,
    pub dir: PathBuf,
    pub narrator: Narrator,
    /// The chain's URL for the broker and the servers (through the relay).
    pub rpc_url: String,
    relay: Relay,
    /// The chain; its `rpc_url` is for the lab's own calls (the chain's
    /// namespace only).
    pub chain: DevChain,
    pub net: Topology,
}

impl Lab {
    /// Builds the namespaces, starts the chain (the calling thread moves
    /// into the chain's namespace for good: run this on a thread of its
    /// own with a current-thread runtime), deploys the contracts, gives each
    /// server a wallet and an NFT contract, and writes the broker's keys.
    /// The broker is started by [`Lab::start_broker`].
    pub async fn start(options: Options, narrator: Narrator) -> anyhow::Result<Lab> {
        fs::create_dir_all(&options.dir)
            .with_context(|| format!("creating {}", options.dir.display()))?;
        let names = options.names;
        let interface = |tag: &str| {
            let name = format!("{names}{tag}");
            anyhow::ensure!(name.len() <= MAX_INTERFACE_NAME, "{name} is too long");
            Ok(name)
        };
        let broker_interface = interface("wg")?;

        narrator.step("Network namespaces: a chain host, the provider's router, an internet host, the broker and two BlockHost servers");
        let net = Topology::build(&names)?;
        narrator.done(&format!(
            "namespaces {names}{{chain,router,internet,broker,server1,server2}}"
        ));

        narrator.step(
            "The chain: anvil, then BrokerRegistry, BrokerRequests and the broker's registration",
        );
        net.chain.enter()?;
        // anvil listens on the chain namespace's loopback, where the lab's
        // own calls go (alloy polls a non-local URL for receipts only every
        // 7 s); the other namespaces reach it at CHAIN_ADDR:RPC_PORT through
        // a relay.
        let chain = DevChain::start(&devchain::Options {
            region: "lab".into(),
            ..devchain::Options::default()
        })
        .await
        .context("starting the chain")?;
        let relay = Relay::listen(
            SocketAddr::new(CHAIN_ADDR.parse()?, RPC_PORT),
            &chain.rpc_url,
        )?;
        narrator.done(&format!(
            "anvil at {}; registry {}, requests {} (broker id {})",
            relay.url, chain.registry, chain.requests, chain.broker_id
        ));

        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}", names.trim_end_matches('-')));
        let broker_dir = options.dir.join("broker");
        let (config, broker_public) = broker_files(
            &broker_dir,
            &chain,
            &relay.url,
            &broker_interface,
            pin_dir.clone(),
        )?;
        let mut lab = Lab {
            brokers: Vec::new(),
            wireguard: vec![WireguardGo::guard(&net.broker, &broker_interface)],
            _pins: TestPins::at(pin_dir),
            names: names.clone(),
            servers: Vec::new(),
            config,
            broker_env: Vec::new(),
            broker_wrapper: Vec::new(),
            config_path: broker_dir.join("config.toml"),
            broker_public,
            dir: options.dir.clone(),
            narrator,
            rpc_url: relay.url.clone(),
            relay,
            chain,
            net,
        };

        lab.narrator.step(
            "BlockHost servers: a wallet and an NFT contract (ERC-721, owner() = the wallet) each",
        );
        let servers = (1..=SERVERS).map(|number| {
            let interface = interface(&format!("s{number}"));
            let (lab, dir) = (&lab, &options.dir);
            async move { lab.make_server(dir, number, interface?).await }
        });
        // Deployed side by side: each from its own wallet.
        for server in futures::future::try_join_all(servers).await? {
            lab.narrator.done(&format!(
                "server{}: wallet {}, NFT contract {}",
                server.number, server.wallet, server.nft
            ));
            lab.wireguard.push(WireguardGo::guard(
                &lab.net.servers[server.number - 1],
                &server.interface,
            ));
            lab.servers.push(server);
        }
        Ok(lab)
    }

    async fn make_server(
        &self,
        dir: &std::path::Path,
        number: usize,
        interface: String,
    ) -> anyhow::Result<Server> {
        // anvil accounts 0 and 1 are the deployer and the operator.
        let signer = anvil_signer(1 + number);
        let dir = dir.join(format!("server{number}"));
        fs::create_dir_all(&dir)?;
        let wallet_key = dir.join("wallet.key");
        keys::write_secret(&wallet_key, &signer.to_bytes().0)?;
        let nft = *TestNFT::deploy(self.wallet(1 + number)?, signer.address())
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
            interface,
        })
    }

    /// A provider signing with anvil account `account`.
    pub fn wallet(&self, account: usize) -> anyhow::Result<DynProvider> {
        self.provider(anvil_signer(account))
    }

    /// A provider on the lab's chain signing with `signer`.
    pub fn provider(&self, signer: PrivateKeySigner) -> anyhow::Result<DynProvider> {
        Ok(ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer))
            .connect_http(self.chain.rpc_url.parse()?)
            .erased())
    }

    /// Writes [`Lab::config`] to [`Lab::config_path`] (each broker start
    /// does; the CLI reads it).
    pub fn write_config(&self) -> anyhow::Result<()> {
        let text = toml::to_string(&self.config).context("serialising the configuration")?;
        fs::write(&self.config_path, text)
            .with_context(|| format!("writing {}", self.config_path.display()))
    }

    /// Writes [`Lab::config`] and starts `blockhost-broker run` in the
    /// broker's namespace with crash points `failpoints` (`NAME=return;…`,
    /// for a build with the `failpoints` feature), not waiting.
    pub fn spawn_broker(&mut self, failpoints: Option<&str>) -> anyhow::Result<&mut Process> {
        self.write_config()?;
        let broker = binary("blockhost-broker")?;
        let mut cmd = match self.broker_wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = self.net.broker.command(program);
                cmd.args(args).arg(broker);
                cmd
            }
            None => self.net.broker.command(broker),
        };
        cmd.envs(self.broker_env.iter().map(|(k, v)| (k, v)));
        cmd.args(["run", "--config"])
            .arg(&self.config_path)
            .env("NO_COLOR", "1")
            .env("BLOCKHOST_BROKER_LOG", "info")
            .env_remove("FAILPOINTS");
        if let Some(points) = failpoints {
            cmd.env("FAILPOINTS", points);
        }
        let n = self.brokers.len() + 1;
        let log = match n {
            1 => self.dir.join("broker.log"),
            n => self.dir.join(format!("broker-{n}.log")),
        };
        let label = format!("{}broker #{n}", self.names);
        self.brokers.push(Process::spawn_logged(&label, cmd, log)?);
        self.broker()
    }

    /// Starts the broker with crash points `points` and waits until it says
    /// they are armed (they are absent from a build without the feature: a
    /// plain `cargo build` after `cargo test` replaces the binary).
    pub fn spawn_crashing(&mut self, points: &str) -> anyhow::Result<&mut Process> {
        let broker = self.spawn_broker(Some(points))?;
        broker.wait_log(&["crash points armed"], 1, Duration::from_secs(10))?;
        Ok(broker)
    }

    /// Starts `blockhost-broker run` and waits until its NDP responder and
    /// tunnel interface are up and the kernel matches its database.
    pub fn start_broker(&mut self) -> anyhow::Result<&mut Process> {
        self.narrator
            .step("The broker: blockhost-broker run (XDP NDP responder on its upstream interface, WireGuard, watching BrokerRequests)");
        let broker = self.spawn_broker(None)?;
        let limit = Duration::from_secs(30);
        let attached = broker.wait_log(&["NDP responder attached"], 1, limit)?;
        broker.wait_log(&["kernel reconciled with the database"], 1, limit)?;
        let (pid, log) = (broker.pid(), broker.log_file().map(|p| p.to_path_buf()));
        self.narrator.done(&format!(
            "pid {}; {}",
            pid.unwrap_or_default(),
            message_of(&attached)
        ));
        if let Some(log) = log {
            self.narrator.detail(&format!("its log: {}", log.display()));
        }
        self.broker()
    }

    /// The broker started last.
    pub fn broker(&mut self) -> anyhow::Result<&mut Process> {
        self.brokers.last_mut().context("no broker was started")
    }

    /// Stops the broker with SIGTERM (it must exit 0 within 30 s).
    pub fn stop_broker(&mut self) -> anyhow::Result<()> {
        self.broker()?.stop(Duration::from_secs(30))
    }

    /// The log of the broker started last.
    pub fn broker_log(&self) -> String {
        self.brokers.last().map(Process::log).unwrap_or_default()
    }

    /// True while a broker runs (the database is then locked).
    pub fn broker_running(&mut self) -> bool {
        self.brokers.iter_mut().any(Process::running)
    }

    /// Fails if the broker exited.
    pub fn check_broker(&mut self) -> anyhow::Result<()> {
        let broker = self.broker()?;
        if let Some(status) = broker.exited() {
            bail!("the broker exited ({status}):\n{}", tail(&broker.log(), 20));
        }
        Ok(())
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
        let mut cmd = self.net.servers[number - 1].command(binary("broker-client")?);
        cmd.args(args)
            .env("BLOCKHOST_RPC_URL", &self.rpc_url)
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

    /// The relay the broker and the servers reach the chain through: a
    /// test stalls it to make the chain stop answering.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// The pin directory of the broker's NDP responder.
    pub fn pin_dir(&self) -> &std::path::Path {
        &self.config.broker.ndp_pin_dir
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // A clean stop where it still runs; the guards do the rest (the
        // responder stays attached after the daemon exits, by design: the
        // pins guard takes it away).
        for broker in &mut self.brokers {
            if broker.running() {
                let _ = broker.terminate(Duration::from_secs(15));
            }
        }
    }
}

/// The broker's keys in `dir` and a configuration for the lab's topology
/// and `chain`; with its WireGuard public key.
fn broker_files(
    dir: &std::path::Path,
    chain: &DevChain,
    rpc_url: &str,
    interface: &str,
    pin_dir: PathBuf,
) -> anyhow::Result<(Config, Key)> {
    fs::create_dir_all(dir)?;
    let operator_key_file = dir.join("operator.key");
    keys::write_secret(&operator_key_file, &chain.operator.to_bytes().0)?;
    let ecies_key_file = dir.join("ecies.key");
    keys::write_secret(&ecies_key_file, &chain.ecies_secret)?;
    let wg_key = Key::generate_private();
    let private_key_file = dir.join("wg.key");
    write_private(&private_key_file, &wg_key.to_base64())?;
    let config = Config {
        broker: config::Broker {
            upstream_interface: UPSTREAM_IF.into(),
            pool: Pool::new(UPSTREAM_PREFIX.parse()?, ALLOCATION_SIZE)?,
            // A veth delivers native-mode XDP answers only when its peer
            // runs an XDP program too; the router's side runs none.
            ndp_mode: AttachMode::Generic,
            ndp_router_flag: true,
            ndp_vlan: None,
            ndp_pin_dir: pin_dir,
            dns_zone: None,
            // Each lab's own: parallel tests never share a socket.
            control_socket: Some(dir.join("control.sock")),
            pipeline_answers: true,
        },
        wireguard: config::Wireguard {
            interface: interface.into(),
            listen_port: WG_PORT,
            endpoint: format!("{BROKER_V4}:{WG_PORT}"),
            private_key_file,
            implementation: WireguardImplementation::Userspace,
            handshake_timeout_secs: 120,
            allow_to_broker: Vec::new(),
        },
        // On its default listen, loopback in the broker's namespace: the
        // tests and the demo read /metrics there without a token.
        api: Some(config::Api {
            listen: config::DEFAULT_API_LISTEN.parse()?,
            tls_cert: None,
            tls_key: None,
            insecure_plaintext: false,
        }),
        manager: config::Manager::default(),
        database: config::Database::at(dir.join("state/broker.redb")),
        onchain: config::Onchain {
            rpc_url: rpc_url.into(),
            chain_id: chain.chain_id,
            requests_contract: chain.requests,
            registry_contract: Some(chain.registry),
            legacy_requests_contracts: Vec::new(),
            operator_key_file,
            ecies_key_file,
            poll_interval_secs: 1,
            confirm: config::Confirm::Blocks(0),
            start_request_id: 1,
            max_requests_per_poll: config::DEFAULT_MAX_REQUESTS_PER_POLL,
            log_range_blocks: config::DEFAULT_LOG_RANGE_BLOCKS,
            low_balance_wei: alloy::primitives::utils::parse_ether("0.01")?,
        },
    };
    Ok((config, wg_key.get_public()))
}

fn client_shown(number: usize, args: &[&str]) -> String {
    format!("server{number}$ broker-client {}", args.join(" "))
}

/// The message of a tracing log line (after the level and target).
fn message_of(line: &str) -> &str {
    line.split_once(": ").map_or(line, |(_, m)| m)
}

/// Runs `body` on a lab of its own (names `bbt-<pid>-<n>-`, files in a
/// temporary directory), on a thread of its own with a current-thread
/// runtime, quietly. Panics with the error (after the broker's log) if it
/// fails; says how long it took if it passes.
pub fn lab_test(tag: &str, body: impl AsyncFnOnce(&mut Lab) -> anyhow::Result<()> + Send) {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let result = thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime")
                .block_on(async {
                    let options = Options {
                        names: lab_prefix(),
                        dir: dir.path().to_path_buf(),
                    };
                    let mut lab = Lab::start(options, Narrator::quiet()).await?;
                    let result = body(&mut lab).await;
                    if result.is_err() {
                        eprintln!("{tag}: the broker's log:\n{}", tail(&lab.broker_log(), 60));
                    }
                    result
                })
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    });
    if let Err(e) = result {
        panic!("{tag}: {e:#}");
    }
    eprintln!("{tag}: passed in {:.1} s", started.elapsed().as_secs_f64());
}
