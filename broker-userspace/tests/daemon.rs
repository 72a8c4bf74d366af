//! The daemon end to end: the real `blockhost-broker run` against a real
//! anvil chain, in real network namespaces, with wireguard-go tunnels, a
//! redb file on disk and the XDP responder, its processes stopped with
//! SIGTERM and killed with SIGKILL.
//!
//! Each test builds its own lab:
//!
//! ```text
//!   router ns            broker ns                         server ns
//!   r0 ───────────────── b0 (upstream, NDP responder)
//!   2001:db8:ff::1/64    2001:db8:ff::2/64
//!   2001:db8:100::/64    anvil + the test's client (127.0.0.1)
//!     on-link            wg (wireguard-go, gateway ::2)
//!                        u0 192.0.2.1/24 ────────────────── s0 192.0.2.2/24
//!                                                           client wg (::/0)
//! ```
//!
//! anvil runs inside the broker namespace, started from the test's own
//! thread there, which also acts as the BlockHost servers (anvil accounts 2
//! and 3) submitting requests with the bindings. The daemon is spawned into
//! the namespace with setns before exec (never `ip netns exec`: its bpffs
//! must be ours). The crash tests use the daemon's crash points (feature
//! `failpoints`, enabled for the tests by the dev-dependency on this crate):
//! `FAILPOINTS=NAME=return` makes it SIGKILL itself there.
//!
//! Needs root (`cargo xtask test`). Guards remove the namespaces, pins,
//! wireguard-go processes and their sockets even when a test fails, and
//! print the daemon's log then.

mod support;

use std::{
    collections::BTreeMap,
    fs::File,
    net::Ipv6Addr,
    os::fd::AsRawFd as _,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use alloy::{
    consensus::Transaction as _,
    network::{EthereumWallet, TransactionResponse as _},
    primitives::{Address, U256},
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::types::Filter,
    sol_types::{SolEvent as _, SolInterface as _},
};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use broker_common::ndp::{PREFIXES_MAP, PrefixKey, PrefixValue};
use broker_contracts::{
    BrokerRequests::{self, BrokerRequestsCalls},
    TestNFT,
    bindings::legacy_fixture::BrokerRequestsV1,
    devchain::{DevChain, Options, anvil_signer},
    keys,
    protocol::{self, RequestPayload, ResponsePayload},
};
use broker_userspace::{
    ipam::Pool,
    ndp::{self, Responder},
    store::{Store, allocations::Allocation},
    tunnel::ROUTE_PROTOCOL,
};
use ipnet::Ipv6Net;
use serde_json::json;
use support::{
    daemon::{DaemonProcess, killed_by_sigkill},
    netns::{Netns, broker_status, veth},
    pins::TestPins,
    relay::Relay,
    wireguard::{ClientTunnel, WireguardGo, allowed_ips, interface_name, write_private},
};
use wireguard_control::Key;

const UPSTREAM: &str = "2001:db8:100::/64";
const ALLOCATION_SIZE: u8 = 120;
/// The upstream network + 2 (the response's `gateway`).
const GATEWAY: &str = "2001:db8:100::2";
const ROUTER_ADDR: &str = "2001:db8:ff::1";
const BROKER_UPLINK_ADDR: &str = "2001:db8:ff::2";
const UPSTREAM_IF: &str = "b0";
const BROKER_MAC: &str = "02:00:00:00:0b:01";
const ROUTER_MAC: &str = "02:00:00:00:0b:02";
const ENDPOINT: &str = "192.0.2.1:51820";
/// anvil accounts of the BlockHost servers.
const CLIENT: usize = 2;
const OTHER_CLIENT: usize = 3;
/// RequestStatus in the ABI.
const PENDING: u8 = 0;
const APPROVED: u8 = 1;
const EXPIRED: u8 = 3;
/// Gas limit of the clients' requests and releases. An estimate can fall
/// short: made against the latest block, it misses that a later timestamp
/// turns a no-op write (`respondedAt` set in the same second) into a real one.
const CLIENT_TX_GAS: u64 = 1_000_000;
/// Long enough that no test's tunnel is released unless it is about that.
const LONG_HANDSHAKE_TIMEOUT: u64 = 120;
/// The shortest the configuration allows.
const SHORT_HANDSHAKE_TIMEOUT: u64 = 10;

fn net(s: &str) -> Ipv6Net {
    s.parse().unwrap_or_else(|_| panic!("{s} is not a prefix"))
}

/// The client's tunnel address: the prefix's network address + 1.
fn client_address(prefix: Ipv6Net) -> String {
    Ipv6Addr::from(u128::from(prefix.network()) + 1).to_string()
}

fn secs(limit: u64) -> Duration {
    Duration::from_secs(limit)
}

// ---------------------------------------------------------------- clients

/// A BlockHost server: an anvil account, a WireGuard key and the secp256k1
/// key its answers are encrypted to.
struct Client {
    account: usize,
    wg: Key,
    secret: [u8; 32],
    public: [u8; 65],
}

impl Client {
    fn new(account: usize) -> Self {
        let (secret, public) = ecies::utils::generate_keypair();
        Client {
            account,
            wg: Key::generate_private(),
            secret: secret.serialize(),
            public: public.serialize(),
        }
    }

    /// The same server with a new WireGuard key.
    fn rotated(&self) -> Self {
        Client {
            account: self.account,
            wg: Key::generate_private(),
            secret: self.secret,
            public: self.public,
        }
    }

    fn wg_public(&self) -> String {
        self.wg.get_public().to_base64()
    }

    fn payload(&self, nft: Address) -> RequestPayload {
        RequestPayload {
            wg_pubkey: self.wg_public(),
            nft_contract: nft.to_string(),
            server_pubkey: hex::encode(self.public),
        }
    }
}

/// What [`Lab::serve`] gives.
struct Served {
    client: Client,
    nft: Address,
    id: u64,
    answer: ResponsePayload,
    prefix: Ipv6Net,
}

// ---------------------------------------------------------------- the lab

struct Settings {
    tag: &'static str,
    handshake_timeout_secs: u64,
    rpc: Rpc,
    /// Deploy a V1 requests contract and watch it as a legacy contract.
    legacy_v1: bool,
    start_request_id: u64,
    max_requests_per_poll: u64,
}

/// How the daemon reaches anvil.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rpc {
    Direct,
    /// Through a relay that can stall.
    Relay,
    /// At a port where nothing listens.
    Nowhere,
}

impl Settings {
    fn new(tag: &'static str) -> Self {
        Settings {
            tag,
            handshake_timeout_secs: LONG_HANDSHAKE_TIMEOUT,
            rpc: Rpc::Direct,
            legacy_v1: false,
            start_request_id: 1,
            max_requests_per_poll: 100,
        }
    }
}

/// Namespaces, links and the rest that need no chain; made on the test's
/// main thread.
struct Topology {
    router: Netns,
    server: Netns,
    broker: Netns,
    pins: TestPins,
}

impl Topology {
    fn new(tag: &str) -> Self {
        let pins = TestPins::new(tag);
        let broker = Netns::new(&format!("{tag}b"));
        let router = Netns::new(&format!("{tag}r"));
        let server = Netns::new(&format!("{tag}s"));
        veth(&broker, UPSTREAM_IF, BROKER_MAC, &router, "r0", ROUTER_MAC);
        broker.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{BROKER_UPLINK_ADDR}/64"),
            "dev",
            UPSTREAM_IF,
            "nodad",
        ]);
        router.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{ROUTER_ADDR}/64"),
            "dev",
            "r0",
            "nodad",
        ]);
        // The provider's side: the upstream prefix is on-link, so the router
        // resolves each address in it with neighbour discovery.
        router.ip(&["-6", "route", "add", UPSTREAM, "dev", "r0"]);
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
        Topology {
            router,
            server,
            broker,
            pins,
        }
    }
}

/// One test's world. Fields drop in order: processes first, then the
/// interfaces, the relay, the chain, the namespaces, the pins, the files.
struct Lab {
    name: &'static str,
    started: Instant,
    daemons: Vec<DaemonProcess>,
    client_wg: Option<WireguardGo>,
    _broker_wg: WireguardGo,
    relay: Option<Relay>,
    dev: DevChain,
    net: Topology,
    dir: tempfile::TempDir,
    wg_if: String,
    client_if: String,
    config: PathBuf,
    db_path: PathBuf,
    broker_public: Key,
    pool: Pool,
    /// The V1 contract watched as legacy (`Settings::legacy_v1`).
    legacy: Option<Address>,
}

/// Builds a lab and runs `body` with it, on a thread inside the broker
/// namespace (so that anvil and every RPC connection are there) with a
/// current-thread runtime.
fn lab_test(settings: Settings, body: impl AsyncFnOnce(&mut Lab) + Send) {
    let started = Instant::now();
    let net = Topology::new(settings.tag);
    let ns_file = File::open(format!("/run/netns/{}", net.broker.name()))
        .expect("opening the broker namespace");
    thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: an open /run/netns file; only this thread changes.
            if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                panic!(
                    "entering the broker namespace: {}",
                    std::io::Error::last_os_error()
                );
            }
            drop(ns_file);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime")
                .block_on(async move {
                    let mut lab = Lab::new(net, settings, started).await;
                    body(&mut lab).await;
                    eprintln!(
                        "{}: passed in {:.1} s",
                        lab.name,
                        lab.started.elapsed().as_secs_f64()
                    );
                });
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    });
}

impl Lab {
    async fn new(net: Topology, settings: Settings, started: Instant) -> Lab {
        let dev = DevChain::start(&Options::default())
            .await
            .expect("anvil with the contracts");
        let dir = tempfile::tempdir().unwrap();
        let operator_key = dir.path().join("operator.key");
        keys::write_secret(&operator_key, &dev.operator.to_bytes().0).unwrap();
        let ecies_key = dir.path().join("ecies.key");
        keys::write_secret(&ecies_key, &dev.ecies_secret).unwrap();
        let wg_key = Key::generate_private();
        let wg_key_file = dir.path().join("wg.key");
        write_private(&wg_key_file, &wg_key.to_base64());
        let wg_if = interface_name("b");
        let client_if = interface_name("c");
        let broker_wg = WireguardGo::guard(&net.broker, &wg_if);
        let relay = (settings.rpc == Rpc::Relay).then(|| Relay::start(&dev.rpc_url));
        let rpc_url = match (&relay, settings.rpc) {
            (Some(relay), _) => relay.url.clone(),
            (None, Rpc::Nowhere) => {
                let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                format!("http://{}", closed.local_addr().unwrap())
            }
            (None, _) => dev.rpc_url.clone(),
        };
        let legacy = if settings.legacy_v1 {
            let provider = ProviderBuilder::new()
                .wallet(EthereumWallet::from(dev.operator.clone()))
                .connect_http(dev.rpc_url.parse().unwrap());
            let v1 = BrokerRequestsV1::deploy(provider)
                .await
                .expect("V1 deploys from the operator");
            Some(*v1.address())
        } else {
            None
        };
        let legacy_line = legacy.map_or_else(String::new, |a| {
            format!("legacy_requests_contracts = [\"{a}\"]\n")
        });
        let db_path = dir.path().join("state/broker.redb");
        let config = dir.path().join("config.toml");
        let text = format!(
            r#"[broker]
upstream_interface = "{UPSTREAM_IF}"
upstream_prefix = "{UPSTREAM}"
allocation_size = {ALLOCATION_SIZE}
ndp_mode = "generic"
ndp_pin_dir = "{pins}"
control_socket = "{socket}"

[wireguard]
interface = "{wg_if}"
listen_port = 51820
endpoint = "{ENDPOINT}"
private_key_file = "{wg_key}"
implementation = "userspace"
handshake_timeout_secs = {timeout}

[database]
path = "{db}"

[onchain]
rpc_url = "{rpc_url}"
chain_id = {chain_id}
requests_contract = "{contract}"
operator_key_file = "{operator}"
ecies_key_file = "{ecies}"
poll_interval_secs = 1
confirmations = 0
start_request_id = {start}
max_requests_per_poll = {per_poll}
{legacy_line}"#,
            pins = net.pins.dir.path().display(),
            socket = dir.path().join("control.sock").display(),
            wg_key = wg_key_file.display(),
            timeout = settings.handshake_timeout_secs,
            db = db_path.display(),
            chain_id = dev.chain_id,
            contract = dev.requests,
            operator = operator_key.display(),
            ecies = ecies_key.display(),
            start = settings.start_request_id,
            per_poll = settings.max_requests_per_poll,
        );
        std::fs::write(&config, text).unwrap();
        Lab {
            name: settings.tag,
            started,
            daemons: Vec::new(),
            client_wg: None,
            _broker_wg: broker_wg,
            relay,
            dev,
            net,
            dir,
            wg_if,
            client_if,
            config,
            db_path,
            broker_public: wg_key.get_public(),
            pool: Pool::new(UPSTREAM.parse().unwrap(), ALLOCATION_SIZE).unwrap(),
            legacy,
        }
    }

    // -------------------------------------------------------- the daemon

    /// Starts the daemon (with crash points `failpoints`), not waiting.
    fn spawn_daemon(&mut self, failpoints: Option<&str>) -> &mut DaemonProcess {
        let label = format!("{} daemon #{}", self.name, self.daemons.len() + 1);
        let daemon = DaemonProcess::start(&label, &self.net.broker, &self.config, failpoints);
        self.daemons.push(daemon);
        self.daemon()
    }

    /// Starts the daemon with crash points `points` (`NAME=return;…`).
    fn spawn_crashing(&mut self, points: &str) -> &mut DaemonProcess {
        let daemon = self.spawn_daemon(Some(points));
        // Absent when the binary was built without the failpoints feature
        // (a plain `cargo build` after `cargo test` replaces it).
        daemon.wait_log("crash points armed", 1, secs(10));
        daemon
    }

    /// Starts the daemon and waits until its kernel side is up.
    fn start_daemon(&mut self) -> &mut DaemonProcess {
        let daemon = self.spawn_daemon(None);
        daemon.wait_log("kernel reconciled with the database", 1, secs(30));
        daemon
    }

    /// The daemon started last.
    fn daemon(&mut self) -> &mut DaemonProcess {
        self.daemons.last_mut().expect("a daemon was started")
    }

    // -------------------------------------------------------- the chain

    fn wallet(&self, account: usize) -> DynProvider {
        ProviderBuilder::new()
            .wallet(EthereumWallet::from(anvil_signer(account)))
            .connect_http(self.dev.rpc_url.parse().unwrap())
            .erased()
    }

    /// A TestNFT owned by `owner`.
    async fn nft(&self, owner: usize) -> Address {
        *TestNFT::deploy(self.wallet(owner), anvil_signer(owner).address())
            .await
            .expect("TestNFT deploys")
            .address()
    }

    /// `submitRequest(nft, payload)` from `account`; the request id.
    async fn submit(&self, account: usize, nft: Address, payload: Vec<u8>) -> u64 {
        self.submit_to(self.dev.requests, account, nft, payload)
            .await
    }

    /// `submit` to `contract` (V1 has the same call and event).
    async fn submit_to(
        &self,
        contract: Address,
        account: usize,
        nft: Address,
        payload: Vec<u8>,
    ) -> u64 {
        let receipt = BrokerRequests::new(contract, self.wallet(account))
            .submitRequest(nft, payload.into())
            .gas(CLIENT_TX_GAS)
            .send()
            .await
            .expect("submitRequest sent")
            .get_receipt()
            .await
            .expect("a receipt");
        assert!(receipt.status(), "submitRequest reverted");
        receipt
            .decoded_log::<BrokerRequests::RequestSubmitted>()
            .expect("RequestSubmitted")
            .requestId
            .to::<u64>()
    }

    /// The encrypted payload of a request as a client sends it.
    fn encrypt(&self, json: &str) -> Vec<u8> {
        protocol::encrypt(&self.dev.ecies_public, json.as_bytes()).unwrap()
    }

    /// A valid request from `client` for `nft`.
    async fn request_tunnel(&self, client: &Client, nft: Address) -> u64 {
        self.request_tunnel_at(self.dev.requests, client, nft).await
    }

    async fn request_tunnel_at(&self, contract: Address, client: &Client, nft: Address) -> u64 {
        let payload = self.encrypt(&client.payload(nft).to_json());
        self.submit_to(contract, client.account, nft, payload).await
    }

    async fn request(&self, id: u64) -> BrokerRequests::Request {
        self.request_at(self.dev.requests, id).await
    }

    /// `getRequest(id)` on `contract` (V1's `Request` has V2's layout).
    async fn request_at(&self, contract: Address, id: u64) -> BrokerRequests::Request {
        BrokerRequests::new(contract, self.wallet(0))
            .getRequest(U256::from(id))
            .call()
            .await
            .unwrap_or_else(|e| panic!("getRequest({id}): {e}"))
    }

    /// A new server (anvil `account`, an NFT of its own) whose request the
    /// daemon answered, the answer checked against the configuration.
    async fn serve(&mut self, account: usize) -> Served {
        let nft = self.nft(account).await;
        let client = Client::new(account);
        let id = self.request_tunnel(&client, nft).await;
        let answer = self.wait_answer(id, &client, secs(30)).await;
        let prefix = check_answer(self, &answer);
        Served {
            client,
            nft,
            id,
            answer,
            prefix,
        }
    }

    /// Polls `getRequest(id)` until it is Approved (at most `limit`) and
    /// reads the answer as the client does: the framed id must match, the
    /// rest decrypt with the client's key.
    async fn wait_answer(&mut self, id: u64, client: &Client, limit: Duration) -> ResponsePayload {
        self.wait_answer_at(self.dev.requests, id, client, limit)
            .await
    }

    async fn wait_answer_at(
        &mut self,
        contract: Address,
        id: u64,
        client: &Client,
        limit: Duration,
    ) -> ResponsePayload {
        let deadline = Instant::now() + limit;
        loop {
            let request = self.request_at(contract, id).await;
            match request.status {
                APPROVED => {
                    let (framed_id, ciphertext) =
                        protocol::unframe_response(&request.responsePayload).unwrap();
                    assert_eq!(framed_id, id, "the answer names another request");
                    let plaintext = protocol::decrypt(&client.secret, ciphertext)
                        .expect("the answer decrypts with the client's key");
                    return ResponsePayload::parse(&plaintext).expect("a response payload");
                }
                PENDING => {}
                other => panic!("request {id} is in status {other}, not answered"),
            }
            let daemon = self.daemon();
            assert!(
                daemon.running(),
                "the daemon exited while request {id} waits:\n{}",
                daemon.log()
            );
            assert!(
                Instant::now() < deadline,
                "request {id} not answered within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn status(&self, id: u64) -> u8 {
        self.request(id).await.status
    }

    async fn anvil(&self, method: &'static str, params: serde_json::Value) -> serde_json::Value {
        self.wallet(0)
            .raw_request(method.into(), params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// How many `ResponseSubmitted` events each request has.
    async fn response_events(&self) -> BTreeMap<u64, usize> {
        self.response_events_at(self.dev.requests).await
    }

    async fn response_events_at(&self, contract: Address) -> BTreeMap<u64, usize> {
        let filter = Filter::new()
            .address(contract)
            .event_signature(BrokerRequests::ResponseSubmitted::SIGNATURE_HASH)
            .from_block(0);
        let mut counts = BTreeMap::new();
        for log in self.wallet(0).get_logs(&filter).await.unwrap() {
            let event = log
                .log_decode::<BrokerRequests::ResponseSubmitted>()
                .unwrap();
            *counts
                .entry(event.inner.data.requestId.to::<u64>())
                .or_default() += 1;
        }
        counts
    }

    /// `AllocationReleased` events: (request id, NFT, by).
    async fn released_events(&self) -> Vec<(u64, Address, Address)> {
        let filter = Filter::new()
            .address(self.dev.requests)
            .event_signature(BrokerRequests::AllocationReleased::SIGNATURE_HASH)
            .from_block(0);
        self.wallet(0)
            .get_logs(&filter)
            .await
            .unwrap()
            .iter()
            .map(|log| {
                let e = log
                    .log_decode::<BrokerRequests::AllocationReleased>()
                    .unwrap()
                    .inner
                    .data;
                (e.requestId.to::<u64>(), e.nftContract, e.by)
            })
            .collect()
    }

    /// Every transaction the operator sent to the requests contract, as
    /// `submitResponse(ID)`, `releaseAllocation(NFT)` or the function name.
    async fn operator_calls(&self) -> Vec<String> {
        let provider = self.wallet(0);
        let operator = self.dev.operator.address();
        let latest = provider.get_block_number().await.unwrap();
        let mut calls = Vec::new();
        for number in 0..=latest {
            let block = provider
                .get_block_by_number(number.into())
                .full()
                .await
                .unwrap()
                .expect("a mined block");
            for tx in block.transactions.into_transactions() {
                if tx.from() != operator || tx.to() != Some(self.dev.requests) {
                    continue;
                }
                calls.push(match BrokerRequestsCalls::abi_decode(tx.input()) {
                    Ok(BrokerRequestsCalls::submitResponse(c)) => {
                        format!("submitResponse({})", c.requestId)
                    }
                    Ok(BrokerRequestsCalls::releaseAllocation(c)) => {
                        format!("releaseAllocation({})", c.nftContract)
                    }
                    Ok(BrokerRequestsCalls::setTotalCapacity(_)) => "setTotalCapacity".into(),
                    Ok(other) => format!("{other:?}"),
                    Err(e) => format!("undecodable: {e}"),
                });
            }
        }
        calls
    }

    fn count(calls: &[String], call: &str) -> usize {
        calls.iter().filter(|c| *c == call).count()
    }

    // -------------------------------------------------------- the kernel

    /// The broker's peers: (public key, allowed IPs), sorted.
    fn peers(&self) -> Vec<(String, String)> {
        allowed_ips(&self.net.broker, &self.wg_if)
    }

    /// The broker's routes (protocol 180) through its WireGuard interface.
    fn routes(&self) -> Vec<Ipv6Net> {
        let shown = self.net.broker.ip(&[
            "-6",
            "route",
            "show",
            "proto",
            &ROUTE_PROTOCOL.to_string(),
            "dev",
            &self.wg_if,
        ]);
        let mut routes: Vec<Ipv6Net> = shown
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(net)
            .collect();
        routes.sort();
        routes
    }

    /// The prefixes in the responder's pinned map, sorted.
    fn ndp_prefixes(&self) -> Vec<Ipv6Net> {
        let data = MapData::from_pin(self.net.pins.dir.map(PREFIXES_MAP)).expect("the pinned map");
        let map: BpfHashMap<MapData, PrefixKey, PrefixValue> =
            BpfHashMap::try_from(Map::from_map_data(data).unwrap()).unwrap();
        let mut nets: Vec<Ipv6Net> = map
            .keys()
            .map(|k| ndp::net_for(&k.unwrap()).expect("a well-formed key"))
            .collect();
        nets.sort();
        nets
    }

    /// `blockhost-broker ndp status`'s prefix count.
    fn ndp_status_count(&self) -> usize {
        let (code, out) = broker_status(&self.net.broker, &self.net.pins.dir);
        assert_eq!(code, Some(0), "ndp status: {out}");
        let line = out
            .lines()
            .find(|l| l.starts_with("prefixes:"))
            .unwrap_or_else(|| panic!("no prefixes line in:\n{out}"));
        line["prefixes:".len()..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line}"))
    }

    /// The database (the daemon must be stopped: redb locks the file).
    fn database(&self) -> Store {
        assert!(
            self.daemons.iter().all(|d| d.pid().is_none()),
            "the daemon still holds the database"
        );
        Store::open(&self.db_path, self.pool).expect("the database opens")
    }

    /// With the daemon stopped: the database's allocations are exactly the
    /// peers (key and prefix), the routes and the responder's prefixes; no
    /// request is left unfinished and no on-chain release owed. Returns the
    /// allocations.
    fn assert_consistent(&self) -> Vec<Allocation> {
        let db = self.database();
        let all = db.allocations().unwrap();
        let unfinished = db.unfinished().unwrap();
        let owed = db.owed_releases().unwrap();
        assert_eq!(unfinished, [], "requests left unfinished");
        assert_eq!(owed, [], "on-chain releases still owed");
        let mut want_peers: Vec<(String, String)> = all
            .iter()
            .map(|a| (Key(a.wg_key).to_base64(), a.prefix.to_string()))
            .collect();
        want_peers.sort();
        let mut prefixes: Vec<Ipv6Net> = all.iter().map(|a| a.prefix).collect();
        prefixes.sort();
        assert_eq!(self.peers(), want_peers, "peers vs the database");
        assert_eq!(self.routes(), prefixes, "routes vs the database");
        assert_eq!(self.ndp_prefixes(), prefixes, "NDP map vs the database");
        assert_eq!(self.ndp_status_count(), prefixes.len());
        all
    }

    /// The client's end of the tunnel in the server namespace, set up from
    /// the answer as a client does.
    fn bring_up_tunnel(&mut self, client: &Client, answer: &ResponsePayload) {
        let broker = Key::from_base64(&answer.broker_pubkey).expect("a WireGuard key");
        let prefix = net(&answer.prefix);
        let tunnel = ClientTunnel {
            ns: &self.net.server,
            name: &self.client_if,
            key_dir: self.dir.path(),
            endpoint: &answer.broker_endpoint,
            allowed_ips: "::/0",
            route: "::/0",
        };
        if self.client_wg.is_none() {
            self.client_wg = Some(WireguardGo::guard(&self.net.server, &self.client_if));
            tunnel.start(&client.wg, &broker, &client_address(prefix));
        } else {
            tunnel.set_key(&client.wg, &broker);
        }
    }
}

/// Pings until answered, at most `tries` one-second attempts.
fn ping_within(ns: &Netns, addr: &str, tries: u32) -> bool {
    (0..tries).any(|_| ns.ping(addr))
}

/// The log line that holds all of `needles`.
fn log_line<'a>(log: &'a str, needles: &[&str]) -> Option<&'a str> {
    log.lines().find(|l| needles.iter().all(|n| l.contains(n)))
}

/// The time of day of a log line, in seconds (tracing's RFC 3339 stamp).
fn log_time(line: &str) -> f64 {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    let time = stamp
        .split_once('T')
        .and_then(|(_, t)| t.strip_suffix('Z'))
        .unwrap_or_else(|| panic!("no timestamp in {line}"));
    time.split(':')
        .map(|part| part.parse::<f64>().expect("a number"))
        .fold(0.0, |acc, part| acc * 60.0 + part)
}

/// Checks an answer against the configuration; returns its prefix.
fn check_answer(lab: &Lab, answer: &ResponsePayload) -> Ipv6Net {
    let prefix = net(&answer.prefix);
    assert_eq!(prefix.prefix_len(), ALLOCATION_SIZE, "{answer:?}");
    assert!(net(UPSTREAM).contains(&prefix), "{answer:?}");
    assert_eq!(prefix, prefix.trunc(), "host bits in {answer:?}");
    assert_eq!(answer.prefix, prefix.to_string(), "not the canonical form");
    assert_ne!(
        prefix.network(),
        net(UPSTREAM).network(),
        "the broker's own /{ALLOCATION_SIZE} was handed out"
    );
    assert_eq!(answer.gateway, GATEWAY);
    assert_eq!(answer.broker_pubkey, lab.broker_public.to_base64());
    assert_eq!(answer.broker_endpoint, ENDPOINT);
    assert_eq!(answer.dns_zone, None);
    prefix
}

// ---------------------------------------------------------------- tests

#[test]
fn a_request_is_answered_and_its_tunnel_carries_traffic() {
    lab_test(Settings::new("ans"), async |lab: &mut Lab| {
        lab.start_daemon();
        let Served {
            client,
            nft,
            id,
            answer,
            prefix,
        } = lab.serve(CLIENT).await;

        assert_eq!(
            lab.peers(),
            [(client.wg_public(), prefix.to_string())],
            "wg show"
        );
        assert_eq!(lab.routes(), [prefix]);
        assert_eq!(lab.ndp_status_count(), 1);
        assert_eq!(lab.ndp_prefixes(), [prefix]);

        lab.bring_up_tunnel(&client, &answer);
        assert!(
            ping_within(&lab.net.server, GATEWAY, 10),
            "the client cannot reach the gateway through its tunnel"
        );
        lab.daemon().wait_log("tunnel up", 1, secs(15));
        // From the provider's side: the router resolves the client's address
        // with the responder's answer and reaches it through the broker.
        let address = client_address(prefix);
        assert!(
            ping_within(&lab.net.router, &address, 5),
            "the router cannot reach {address} through the broker"
        );
        let neigh = lab
            .net
            .router
            .neigh("r0", &address)
            .expect("a neighbour entry");
        assert_eq!(neigh.lladdr.as_deref(), Some(BROKER_MAC), "{neigh:?}");

        lab.daemon().stop();
        let all = lab.assert_consistent();
        assert_eq!(all.len(), 1);
        let a = &all[0];
        assert_eq!((a.nft, a.request_id, a.prefix), (nft, id, prefix));
        assert!(a.answered_at.is_some(), "{a:?}");
        assert_eq!(a.handshake_deadline, None, "the handshake was seen: {a:?}");
        assert_eq!(lab.response_events().await, BTreeMap::from([(id, 1)]));
    });
}

#[test]
fn a_new_request_of_the_same_nft_rotates_the_key_and_keeps_the_prefix() {
    lab_test(Settings::new("rot"), async |lab: &mut Lab| {
        lab.start_daemon();
        let Served {
            client: first,
            nft,
            id: id1,
            answer: answer1,
            prefix,
        } = lab.serve(CLIENT).await;
        lab.bring_up_tunnel(&first, &answer1);
        assert!(ping_within(&lab.net.server, GATEWAY, 10));
        lab.daemon().wait_log("tunnel up", 1, secs(15));

        let second = first.rotated();
        let id2 = lab.request_tunnel(&second, nft).await;
        assert_eq!(lab.status(id1).await, EXPIRED, "overwritten on chain");
        let answer2 = lab.wait_answer(id2, &second, secs(30)).await;
        assert_eq!(check_answer(lab, &answer2), prefix, "the prefix changed");
        assert_eq!(
            lab.peers(),
            [(second.wg_public(), prefix.to_string())],
            "the old key's peer must be gone, the new one there"
        );
        assert_eq!(lab.routes(), [prefix]);
        assert_eq!(lab.ndp_prefixes(), [prefix]);

        // The client switches keys; the tunnel works with the new one.
        lab.bring_up_tunnel(&second, &answer2);
        assert!(
            ping_within(&lab.net.server, GATEWAY, 10),
            "no traffic with the rotated key"
        );
        lab.daemon().wait_log("tunnel up", 2, secs(15));

        lab.daemon().stop();
        let all = lab.assert_consistent();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].request_id, all[0].prefix), (id2, prefix));
        assert_eq!(
            lab.response_events().await,
            BTreeMap::from([(id1, 1), (id2, 1)])
        );
    });
}

#[test]
fn invalid_requests_are_never_answered_and_do_not_block_valid_ones() {
    lab_test(Settings::new("rej"), async |lab: &mut Lab| {
        lab.start_daemon();
        let client = Client::new(CLIENT);

        // 1. Submitted by the NFT's owner, who hands the NFT contract to
        //    someone else in the same block: the requester no longer owns it
        //    when the broker looks.
        let sold = lab.nft(CLIENT).await;
        let payload = lab.encrypt(&client.payload(sold).to_json());
        let wallet = lab.wallet(CLIENT);
        lab.anvil("evm_setAutomine", json!([false])).await;
        let submitted = BrokerRequests::new(lab.dev.requests, &wallet)
            .submitRequest(sold, payload.into())
            .gas(CLIENT_TX_GAS)
            .send()
            .await
            .expect("submitRequest sent");
        let transferred = TestNFT::new(sold, &wallet)
            .transferOwnership(anvil_signer(OTHER_CLIENT).address())
            .gas(CLIENT_TX_GAS)
            .send()
            .await
            .expect("transferOwnership sent");
        lab.anvil("evm_mine", json!([])).await;
        lab.anvil("evm_setAutomine", json!([true])).await;
        let receipt = submitted.get_receipt().await.unwrap();
        assert!(receipt.status());
        assert!(transferred.get_receipt().await.unwrap().status());
        let not_owner = receipt
            .decoded_log::<BrokerRequests::RequestSubmitted>()
            .unwrap()
            .requestId
            .to::<u64>();

        // 2. Not ECIES at all.
        let nft = lab.nft(CLIENT).await;
        let garbage = lab.submit(CLIENT, nft, vec![0x5a; 200]).await;

        // 3. A WireGuard key that is not one.
        let nft = lab.nft(CLIENT).await;
        let mut payload = client.payload(nft);
        payload.wg_pubkey = "bm90IGEga2V5".into();
        let bad_wg = lab
            .submit(CLIENT, nft, lab.encrypt(&payload.to_json()))
            .await;

        // 4. A server key that is no curve point.
        let nft = lab.nft(CLIENT).await;
        let mut payload = client.payload(nft);
        payload.server_pubkey = format!("04{}", "11".repeat(64));
        let bad_server = lab
            .submit(CLIENT, nft, lab.encrypt(&payload.to_json()))
            .await;

        // A valid request after them is answered.
        let Served {
            client: valid_client,
            id: valid,
            prefix,
            ..
        } = lab.serve(OTHER_CLIENT).await;

        // 5. A WireGuard key that another allocation holds.
        let nft = lab.nft(CLIENT).await;
        let mut payload = client.payload(nft);
        payload.wg_pubkey = valid_client.wg_public();
        let key_in_use = lab
            .submit(CLIENT, nft, lab.encrypt(&payload.to_json()))
            .await;
        lab.daemon().wait_log("rejected (silently)", 5, secs(15));

        let invalid = [
            (not_owner, "NotOwner"),
            (garbage, "does not decrypt"),
            (bad_wg, "wgPubkey"),
            (bad_server, "serverPubkey"),
            (key_in_use, "belongs to another allocation"),
        ];
        // Still pending several polls later, each rejected once, for its reason.
        tokio::time::sleep(secs(4)).await;
        let log = lab.daemon().log();
        for (id, reason) in invalid {
            assert_eq!(lab.status(id).await, PENDING, "request {id} ({reason})");
            let line = log_line(&log, &["rejected (silently)", &format!(" id={id}")])
                .unwrap_or_else(|| panic!("no rejection of request {id} in:\n{log}"));
            assert!(line.contains(reason), "request {id}: {line}");
        }
        assert_eq!(log.matches("rejected (silently)").count(), 5, "{log}");
        assert_eq!(
            lab.peers(),
            [(valid_client.wg_public(), prefix.to_string())]
        );
        assert_eq!(lab.response_events().await, BTreeMap::from([(valid, 1)]));

        lab.daemon().stop();
        assert_eq!(lab.assert_consistent().len(), 1);
    });
}

#[test]
fn an_rpc_outage_is_survived() {
    let settings = Settings {
        rpc: Rpc::Relay,
        ..Settings::new("rpc")
    };
    lab_test(settings, async |lab: &mut Lab| {
        lab.start_daemon();
        let nft = lab.nft(CLIENT).await;
        let client = Client::new(CLIENT);
        // The daemon is through its first polls.
        let first = lab.request_tunnel(&client, nft).await;
        lab.wait_answer(first, &client, secs(30)).await;
        // ... and has its receipt (a stall now would hold it in the receipt
        // wait, up to 180 s, rather than fail polls).
        lab.daemon().wait_log("answered", 1, secs(10));

        lab.relay.as_ref().unwrap().stall();
        let stalled = Instant::now();
        let nft = lab.nft(OTHER_CLIENT).await;
        let other = Client::new(OTHER_CLIENT);
        let id = lab.request_tunnel(&other, nft).await;
        // Each poll waits out the RPC timeout (10 s), then backs off.
        lab.daemon()
            .wait_log("poll failed (2 in a row)", 1, secs(45));
        assert!(lab.daemon().running());
        assert_eq!(lab.status(id).await, PENDING);
        let log = lab.daemon().log();
        let failure = log_line(&log, &["poll failed (1 in a row)"]).unwrap();
        assert!(failure.contains("no answer from"), "{failure}");
        // Backed off: 10 s of RPC timeout plus a pause of 2 poll intervals
        // (1 without back-off) between the two failures.
        let second = log_line(&log, &["poll failed (2 in a row)"]).unwrap();
        let between = log_time(second) - log_time(failure);
        assert!(
            between >= 11.6,
            "{between:.2} s between:\n{failure}\n{second}"
        );
        eprintln!(
            "an_rpc_outage_is_survived: two failed polls after {:.1} s",
            stalled.elapsed().as_secs_f64()
        );

        lab.relay.as_ref().unwrap().resume();
        let resumed = Instant::now();
        let answer = lab.wait_answer(id, &other, secs(40)).await;
        eprintln!(
            "an_rpc_outage_is_survived: answered {:.1} s after the endpoint came back",
            resumed.elapsed().as_secs_f64()
        );
        check_answer(lab, &answer);

        lab.daemon().stop();
        assert_eq!(lab.assert_consistent().len(), 2);
        assert_eq!(
            lab.response_events().await,
            BTreeMap::from([(first, 1), (id, 1)])
        );
    });
}

#[test]
fn a_daemon_killed_anywhere_in_the_request_path_answers_exactly_once() {
    lab_test(Settings::new("crash"), async |lab: &mut Lab| {
        let mut answered = Vec::new();
        for point in ["after-decision", "after-kernel", "before-answered"] {
            let account = if answered.len() % 2 == 0 {
                CLIENT
            } else {
                OTHER_CLIENT
            };
            let nft = lab.nft(account).await;
            let client = Client::new(account);
            let id = lab.request_tunnel(&client, nft).await;

            let crashing = lab.spawn_crashing(&format!("{point}=return"));
            let status = crashing.wait_exit(secs(30));
            assert!(
                killed_by_sigkill(status),
                "{point}: ended with {status}, not SIGKILL:\n{}",
                crashing.log()
            );
            assert!(
                crashing
                    .log()
                    .contains(&format!("crash point {point}: SIGKILL")),
                "{}",
                crashing.log()
            );
            let expected = if point == "before-answered" {
                APPROVED
            } else {
                PENDING
            };
            assert_eq!(lab.status(id).await, expected, "after {point}");
            if point == "before-answered" {
                // The client has its answer before the broker knows it sent
                // it, and brings the tunnel up at once: the broker's
                // wireguard-go has the peer and answers while no daemon runs.
                let answer = lab.wait_answer(id, &client, secs(1)).await;
                lab.bring_up_tunnel(&client, &answer);
                assert!(ping_within(&lab.net.server, GATEWAY, 10));
                // The daemon's clock is seconds: the handshake is now
                // strictly older than anything the restart records.
                tokio::time::sleep(Duration::from_millis(1100)).await;
            }

            lab.start_daemon();
            let answer = lab.wait_answer(id, &client, secs(30)).await;
            let prefix = check_answer(lab, &answer);
            if point == "before-answered" {
                // That handshake counts: the tunnel is up, and must not be
                // released for want of another one.
                lab.daemon().wait_log("tunnel up", 1, secs(10));
                // The restart adopted the interface: the tunnel still works.
                assert!(ping_within(&lab.net.server, GATEWAY, 5));
            }
            lab.daemon().stop();
            // The restart sent the answer itself, or found it on chain.
            let log = lab.daemon().log();
            let found = log_line(&log, &["already answered on chain", &format!(" id={id}")]);
            let sent = log_line(&log, &["answered", &format!(" id={id}"), "tx=0x"]);
            if point == "before-answered" {
                assert!(found.is_some() && sent.is_none(), "{point}:\n{log}");
            } else {
                assert!(sent.is_some() && found.is_none(), "{point}:\n{log}");
            }
            let all = lab.assert_consistent();
            let a = all
                .iter()
                .find(|a| a.nft == nft)
                .unwrap_or_else(|| panic!("{point}: no allocation for {nft}: {all:?}"));
            assert_eq!((a.request_id, a.prefix), (id, prefix), "{point}");
            assert!(a.answered_at.is_some(), "{point}: {a:?}");
            assert_eq!(
                a.handshake_deadline.is_none(),
                point == "before-answered",
                "{point}: {a:?}"
            );
            answered.push((id, prefix));
            assert_eq!(all.len(), answered.len(), "{point}: {all:?}");
        }

        let mut prefixes: Vec<Ipv6Net> = answered.iter().map(|(_, p)| *p).collect();
        prefixes.dedup();
        assert_eq!(prefixes.len(), 3, "prefixes handed out twice: {answered:?}");
        let ids = answered.iter().map(|(id, _)| (*id, 1));
        assert_eq!(lab.response_events().await, BTreeMap::from_iter(ids));
        let calls = lab.operator_calls().await;
        for (id, _) in &answered {
            assert_eq!(
                Lab::count(&calls, &format!("submitResponse({id})")),
                1,
                "{calls:?}"
            );
        }
        assert_eq!(calls.len(), 1 + answered.len(), "{calls:?}");
    });
}

#[test]
fn a_tunnel_that_never_comes_up_is_released() {
    let settings = Settings {
        handshake_timeout_secs: SHORT_HANDSHAKE_TIMEOUT,
        ..Settings::new("hs")
    };
    lab_test(settings, async |lab: &mut Lab| {
        lab.start_daemon();
        let Served {
            nft, id, prefix, ..
        } = lab.serve(CLIENT).await;
        let answered = Instant::now();
        assert_eq!(lab.routes(), [prefix]);

        // The client never brings its tunnel up.
        let operator = lab.dev.operator.address();
        let deadline = answered + secs(SHORT_HANDSHAKE_TIMEOUT + 20);
        let released = loop {
            let events = lab.released_events().await;
            if !events.is_empty() {
                break events;
            }
            assert!(
                Instant::now() < deadline,
                "no release {} s after the answer",
                SHORT_HANDSHAKE_TIMEOUT + 20
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let after = answered.elapsed();
        assert_eq!(released, [(id, nft, operator)]);
        assert!(
            after >= secs(SHORT_HANDSHAKE_TIMEOUT - 1),
            "released {after:?} after the answer"
        );
        eprintln!(
            "a_tunnel_that_never_comes_up_is_released: released {:.1} s after the answer",
            after.as_secs_f64()
        );
        assert_eq!(lab.status(id).await, EXPIRED);
        let log = lab.daemon().log();
        assert!(
            log_line(&log, &["released: no handshake within 10 s"]).is_some(),
            "{log}"
        );
        assert_eq!(lab.peers(), []);
        assert_eq!(lab.routes(), []);
        assert_eq!(lab.ndp_prefixes(), []);

        lab.daemon().stop();
        assert_eq!(lab.assert_consistent(), []);
        let calls = lab.operator_calls().await;
        assert_eq!(
            Lab::count(&calls, &format!("releaseAllocation({nft})")),
            1,
            "{calls:?}"
        );
    });
}

#[test]
fn a_restart_repairs_tampered_kernel_state() {
    lab_test(Settings::new("tamp"), async |lab: &mut Lab| {
        lab.start_daemon();
        let Served {
            client, id, prefix, ..
        } = lab.serve(CLIENT).await;
        lab.daemon().stop();

        // Behind the stopped daemon's back: its peer, route and NDP entry go,
        // strangers of each kind come.
        let bogus = net("2001:db8:100::f00/120");
        let bogus_key = Key::generate_private().get_public().to_base64();
        let wg = |args: &[&str]| {
            let out = lab.net.broker.exec("wg", args);
            assert!(out.status.success(), "wg {args:?}: {out:?}");
        };
        wg(&["set", &lab.wg_if, "peer", &client.wg_public(), "remove"]);
        wg(&[
            "set",
            &lab.wg_if,
            "peer",
            &bogus_key,
            "allowed-ips",
            &bogus.to_string(),
        ]);
        let proto = ROUTE_PROTOCOL.to_string();
        lab.net.broker.ip(&[
            "-6",
            "route",
            "del",
            &prefix.to_string(),
            "dev",
            &lab.wg_if,
            "proto",
            &proto,
        ]);
        lab.net.broker.ip(&[
            "-6",
            "route",
            "add",
            &bogus.to_string(),
            "dev",
            &lab.wg_if,
            "proto",
            &proto,
        ]);
        {
            // The responder's own library on its pinned maps (the program it
            // loads is never attached).
            let mut responder = Responder::load(&lab.net.pins.dir).unwrap();
            responder.insert(bogus).unwrap();
            assert!(responder.remove(prefix).unwrap());
        }
        assert_eq!(lab.peers(), [(bogus_key.clone(), bogus.to_string())]);
        assert_eq!(lab.routes(), [bogus]);
        assert_eq!(lab.ndp_prefixes(), [bogus]);

        lab.start_daemon();
        let log = lab.daemon().log();
        let summary = log_line(&log, &["kernel reconciled with the database"]).unwrap();
        assert!(
            summary.ends_with(
                "kernel reconciled with the database: 1 allocations; peers +1 -1, routes +1 -1, NDP +1 -1"
            ),
            "{summary}"
        );
        assert_eq!(lab.peers(), [(client.wg_public(), prefix.to_string())]);
        assert_eq!(lab.routes(), [prefix]);
        assert_eq!(lab.ndp_prefixes(), [prefix]);

        // Nothing else changes: no second answer.
        tokio::time::sleep(secs(2)).await;
        lab.daemon().stop();
        lab.assert_consistent();
        assert_eq!(lab.response_events().await, BTreeMap::from([(id, 1)]));
    });
}

#[test]
fn sigterm_while_idle_stops_cleanly_and_a_restart_goes_on() {
    lab_test(Settings::new("term"), async |lab: &mut Lab| {
        lab.start_daemon();
        let Served {
            id, prefix: first, ..
        } = lab.serve(CLIENT).await;
        // Idle for a few polls.
        tokio::time::sleep(secs(3)).await;

        let (status, took) = lab.daemon().terminate(secs(10));
        assert!(status.success(), "exit status {status}");
        assert!(took < secs(3), "SIGTERM took {took:?}");
        eprintln!(
            "sigterm_while_idle_stops_cleanly_and_a_restart_goes_on: exit 0 after {:.0} ms",
            took.as_secs_f64() * 1000.0
        );
        assert!(lab.daemon().log().contains("stopping: state is on disk"));
        let all = lab.assert_consistent();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].request_id, all[0].prefix), (id, first));

        lab.start_daemon();
        let Served {
            id: id2,
            prefix: second,
            ..
        } = lab.serve(OTHER_CLIENT).await;
        assert_ne!(second, first);
        lab.daemon().stop();
        assert_eq!(lab.assert_consistent().len(), 2);
        assert_eq!(
            lab.response_events().await,
            BTreeMap::from([(id, 1), (id2, 1)])
        );
    });
}

#[test]
fn a_daemon_killed_while_releasing_finishes_the_release_once() {
    let settings = Settings {
        handshake_timeout_secs: SHORT_HANDSHAKE_TIMEOUT,
        ..Settings::new("rel")
    };
    lab_test(settings, async |lab: &mut Lab| {
        let nft = lab.nft(CLIENT).await;
        let client = Client::new(CLIENT);
        let id = lab.request_tunnel(&client, nft).await;

        // Killed once the release has committed: the kernel still has it.
        lab.spawn_crashing("after-release=return");
        let answer = lab.wait_answer(id, &client, secs(30)).await;
        let prefix = check_answer(lab, &answer);
        let crashing = lab.daemon();
        let status = crashing.wait_exit(secs(SHORT_HANDSHAKE_TIMEOUT + 30));
        assert!(killed_by_sigkill(status), "{status}:\n{}", crashing.log());
        assert!(
            crashing
                .log()
                .contains("crash point after-release: SIGKILL")
        );
        {
            let db = lab.database();
            assert_eq!(db.allocations().unwrap(), []);
            let owed = db.owed_releases().unwrap();
            let owed: Vec<_> = owed.iter().map(|o| (o.contract, o.nft)).collect();
            assert_eq!(owed, [(lab.dev.requests, nft)]);
        }
        assert_eq!(lab.peers(), [(client.wg_public(), prefix.to_string())]);
        assert_eq!(lab.routes(), [prefix]);
        assert_eq!(lab.ndp_prefixes(), [prefix]);
        assert_eq!(lab.released_events().await, []);

        // The restart clears the kernel, sends the release and is killed
        // before recording it.
        let restarted = lab.spawn_crashing("before-release-recorded=return");
        let status = restarted.wait_exit(secs(30));
        assert!(killed_by_sigkill(status), "{status}:\n{}", restarted.log());
        let log = restarted.log();
        assert!(
            log.contains(
                "kernel reconciled with the database: 0 allocations; peers +0 -1, routes +0 -1, NDP +0 -1"
            ),
            "{log}"
        );
        assert!(log.contains("crash point before-release-recorded: SIGKILL"));
        assert_eq!(lab.peers(), []);
        assert_eq!(lab.routes(), []);
        assert_eq!(lab.ndp_prefixes(), []);
        let operator = lab.dev.operator.address();
        assert_eq!(lab.released_events().await, [(id, nft, operator)]);

        // The next start finds nothing left to release and drops the debt.
        lab.start_daemon();
        lab.daemon()
            .wait_log("already released on chain; dropped", 1, secs(15));
        lab.daemon().stop();
        assert_eq!(lab.assert_consistent(), []);
        assert_eq!(lab.released_events().await, [(id, nft, operator)]);
        let calls = lab.operator_calls().await;
        assert_eq!(
            Lab::count(&calls, &format!("releaseAllocation({nft})")),
            1,
            "{calls:?}"
        );
        assert_eq!(lab.status(id).await, EXPIRED);
    });
}

/// An on-chain release owed for a tunnel that never came up must not end a
/// newer request of the same NFT: `releaseAllocation` ends the NFT's current
/// request, which by the time the release goes out may be a new one.
#[test]
fn an_owed_release_never_ends_a_newer_request_of_the_nft() {
    let settings = Settings {
        handshake_timeout_secs: SHORT_HANDSHAKE_TIMEOUT,
        ..Settings::new("newer")
    };
    lab_test(settings, async |lab: &mut Lab| {
        let nft = lab.nft(CLIENT).await;
        let first = Client::new(CLIENT);
        let id1 = lab.request_tunnel(&first, nft).await;
        // Killed once the release of the unused tunnel has committed, with
        // the on-chain release still owed.
        lab.spawn_crashing("after-release=return");
        lab.wait_answer(id1, &first, secs(30)).await;
        let crashing = lab.daemon();
        let status = crashing.wait_exit(secs(SHORT_HANDSHAKE_TIMEOUT + 30));
        assert!(killed_by_sigkill(status), "{status}:\n{}", crashing.log());

        // Meanwhile the owner asks again; the restart answers that request
        // and leaves the release to it.
        let second = first.rotated();
        let id2 = lab.request_tunnel(&second, nft).await;
        lab.start_daemon();
        let answer2 = lab.wait_answer(id2, &second, secs(30)).await;
        check_answer(lab, &answer2);
        lab.daemon()
            .wait_log("a newer request of the NFT decides", 1, secs(15));
        lab.daemon().stop();
        assert_eq!(lab.status(id2).await, APPROVED);
        let calls = lab.operator_calls().await;
        assert_eq!(
            Lab::count(&calls, &format!("releaseAllocation({nft})")),
            0,
            "{calls:?}"
        );
        assert_eq!(lab.released_events().await, []);
        assert_eq!(lab.assert_consistent().len(), 1);
    });
}

#[test]
fn an_owner_release_frees_the_prefix_but_never_a_newer_request() {
    lab_test(Settings::new("own"), async |lab: &mut Lab| {
        lab.start_daemon();
        let nft = lab.nft(CLIENT).await;
        let first = Client::new(CLIENT);
        let id1 = lab.request_tunnel(&first, nft).await;
        let answer = lab.wait_answer(id1, &first, secs(30)).await;
        let prefix = check_answer(lab, &answer);

        // The NFT's owner gives the prefix back on chain.
        let owner = BrokerRequests::new(lab.dev.requests, lab.wallet(CLIENT));
        let receipt = owner
            .releaseOwnAllocation(nft)
            .gas(CLIENT_TX_GAS)
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        assert!(receipt.status());
        lab.daemon()
            .wait_log("released by the NFT owner on chain", 1, secs(15));
        assert_eq!(lab.peers(), []);
        assert_eq!(lab.routes(), []);
        assert_eq!(lab.ndp_prefixes(), []);

        // Asked again, it gets a prefix again (the lowest free: the same).
        let second = Client::new(CLIENT);
        let id2 = lab.request_tunnel(&second, nft).await;
        let answer = lab.wait_answer(id2, &second, secs(30)).await;
        assert_eq!(check_answer(lab, &answer), prefix);

        // Released and asked again in one block: the broker sees the new
        // request before the release event, which must not take the new
        // allocation away.
        let third = Client::new(CLIENT);
        let payload = lab.encrypt(&third.payload(nft).to_json());
        let wallet = lab.wallet(CLIENT);
        let contract = BrokerRequests::new(lab.dev.requests, &wallet);
        lab.anvil("evm_setAutomine", json!([false])).await;
        let released = contract
            .releaseOwnAllocation(nft)
            .gas(CLIENT_TX_GAS)
            .send()
            .await
            .unwrap();
        let submitted = contract
            .submitRequest(nft, payload.into())
            .gas(CLIENT_TX_GAS)
            .send()
            .await
            .unwrap();
        lab.anvil("evm_mine", json!([])).await;
        lab.anvil("evm_setAutomine", json!([true])).await;
        let release_receipt = released.get_receipt().await.unwrap();
        let receipt = submitted.get_receipt().await.unwrap();
        assert!(
            release_receipt.status() && receipt.status(),
            "{release_receipt:?}\n{receipt:?}\nrequest {id2}: {:?}",
            lab.request(id2).await
        );
        let id3 = receipt
            .decoded_log::<BrokerRequests::RequestSubmitted>()
            .unwrap()
            .requestId
            .to::<u64>();
        let answer = lab.wait_answer(id3, &third, secs(30)).await;
        assert_eq!(check_answer(lab, &answer), prefix);
        // A few polls on, it is still there.
        tokio::time::sleep(secs(3)).await;
        assert_eq!(lab.peers(), [(third.wg_public(), prefix.to_string())]);
        assert_eq!(lab.routes(), [prefix]);
        assert_eq!(lab.ndp_prefixes(), [prefix]);

        lab.daemon().stop();
        let all = lab.assert_consistent();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].request_id, all[0].prefix), (id3, prefix));
        // The owner's releases are not repeated by the broker.
        let calls = lab.operator_calls().await;
        assert_eq!(
            Lab::count(&calls, &format!("releaseAllocation({nft})")),
            0,
            "{calls:?}"
        );
        let events = lab.released_events().await;
        let by_owner = anvil_signer(CLIENT).address();
        assert_eq!(events, [(id1, nft, by_owner), (id2, nft, by_owner)]);
    });
}

#[test]
fn sigterm_while_the_chain_is_unreachable_at_start_stops_cleanly() {
    let settings = Settings {
        rpc: Rpc::Nowhere,
        ..Settings::new("down")
    };
    lab_test(settings, async |lab: &mut Lab| {
        let daemon = lab.spawn_daemon(None);
        daemon.wait_log("chain unreachable, retrying", 2, secs(30));
        let (status, took) = daemon.terminate(secs(15));
        assert!(
            status.success(),
            "exit status {status} after {took:?}:\n{}",
            daemon.log()
        );
        assert!(took < secs(3), "SIGTERM took {took:?}");
        // The kernel side was up and stays up; nothing else happened.
        assert_eq!(lab.assert_consistent(), []);
    });
}

#[test]
fn a_legacy_v1_contract_is_watched_beside_the_primary_one() {
    let settings = Settings {
        legacy_v1: true,
        ..Settings::new("v1")
    };
    lab_test(settings, async |lab: &mut Lab| {
        let v1 = lab.legacy.expect("a V1 contract");
        lab.start_daemon()
            .wait_log("set totalCapacity on chain", 1, secs(30));
        // The primary contract's capacity is the pool's (the broker's own
        // slot excepted); V1 has no capacity to keep.
        let capacity = BrokerRequests::new(lab.dev.requests, lab.wallet(0))
            .totalCapacity()
            .call()
            .await
            .unwrap();
        assert_eq!(capacity, U256::from(lab.pool.slots() - 1));

        let old = Client::new(CLIENT);
        let old_nft = lab.nft(CLIENT).await;
        let legacy_id = lab.request_tunnel_at(v1, &old, old_nft).await;
        let new = Client::new(OTHER_CLIENT);
        let new_nft = lab.nft(OTHER_CLIENT).await;
        let id = lab.request_tunnel(&new, new_nft).await;
        // Both contracts number from 1: the same id on each is a different
        // request.
        assert_eq!((legacy_id, id), (1, 1));

        let legacy_answer = lab.wait_answer_at(v1, legacy_id, &old, secs(30)).await;
        let answer = lab.wait_answer(id, &new, secs(30)).await;
        let legacy_prefix = check_answer(lab, &legacy_answer);
        assert_ne!(check_answer(lab, &answer), legacy_prefix);

        // An old client's tunnel works like any other.
        lab.bring_up_tunnel(&old, &legacy_answer);
        assert!(
            ping_within(&lab.net.server, GATEWAY, 10),
            "the legacy client cannot reach the gateway through its tunnel"
        );

        lab.daemon().stop();
        let all = lab.assert_consistent();
        let legacy = all
            .iter()
            .find(|a| a.contract == v1)
            .expect("V1's allocation");
        assert_eq!((legacy.nft, legacy.request_id), (old_nft, legacy_id));
        assert_eq!(all.len(), 2);
        assert_eq!(
            lab.response_events_at(v1).await,
            BTreeMap::from([(legacy_id, 1)])
        );
        assert_eq!(lab.response_events().await, BTreeMap::from([(id, 1)]));
        // Capacity was set once, at the first start, never on V1.
        let calls = lab.operator_calls().await;
        assert_eq!(Lab::count(&calls, "setTotalCapacity"), 1, "{calls:?}");
    });
}

#[test]
fn a_fresh_database_starts_at_start_request_id_and_takes_a_bounded_number_per_poll() {
    let settings = Settings {
        start_request_id: 3,
        max_requests_per_poll: 1,
        ..Settings::new("cur")
    };
    lab_test(settings, async |lab: &mut Lab| {
        // History before the broker existed: ids 1 and 2.
        let mut ids = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..5 {
            let client = Client::new(CLIENT);
            let nft = lab.nft(CLIENT).await;
            ids.push(lab.request_tunnel(&client, nft).await);
            clients.push(client);
        }
        assert_eq!(ids, [1, 2, 3, 4, 5]);

        lab.start_daemon();
        for (&id, client) in ids.iter().zip(&clients).skip(2) {
            lab.wait_answer(id, client, secs(30)).await;
        }
        // One new request per poll (1 s apart): 3, 4 and 5 take two polls
        // more than 3 alone; all in one poll would take a fraction of that.
        // (The daemon logs an answer after its receipt, which can be after
        // the test saw the request approved.)
        lab.daemon().wait_log("answered contract=", 3, secs(10));
        let log = lab.daemon().log();
        let answered = |id: u64| {
            let line = log_line(&log, &["answered", &format!(" id={id}"), "tx=0x"])
                .unwrap_or_else(|| panic!("request {id} answered but not logged:\n{log}"));
            log_time(line)
        };
        let spread = answered(5) - answered(3);
        assert!(
            spread >= 1.5,
            "requests 3 and 5 answered {spread:.2} s apart: more than one per poll"
        );
        assert_eq!(lab.status(1).await, PENDING);
        assert_eq!(lab.status(2).await, PENDING);

        lab.daemon().stop();
        assert_eq!(lab.assert_consistent().len(), 3);
        let db = lab.database();
        for id in [1, 2] {
            assert_eq!(
                db.request(lab.dev.requests, id).unwrap(),
                None,
                "request {id} is before start_request_id"
            );
        }
        assert_eq!(
            lab.response_events().await,
            BTreeMap::from([(3, 1), (4, 1), (5, 1)])
        );
    });
}

#[test]
fn sigterm_while_an_answer_waits_to_be_mined_stops_promptly_and_a_restart_answers_once() {
    lab_test(Settings::new("mine"), async |lab: &mut Lab| {
        lab.start_daemon();
        lab.daemon()
            .wait_log("set totalCapacity on chain", 1, secs(10));
        // From here on nothing is mined until the test says so.
        lab.anvil("evm_setAutomine", json!([false])).await;
        let nft_tx = TestNFT::deploy_builder(lab.wallet(CLIENT), anvil_signer(CLIENT).address())
            .send()
            .await
            .expect("TestNFT sent");
        lab.anvil("evm_mine", json!([])).await;
        let nft = nft_tx
            .get_receipt()
            .await
            .expect("TestNFT mined")
            .contract_address
            .expect("a contract address");
        let client = Client::new(CLIENT);
        let payload = lab.encrypt(&client.payload(nft).to_json());
        let sent = BrokerRequests::new(lab.dev.requests, lab.wallet(CLIENT))
            .submitRequest(nft, payload.into())
            .gas(CLIENT_TX_GAS)
            .send()
            .await
            .expect("submitRequest sent");
        lab.anvil("evm_mine", json!([])).await;
        assert!(sent.get_receipt().await.unwrap().status());
        let id = 1;

        // The daemon sends its answer; it stays in the mempool.
        let deadline = Instant::now() + secs(30);
        loop {
            let pool = lab.anvil("txpool_status", json!([])).await;
            if pool["pending"].as_str() == Some("0x1") {
                break;
            }
            assert!(Instant::now() < deadline, "no answer sent: {pool}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(secs(1)).await;
        let (status, took) = lab.daemon().terminate(secs(30));
        assert!(
            status.success(),
            "exit status {status}:\n{}",
            lab.daemon().log()
        );
        // Without the stop the wait would last the receipt timeout (180 s).
        assert!(took < secs(5), "SIGTERM took {took:?}");
        assert!(
            lab.daemon()
                .log()
                .contains("stopped while waiting for transaction"),
            "{}",
            lab.daemon().log()
        );
        eprintln!(
            "sigterm_while_an_answer_waits_to_be_mined…: exit 0 after {:.0} ms",
            took.as_secs_f64() * 1000.0
        );

        // The chain mines the answer while the broker is down; the restart
        // finds it instead of sending another.
        lab.anvil("evm_mine", json!([])).await;
        lab.anvil("evm_setAutomine", json!([true])).await;
        let answer = lab.wait_answer(id, &client, secs(5)).await;
        check_answer(lab, &answer);
        lab.start_daemon();
        lab.daemon()
            .wait_log("already answered on chain", 1, secs(30));
        lab.daemon().stop();
        let all = lab.assert_consistent();
        assert_eq!(all.len(), 1);
        assert!(all[0].answered_at.is_some(), "{:?}", all[0]);
        assert_eq!(lab.response_events().await, BTreeMap::from([(id, 1)]));
        let calls = lab.operator_calls().await;
        assert_eq!(Lab::count(&calls, "submitResponse(1)"), 1, "{calls:?}");
    });
}
