//! A small lab around a running daemon, for the tests of the operator's
//! surface (tests/operator.rs: the CLI; tests/http_api.rs: the HTTP API):
//! real anvil, network namespaces, wireguard-go, the XDP responder.
//!
//! ```text
//!   router ns          broker ns                        server ns
//!   r0 ─────────────── b0 (upstream, NDP responder)
//!                      anvil, wg (wireguard-go)
//!                      u0 192.0.2.1/24 ──────────────── s0 192.0.2.2/24
//!                                                       client wg
//! ```
//!
//! The requests come from anvil account 2; the daemon's answers are read
//! back with the CLI itself. Needs root.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::PermissionsExt as _},
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use super::{
    daemon::DaemonProcess,
    netns::{BROKER_BIN, Netns, run_bounded, veth},
    pins::TestPins,
    wireguard::{ClientTunnel, WireguardGo, allowed_ips, interface_name, write_private},
};
use alloy::{
    network::EthereumWallet,
    primitives::Address,
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::types::Filter,
    sol_types::SolEvent as _,
};
use broker_contracts::{
    BrokerRequests, TestNFT,
    devchain::{DevChain, Options, anvil_signer},
    keys,
    protocol::{self, RequestPayload},
};
use broker_userspace::operator::{AllocationView, Status};
use ipnet::Ipv6Net;
use serde::de::DeserializeOwned;
use wireguard_control::Key;

pub const UPSTREAM: &str = "2001:db8:100::/64";
pub const ALLOCATION_SIZE: u8 = 120;
pub const ENDPOINT: &str = "192.0.2.1:51820";
/// The broker's address in the pool: the clients' gateway.
pub const GATEWAY: &str = "2001:db8:100::2";
/// The anvil account making the requests.
pub const CLIENT: usize = 2;
/// Above what anvil gives an account: the wallet is reported low.
pub const LOW_BALANCE_ETH: &str = "1000000";

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// What a CLI run gave.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "{}\n{}", self.stdout, self.stderr);
        &self.stdout
    }

    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }

    /// Exit status 1, with `needle` in stderr.
    pub fn fails_with(&self, needle: &str) {
        assert_eq!(self.code, Some(1), "{}\n{}", self.stdout, self.stderr);
        assert!(
            self.stderr.contains(needle),
            "{needle:?} not in {}",
            self.stderr
        );
    }
}

pub struct Lab {
    pub daemons: Vec<DaemonProcess>,
    pub client_wg: Option<WireguardGo>,
    pub _broker_wg: WireguardGo,
    pub dev: DevChain,
    pub broker: Netns,
    pub server: Netns,
    pub _router: Netns,
    pub pins: TestPins,
    pub dir: tempfile::TempDir,
    pub wg_if: String,
    pub client_if: String,
    pub broker_public: Key,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub db_path: PathBuf,
}

/// Builds a lab and runs `body` on a thread inside the broker namespace.
pub fn lab_test(tag: &str, body: impl AsyncFnOnce(&mut Lab) + Send) {
    lab_test_with(tag, "", body)
}

/// [`lab_test`] with `extra` added to the daemon's configuration (whole
/// sections, e.g. `[api]`).
pub fn lab_test_with(tag: &str, extra: &str, body: impl AsyncFnOnce(&mut Lab) + Send) {
    let pins = TestPins::new(tag);
    let broker = Netns::new(&format!("{tag}b"));
    let router = Netns::new(&format!("{tag}r"));
    let server = Netns::new(&format!("{tag}s"));
    veth(
        &broker,
        "b0",
        "02:00:00:00:0b:01",
        &router,
        "r0",
        "02:00:00:00:0b:02",
    );
    veth(
        &broker,
        "u0",
        "02:00:00:00:0c:01",
        &server,
        "s0",
        "02:00:00:00:0c:02",
    );
    broker.ip(&["addr", "add", "192.0.2.1/24", "dev", "u0"]);
    server.ip(&["addr", "add", "192.0.2.2/24", "dev", "s0"]);
    let ns_file = File::open(format!("/run/netns/{}", broker.name())).unwrap();
    thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: an open /run/netns file; only this thread changes.
            assert_eq!(
                unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let mut lab = Lab::new(broker, router, server, pins, extra).await;
                    body(&mut lab).await;
                });
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    });
}

impl Lab {
    pub async fn new(
        broker: Netns,
        router: Netns,
        server: Netns,
        pins: TestPins,
        extra: &str,
    ) -> Lab {
        let dev = DevChain::start(&Options::default()).await.expect("anvil");
        let dir = tempfile::tempdir().unwrap();
        // Traversable by others, for the test run as `nobody` (the keys
        // stay 0600).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.path();
        keys::write_secret(&d.join("operator.key"), &dev.operator.to_bytes().0).unwrap();
        keys::write_secret(&d.join("ecies.key"), &dev.ecies_secret).unwrap();
        let wg_key = Key::generate_private();
        write_private(&d.join("wg.key"), &wg_key.to_base64());
        let wg_if = interface_name("b");
        let broker_wg = WireguardGo::guard(&broker, &wg_if);
        let socket = d.join("run/control.sock");
        let db_path = d.join("state/broker.redb");
        let config = d.join("config.toml");
        let text = format!(
            r#"[broker]
upstream_interface = "b0"
upstream_prefix = "{UPSTREAM}"
allocation_size = {ALLOCATION_SIZE}
ndp_mode = "generic"
ndp_pin_dir = "{pins}"
control_socket = "{socket}"

[wireguard]
interface = "{wg_if}"
endpoint = "{ENDPOINT}"
private_key_file = "{d}/wg.key"
implementation = "userspace"

[database]
path = "{db}"

[onchain]
rpc_url = "{rpc}"
chain_id = {chain_id}
requests_contract = "{requests}"
operator_key_file = "{d}/operator.key"
ecies_key_file = "{d}/ecies.key"
poll_interval_secs = 1
confirmations = 0
low_balance_eth = "{LOW_BALANCE_ETH}"
{extra}
"#,
            pins = pins.dir.path().display(),
            socket = socket.display(),
            d = d.display(),
            db = db_path.display(),
            rpc = dev.rpc_url,
            chain_id = dev.chain_id,
            requests = dev.requests,
        );
        std::fs::write(&config, text).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        Lab {
            daemons: Vec::new(),
            client_wg: None,
            _broker_wg: broker_wg,
            dev,
            broker,
            server,
            _router: router,
            pins,
            dir,
            wg_if,
            client_if: interface_name("c"),
            broker_public: wg_key.get_public(),
            config,
            socket,
            db_path,
        }
    }

    /// Starts the daemon (with crash points `failpoints`) and waits until
    /// it serves its control socket.
    pub fn start_daemon(&mut self, failpoints: Option<&str>) -> &mut DaemonProcess {
        let label = format!("daemon #{}", self.daemons.len() + 1);
        let daemon = DaemonProcess::start(&label, &self.broker, &self.config, failpoints);
        self.daemons.push(daemon);
        let daemon = self.daemons.last_mut().unwrap();
        daemon.wait_log("control socket ready", 1, secs(30));
        daemon
    }

    pub fn daemon(&mut self) -> &mut DaemonProcess {
        self.daemons.last_mut().expect("a daemon was started")
    }

    /// `blockhost-broker ARGS -c CONFIG`, as `user` when given (setpriv).
    pub fn cli_as(&self, user: Option<&str>, args: &[&str]) -> Run {
        let mut cmd = match user {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    BROKER_BIN,
                ]);
                c
            }
            None => Command::new(BROKER_BIN),
        };
        cmd.args(args)
            .arg("-c")
            .arg(&self.config)
            .env("NO_COLOR", "1")
            .env_remove("RUNTIME_DIRECTORY");
        let (status, stdout, stderr) = run_bounded(cmd, secs(60));
        Run {
            code: status.and_then(|s| s.code()),
            stdout,
            stderr,
        }
    }

    pub fn cli(&self, args: &[&str]) -> Run {
        self.cli_as(None, args)
    }

    pub fn status(&self) -> Status {
        self.cli(&["status", "--json"]).json()
    }

    pub fn list(&self, state: Option<&str>) -> Vec<AllocationView> {
        let mut args = vec!["allocations", "list", "--json"];
        args.extend(state.map(|s| ["--state", s]).iter().flatten());
        self.cli(&args).json()
    }

    pub fn wallet(&self) -> DynProvider {
        ProviderBuilder::new()
            .wallet(EthereumWallet::from(anvil_signer(CLIENT)))
            .connect_http(self.dev.rpc_url.parse().unwrap())
            .erased()
    }

    /// A new NFT of the client's, and its request for a tunnel with `wg`.
    pub async fn request(&self, wg: &Key) -> Address {
        let nft = *TestNFT::deploy(self.wallet(), anvil_signer(CLIENT).address())
            .await
            .unwrap()
            .address();
        let (_, public) = ecies::utils::generate_keypair();
        let payload = RequestPayload {
            wg_pubkey: wg.get_public().to_base64(),
            nft_contract: nft.to_string(),
            server_pubkey: hex::encode(public.serialize()),
        };
        let payload = protocol::encrypt(&self.dev.ecies_public, payload.to_json().as_bytes());
        let receipt = BrokerRequests::new(self.dev.requests, self.wallet())
            .submitRequest(nft, payload.unwrap().into())
            .gas(1_000_000)
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        assert!(receipt.status());
        nft
    }

    /// Waits until the daemon's status shows `answered` answered requests.
    pub async fn wait_answered(&mut self, answered: u64) -> Status {
        let deadline = Instant::now() + secs(30);
        loop {
            let status = self.status();
            if status.contracts[0].requests.answered >= answered {
                return status;
            }
            let daemon = self.daemon();
            assert!(daemon.running(), "the daemon exited:\n{}", daemon.log());
            assert!(Instant::now() < deadline, "{answered} answers: {status:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `AllocationReleased` events of `nft`.
    pub async fn released_on_chain(&self, nft: Address) -> usize {
        let filter = Filter::new()
            .address(self.dev.requests)
            .event_signature(BrokerRequests::AllocationReleased::SIGNATURE_HASH)
            .from_block(0);
        let logs = self.wallet().get_logs(&filter).await.unwrap();
        logs.iter()
            .filter(|log| {
                let e = log
                    .log_decode::<BrokerRequests::AllocationReleased>()
                    .unwrap();
                e.inner.data.nftContract == nft
            })
            .count()
    }

    /// The client's tunnel for `key`, to `prefix`'s first address.
    pub fn bring_up_tunnel(&mut self, key: &Key, prefix: Ipv6Net) {
        self.client_wg = Some(WireguardGo::guard(&self.server, &self.client_if));
        let address = std::net::Ipv6Addr::from(u128::from(prefix.network()) + 1);
        ClientTunnel {
            ns: &self.server,
            name: &self.client_if,
            key_dir: self.dir.path(),
            endpoint: ENDPOINT,
            allowed_ips: "::/0",
            route: "::/0",
        }
        .start(key, &self.broker_public, &address.to_string());
    }

    /// Peers (key, prefix), routes through the tunnel, and the NDP map's
    /// prefixes, each sorted.
    pub fn kernel(&self) -> (Vec<(String, String)>, Vec<String>, Vec<Ipv6Net>) {
        let peers = allowed_ips(&self.broker, &self.wg_if);
        let shown = self
            .broker
            .ip(&["-6", "route", "show", "dev", &self.wg_if, "proto", "180"]);
        let mut routes: Vec<String> = shown
            .lines()
            .filter_map(|l| Some(l.split_whitespace().next()?.to_string()))
            .collect();
        routes.sort();
        let mut ndp = broker_userspace::ndp::Responder::load(&self.pins.dir)
            .unwrap()
            .prefixes()
            .unwrap();
        ndp.sort();
        (peers, routes, ndp)
    }
}

/// The views' (key, prefix) as `wg show allowed-ips` gives them, sorted.
pub fn as_peers(views: &[AllocationView]) -> Vec<(String, String)> {
    let mut peers: Vec<_> = views
        .iter()
        .map(|v| (v.wireguard_key.clone(), v.prefix.to_string()))
        .collect();
    peers.sort();
    peers
}
