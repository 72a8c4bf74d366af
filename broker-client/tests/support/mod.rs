//! What the client tests run against: an anvil chain with the contracts
//! (`DevChain`), more brokers registered on it, an NFT contract owned by the
//! client's wallet, the client binary as a process, and a responder that
//! answers requests with the real protocol (decrypting with the broker's
//! ECIES secret, `submitResponse` with a framed, encrypted answer) — or
//! answers wrongly, on purpose.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    path::PathBuf,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use alloy::{
    network::EthereumWallet,
    primitives::{Address, U256},
    providers::{DynProvider, Provider, ProviderBuilder},
    signers::local::PrivateKeySigner,
};
use broker_contracts::{
    BrokerRegistry, BrokerRequests, TestNFT, deploy,
    devchain::{DevChain, Options, anvil_signer},
    protocol::{self, RequestPayload, ResponsePayload},
};
use broker_lab::process::run_bounded;
use ipnet::Ipv6Net;
use serde_json::json;
use wireguard_control::Key;

pub const CLIENT_BIN: &str = env!("CARGO_BIN_EXE_broker-client");
/// anvil account of the BlockHost server's wallet.
pub const CLIENT: usize = 2;
/// anvil account of another server, to fill a broker's capacity.
pub const OTHER: usize = 3;
pub const ENDPOINT: &str = "203.0.113.10:51820";

/// A broker on the dev chain, as a responder needs it.
#[derive(Clone)]
pub struct TestBroker {
    pub id: u64,
    pub operator: PrivateKeySigner,
    pub requests: Address,
    pub ecies_secret: [u8; 32],
    pub ecies_public: [u8; 65],
    pub wg: Key,
}

pub struct Env {
    pub dev: DevChain,
    pub dir: tempfile::TempDir,
    pub nft: Address,
    pub wallet_key: PathBuf,
    pub started: Instant,
}

pub fn provider(rpc_url: &str, signer: PrivateKeySigner) -> DynProvider {
    ProviderBuilder::new()
        .wallet(EthereumWallet::from(signer))
        .connect_http(rpc_url.parse().unwrap())
        .erased()
}

pub use broker_lab::files::write_new;

impl Env {
    /// anvil with the contracts (broker #1 registered, region "dev"), a
    /// TestNFT owned by the client's wallet, a wallet key file (0600).
    pub async fn start() -> Env {
        let started = Instant::now();
        let dev = DevChain::start(&Options::default())
            .await
            .expect("anvil with the contracts");
        let nft = *TestNFT::deploy(
            provider(&dev.rpc_url, anvil_signer(CLIENT)),
            anvil_signer(CLIENT).address(),
        )
        .await
        .expect("TestNFT deploys")
        .address();
        let dir = tempfile::tempdir().unwrap();
        let wallet_key = dir.path().join("wallet.key");
        write_new(
            &wallet_key,
            &format!("0x{}", broker_contracts::devchain::ANVIL_KEYS[CLIENT]),
            0o600,
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        Env {
            dev,
            dir,
            nft,
            wallet_key,
            started,
        }
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    pub fn wg_dir(&self) -> PathBuf {
        self.dir.path().join("wireguard")
    }

    /// The dev chain's own broker (#1).
    pub fn first_broker(&self) -> TestBroker {
        TestBroker {
            id: self.dev.broker_id.to::<u64>(),
            operator: self.dev.operator.clone(),
            requests: self.dev.requests,
            ecies_secret: self.dev.ecies_secret,
            ecies_public: self.dev.ecies_public,
            wg: Key::generate_private().get_public(),
        }
    }

    /// Deploys a BrokerRequests from a new, funded operator key and
    /// registers it; its registry id.
    pub async fn add_broker(&self, region: &str) -> TestBroker {
        let operator = PrivateKeySigner::random();
        self.anvil(
            "anvil_setBalance",
            json!([operator.address(), "0x3635C9ADC5DEA00000"]),
        )
        .await;
        let requests =
            deploy::deploy_requests(&self.dev.rpc_url, self.dev.chain_id, operator.clone())
                .await
                .expect("BrokerRequests deploys")
                .address;
        let (secret, public) = ecies::utils::generate_keypair();
        let registry = BrokerRegistry::new(
            self.dev.registry,
            provider(&self.dev.rpc_url, self.dev.deployer.clone()),
        );
        let receipt = registry
            .registerBroker(
                operator.address(),
                requests,
                public.serialize().to_vec().into(),
                region.into(),
                U256::ZERO,
            )
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        assert!(receipt.status());
        let id = registry
            .operatorToBrokerId(operator.address())
            .call()
            .await
            .unwrap()
            .to::<u64>();
        TestBroker {
            id,
            operator,
            requests,
            ecies_secret: secret.serialize(),
            ecies_public: public.serialize(),
            wg: Key::generate_private().get_public(),
        }
    }

    /// Leaves `broker` with no free capacity: a capacity of one, taken by
    /// another server's pending request.
    pub async fn fill(&self, broker: &TestBroker) {
        let requests = BrokerRequests::new(
            broker.requests,
            provider(&self.dev.rpc_url, broker.operator.clone()),
        );
        let r = requests
            .setTotalCapacity(U256::from(1))
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        assert!(r.status());
        let other = provider(&self.dev.rpc_url, anvil_signer(OTHER));
        let nft = *TestNFT::deploy(other.clone(), anvil_signer(OTHER).address())
            .await
            .unwrap()
            .address();
        let r = BrokerRequests::new(broker.requests, other)
            .submitRequest(nft, vec![1u8; 120].into())
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        assert!(r.status());
    }

    pub async fn anvil(
        &self,
        method: &'static str,
        params: serde_json::Value,
    ) -> serde_json::Value {
        provider(&self.dev.rpc_url, anvil_signer(0))
            .raw_request(method.into(), params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// The client binary with the chain in its environment (and nothing
    /// else of ours from the caller's).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(CLIENT_BIN);
        clean_env(&mut cmd);
        cmd.env("BLOCKHOST_RPC_URL", &self.dev.rpc_url)
            .env("BLOCKHOST_CHAIN_ID", self.dev.chain_id.to_string())
            .env("BLOCKHOST_REGISTRY_CONTRACT", self.dev.registry.to_string())
            .env("BLOCKHOST_CONFIG_DIR", self.config_dir())
            .env("BLOCKHOST_WG_CONFIG_DIR", self.wg_dir())
            .env("BLOCKHOST_RUNTIME_DIR", self.dir.path().join("run"))
            .env("BLOCKHOST_REGISTRY_URL", UNREACHABLE_REGISTRY_URL)
            .env("BLOCKHOST_POLL_INTERVAL", "0.2")
            .args(args);
        cmd
    }

    /// Runs the client to completion (at most 120 s) off the async threads.
    pub async fn run(&self, args: &[&str]) -> Run {
        run(self.command(args)).await
    }

    /// `request` for the test's NFT from its wallet, then `extra`.
    pub async fn request(&self, extra: &[&str]) -> Run {
        let nft = self.nft.to_string();
        let wallet = self.wallet_key.to_str().expect("a UTF-8 path");
        let mut args = vec!["request", "--nft-contract", &nft, "--wallet-key", wallet];
        args.extend_from_slice(extra);
        self.run(&args).await
    }

    pub async fn request_status(&self, requests: Address, id: u64) -> u8 {
        BrokerRequests::new(requests, provider(&self.dev.rpc_url, anvil_signer(0)))
            .getRequest(U256::from(id))
            .call()
            .await
            .unwrap()
            .status
    }

    pub async fn current_request(&self, requests: Address) -> u64 {
        BrokerRequests::new(requests, provider(&self.dev.rpc_url, anvil_signer(0)))
            .nftContractToRequestId(self.nft)
            .call()
            .await
            .unwrap()
            .to::<u64>()
    }

    pub fn done(&self, test: &str) {
        eprintln!("{test}: {:.1} s", self.started.elapsed().as_secs_f64());
    }
}

/// Where no registry file is: tests never read the published one.
pub const UNREACHABLE_REGISTRY_URL: &str = "http://127.0.0.1:9/registry.json";

/// Takes every variable the client reads out of `cmd`'s environment: the
/// BLOCKHOST_* ones and the field client's names.
pub fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("BLOCKHOST_")
            || ["ETH_RPC_URL", "ETH_CHAIN_ID", "BROKER_REGISTRY_CONTRACT"].contains(&k.as_str())
        {
            cmd.env_remove(k);
        }
    }
}

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code,
            Some(0),
            "client failed:\n{}\n{}",
            self.stderr,
            self.stdout
        );
        self
    }

    /// The JSON line the client printed on stdout.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }

    /// Failed with exactly one line on stderr; that line.
    pub fn one_line_error(&self) -> String {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "expected a failure: {:?}\n{}",
            self.code,
            self.stderr
        );
        let last = self.stderr.lines().last().unwrap_or_default().to_string();
        assert!(last.starts_with("broker-client: "), "{}", self.stderr);
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        last
    }
}

/// Runs `cmd` to completion (killed after 120 s) off the async threads.
pub async fn run(cmd: Command) -> Run {
    let out = tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(120)))
        .await
        .unwrap()
        .expect("starting broker-client");
    Run {
        code: out.status.and_then(|s| s.code()),
        stdout: out.stdout,
        stderr: out.stderr,
    }
}

/// What the responder does with the n-th request (0-based) it sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The right answer.
    Proper,
    /// Framed with another request's id.
    WrongId,
    /// Encrypted to a key that is not the request's server key.
    OtherKey,
    /// No answer at all.
    Silent,
}

/// A broker stand-in answering its requests contract; stops on drop.
pub struct Responder {
    task: tokio::task::JoinHandle<()>,
    /// Decrypted requests, in the order seen: (request id, payload text).
    pub seen: Arc<Mutex<Vec<(u64, String)>>>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Responder {
    pub fn start(
        rpc_url: &str,
        broker: &TestBroker,
        script: impl Fn(usize) -> Reply + Send + 'static,
    ) -> Responder {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let provider = provider(rpc_url, broker.operator.clone());
        let broker = broker.clone();
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let contract = BrokerRequests::new(broker.requests, provider);
            let mut next = 1u64;
            let mut prefixes: HashMap<Address, Ipv6Net> = HashMap::new();
            loop {
                let count = contract.getRequestCount().call().await.unwrap().to::<u64>();
                while next <= count {
                    let id = next;
                    next += 1;
                    let request = contract.getRequest(U256::from(id)).call().await.unwrap();
                    let Ok(plain) =
                        protocol::decrypt(&broker.ecies_secret, &request.encryptedPayload)
                    else {
                        continue; // not for us (e.g. the capacity filler)
                    };
                    let text = String::from_utf8(plain).unwrap();
                    let n = {
                        let mut seen = log.lock().unwrap();
                        seen.push((id, text.clone()));
                        seen.len() - 1
                    };
                    let reply = script(n);
                    if reply == Reply::Silent {
                        continue;
                    }
                    let valid = RequestPayload::parse(text.as_bytes())
                        .unwrap()
                        .validate()
                        .unwrap();
                    // One prefix per NFT contract: a re-request keeps it.
                    let taken = prefixes.len() as u128;
                    let prefix = *prefixes.entry(request.nftContract).or_insert_with(|| {
                        let base: u128 = "2001:db8:0:1::100"
                            .parse::<std::net::Ipv6Addr>()
                            .unwrap()
                            .into();
                        Ipv6Net::new((base + taken * 0x100).into(), 120).unwrap()
                    });
                    let answer = ResponsePayload {
                        prefix: prefix.to_string(),
                        gateway: "2001:db8:0:1::2".into(),
                        broker_pubkey: broker.wg.to_base64(),
                        broker_endpoint: ENDPOINT.into(),
                        dns_zone: None,
                    };
                    let to = match reply {
                        Reply::OtherKey => ecies::utils::generate_keypair().1.serialize(),
                        _ => valid.server_pubkey,
                    };
                    let ciphertext = protocol::encrypt(&to, answer.to_json().as_bytes()).unwrap();
                    let framed_id = if reply == Reply::WrongId {
                        id + 1000
                    } else {
                        id
                    };
                    let framed = protocol::frame_response(framed_id, &ciphertext);
                    let r = contract
                        .submitResponse(U256::from(id), framed.into())
                        .send()
                        .await
                        .unwrap()
                        .get_receipt()
                        .await
                        .unwrap();
                    assert!(r.status(), "submitResponse {id} reverted");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Responder { task, seen }
    }

    pub fn seen(&self) -> Vec<(u64, String)> {
        self.seen.lock().unwrap().clone()
    }
}
