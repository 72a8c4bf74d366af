//! The operator's surface end to end: `blockhost-broker status` and
//! `allocations list|show|release` against the real daemon (real anvil,
//! network namespaces, wireguard-go, the XDP responder), through its control
//! socket, and against the database alone when no daemon runs.
//!
//! ```text
//!   router ns          broker ns                        server ns
//!   r0 ─────────────── b0 (upstream, NDP responder)
//!                      anvil, wg (wireguard-go)
//!                      u0 192.0.2.1/24 ──────────────── s0 192.0.2.2/24
//!                                                       client wg
//! ```
//!
//! The lab is a small cousin of tests/daemon.rs's: the requests come from
//! anvil account 2, the answers are read back with the CLI itself. Needs
//! root.

mod support;

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::PermissionsExt as _},
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
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
use broker_userspace::{
    ipam::Pool,
    operator::{AllocationView, PeerState, Released, Status},
    store::Store,
};
use ipnet::Ipv6Net;
use serde::de::DeserializeOwned;
use support::{
    daemon::{DaemonProcess, killed_by_sigkill},
    netns::{BROKER_BIN, Netns, run_bounded, veth},
    pins::TestPins,
    wireguard::{ClientTunnel, WireguardGo, allowed_ips, interface_name, write_private},
};
use wireguard_control::Key;

const UPSTREAM: &str = "2001:db8:100::/64";
const ALLOCATION_SIZE: u8 = 120;
const ENDPOINT: &str = "192.0.2.1:51820";
/// The broker's address in the pool: the clients' gateway.
const GATEWAY: &str = "2001:db8:100::2";
/// The anvil account making the requests.
const CLIENT: usize = 2;
/// Above what anvil gives an account: the wallet is reported low.
const LOW_BALANCE_ETH: &str = "1000000";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// What a CLI run gave.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "{}\n{}", self.stdout, self.stderr);
        &self.stdout
    }

    fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }

    /// Exit status 1, with `needle` in stderr.
    fn fails_with(&self, needle: &str) {
        assert_eq!(self.code, Some(1), "{}\n{}", self.stdout, self.stderr);
        assert!(
            self.stderr.contains(needle),
            "{needle:?} not in {}",
            self.stderr
        );
    }
}

struct Lab {
    daemons: Vec<DaemonProcess>,
    client_wg: Option<WireguardGo>,
    _broker_wg: WireguardGo,
    dev: DevChain,
    broker: Netns,
    server: Netns,
    _router: Netns,
    pins: TestPins,
    dir: tempfile::TempDir,
    wg_if: String,
    client_if: String,
    broker_public: Key,
    config: PathBuf,
    socket: PathBuf,
    db_path: PathBuf,
}

/// Builds a lab and runs `body` on a thread inside the broker namespace.
fn lab_test(tag: &str, body: impl AsyncFnOnce(&mut Lab) + Send) {
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
                    let mut lab = Lab::new(broker, router, server, pins).await;
                    body(&mut lab).await;
                });
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    });
}

impl Lab {
    async fn new(broker: Netns, router: Netns, server: Netns, pins: TestPins) -> Lab {
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
    fn start_daemon(&mut self, failpoints: Option<&str>) -> &mut DaemonProcess {
        let label = format!("daemon #{}", self.daemons.len() + 1);
        let daemon = DaemonProcess::start(&label, &self.broker, &self.config, failpoints);
        self.daemons.push(daemon);
        let daemon = self.daemons.last_mut().unwrap();
        daemon.wait_log("control socket ready", 1, secs(30));
        daemon
    }

    fn daemon(&mut self) -> &mut DaemonProcess {
        self.daemons.last_mut().expect("a daemon was started")
    }

    /// `blockhost-broker ARGS -c CONFIG`, as `user` when given (setpriv).
    fn cli_as(&self, user: Option<&str>, args: &[&str]) -> Run {
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

    fn cli(&self, args: &[&str]) -> Run {
        self.cli_as(None, args)
    }

    fn status(&self) -> Status {
        self.cli(&["status", "--json"]).json()
    }

    fn list(&self, state: Option<&str>) -> Vec<AllocationView> {
        let mut args = vec!["allocations", "list", "--json"];
        args.extend(state.map(|s| ["--state", s]).iter().flatten());
        self.cli(&args).json()
    }

    fn wallet(&self) -> DynProvider {
        ProviderBuilder::new()
            .wallet(EthereumWallet::from(anvil_signer(CLIENT)))
            .connect_http(self.dev.rpc_url.parse().unwrap())
            .erased()
    }

    /// A new NFT of the client's, and its request for a tunnel with `wg`.
    async fn request(&self, wg: &Key) -> Address {
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
    async fn wait_answered(&mut self, answered: u64) -> Status {
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
    async fn released_on_chain(&self, nft: Address) -> usize {
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
    fn bring_up_tunnel(&mut self, key: &Key, prefix: Ipv6Net) {
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
    fn kernel(&self) -> (Vec<(String, String)>, Vec<String>, Vec<Ipv6Net>) {
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
fn as_peers(views: &[AllocationView]) -> Vec<(String, String)> {
    let mut peers: Vec<_> = views
        .iter()
        .map(|v| (v.wireguard_key.clone(), v.prefix.to_string()))
        .collect();
    peers.sort();
    peers
}

#[test]
fn status_list_show_and_release_agree_with_the_database_the_kernel_and_the_chain() {
    lab_test("ops", async |lab: &mut Lab| {
        lab.start_daemon(None);
        let keys: Vec<Key> = (0..3).map(|_| Key::generate_private()).collect();
        let mut nfts = Vec::new();
        for key in &keys {
            nfts.push(lab.request(key).await);
        }
        lab.wait_answered(3).await;
        let all = lab.list(None);
        assert_eq!(all.len(), 3, "{all:?}");
        let up = all
            .iter()
            .find(|v| v.wireguard_key == keys[0].get_public().to_base64())
            .unwrap()
            .clone();
        assert_eq!(up.nft_contract, nfts[0]);
        lab.bring_up_tunnel(&keys[0], up.prefix);
        // The daemon's next poll sees the handshake.
        let deadline = Instant::now() + secs(30);
        while lab.status().peers.unwrap().active == 0 {
            assert!(Instant::now() < deadline, "no handshake seen");
            lab.server.ping(GATEWAY);
        }

        // status: the database, the kernel, the chain.
        let status = lab.status();
        assert!(status.daemon);
        // A /64 in /120s; the first is the broker's.
        assert_eq!((status.pool.used, status.pool.total), (3, (1 << 56) - 1));
        assert_eq!(status.pool.free, status.pool.total - 3);
        let requests = status.contracts[0].requests;
        assert_eq!(
            (requests.seen, requests.answered, requests.pending),
            (3, 3, 0)
        );
        let peers = status.peers.unwrap();
        assert_eq!((peers.active, peers.idle, peers.never), (1, 0, 2));
        let (kernel_peers, routes, ndp) = lab.kernel();
        let ndp_status = status.ndp.as_ref().unwrap();
        assert_eq!(ndp_status.prefixes, ndp.len());
        assert_eq!(ndp_status.interface.as_deref(), Some("b0"));
        assert_eq!(ndp_status.mode.as_deref(), Some("generic"));
        let chain = status.chain.as_ref().unwrap();
        assert!(
            chain.head >= chain.confirmed && chain.confirmed > 0,
            "{chain:?}"
        );
        let wallet = status.wallet.unwrap();
        assert_eq!(wallet.address, lab.dev.operator.address());
        assert!(wallet.low, "{LOW_BALANCE_ETH} ETH is more than anvil gives");
        let text = lab.cli(&["status"]);
        assert!(
            text.ok().contains("LOW: below 1000000 ETH"),
            "{}",
            text.stdout
        );
        assert!(text.ok().contains("1 active, 0 idle, 2 never connected"));

        // list: the kernel's peers, routes and NDP entries, and the filters.
        let all = lab.list(None);
        assert_eq!(as_peers(&all), kernel_peers);
        let mut prefixes: Vec<Ipv6Net> = all.iter().map(|v| v.prefix).collect();
        prefixes.sort();
        assert_eq!(ndp, prefixes);
        assert_eq!(routes.len(), 3);
        let active = lab.list(Some("active"));
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].prefix, up.prefix);
        assert!(active[0].last_handshake.is_some());
        assert_eq!(lab.list(Some("never")).len(), 2);
        assert_eq!(lab.list(Some("idle")), []);
        let table = lab.cli(&["allocations", "list"]);
        assert!(table.ok().starts_with("PREFIX"), "{}", table.stdout);
        assert_eq!(table.ok().lines().count(), 4);

        // show, and the prefixes it refuses.
        let shown: AllocationView = lab
            .cli(&["allocations", "show", &up.prefix.to_string(), "--json"])
            .json();
        assert_eq!(shown.state, Some(PeerState::Active));
        assert_eq!(shown.nft_contract, nfts[0]);
        let free = "2001:db8:100::ff00/120";
        lab.cli(&["allocations", "show", free])
            .fails_with("no allocation has");
        lab.cli(&["allocations", "show", "2001:db8:100::101/120"])
            .fails_with("host bits set");
        lab.cli(&["allocations", "show", "2001:db8:200::/120"])
            .fails_with("not in the pool");

        // release: peer, route, NDP entry, database, once on chain.
        let gone = all
            .iter()
            .find(|v| v.state == Some(PeerState::Never))
            .unwrap();
        let nft = gone.nft_contract;
        let released: Released = lab
            .cli(&["allocations", "release", &gone.prefix.to_string(), "--json"])
            .json();
        assert!(released.peer_removed && released.route_removed && released.ndp_entry_removed);
        assert!(
            matches!(
                released.on_chain,
                broker_userspace::operator::OnChainRelease::Sent { .. }
            ),
            "{released:?}"
        );
        assert_eq!(lab.released_on_chain(nft).await, 1);
        let (kernel_peers, routes, ndp) = lab.kernel();
        let left = lab.list(None);
        assert_eq!(left.len(), 2);
        assert_eq!(as_peers(&left), kernel_peers);
        assert!(!routes.contains(&gone.prefix.to_string()));
        assert!(!ndp.contains(&gone.prefix));
        assert_eq!(lab.status().pool.used, 2);
        lab.cli(&["allocations", "release", &gone.prefix.to_string()])
            .fails_with("no allocation has");

        // Another user: refused by the socket's mode, and by its
        // credentials when the mode lets it connect.
        let nobody = Some("65534");
        lab.cli_as(nobody, &["status"])
            .fails_with("permission denied on");
        let open = std::fs::Permissions::from_mode(0o666);
        std::fs::set_permissions(&lab.socket, open).unwrap();
        lab.cli_as(nobody, &["status"])
            .fails_with("refused: uid 65534");

        // No daemon: the database alone, read-only; no release.
        lab.daemon().stop();
        assert!(!lab.socket.exists(), "the socket outlived the daemon");
        let offline = lab.status();
        assert!(!offline.daemon);
        assert_eq!(offline.pool.used, 2);
        assert_eq!(offline.contracts[0].requests.answered, 3);
        assert_eq!(
            (offline.chain, offline.wallet, offline.peers),
            (None, None, None)
        );
        let text = lab.cli(&["status"]);
        assert!(text.ok().contains("not running: figures from the database"));
        let left_offline = lab.list(None);
        assert_eq!(as_peers(&left_offline), as_peers(&left));
        assert!(left_offline.iter().all(|v| v.state.is_none()));
        let shown: AllocationView = lab
            .cli(&["allocations", "show", &up.prefix.to_string(), "--json"])
            .json();
        assert_eq!(shown.nft_contract, nfts[0]);
        lab.cli(&["allocations", "list", "--state", "active"])
            .fails_with("--state needs the daemon");
        lab.cli(&["allocations", "release", &up.prefix.to_string()])
            .fails_with("a release goes through the running daemon");
    });
}

#[test]
fn a_release_killed_midway_finishes_once_after_a_restart() {
    lab_test("opk", async |lab: &mut Lab| {
        // Armed, but only a release reaches it: the tunnel's handshake
        // timeout (120 s) is longer than the test.
        lab.start_daemon(Some("after-release=return"));
        let nft = lab.request(&Key::generate_private()).await;
        lab.wait_answered(1).await;
        let prefix = lab.list(None)[0].prefix;

        let run = lab.cli(&["allocations", "release", &prefix.to_string()]);
        run.fails_with("closed the connection without an answer");
        let status = lab.daemon().wait_exit(secs(10));
        assert!(killed_by_sigkill(status), "{status}");
        {
            // The release committed, with the on-chain release owed; the
            // kernel still has the tunnel.
            let pool = Pool::new(UPSTREAM.parse().unwrap(), ALLOCATION_SIZE).unwrap();
            let db = Store::open(&lab.db_path, pool).unwrap();
            assert_eq!(db.allocations().unwrap(), []);
            assert_eq!(db.owed_releases().unwrap().len(), 1);
        }
        let (peers, _, ndp) = lab.kernel();
        assert_eq!((peers.len(), ndp), (1, vec![prefix]));
        assert_eq!(lab.released_on_chain(nft).await, 0);

        // The restart removes the tunnel and sends the release, once.
        lab.start_daemon(None);
        lab.daemon().wait_log("released on chain", 1, secs(30));
        assert_eq!(lab.status().owed_releases, 0);
        lab.daemon().stop();
        assert_eq!(lab.kernel(), (vec![], vec![], vec![]));
        assert_eq!(lab.released_on_chain(nft).await, 1);
        assert_eq!(lab.status().pool.used, 0);
    });
}
