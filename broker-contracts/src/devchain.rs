//! A local chain for development, tests and the demo: anvil, with the
//! contracts deployed in the three phases of a real network (the registry
//! from the deployer's key, BrokerRequests from the operator's key, then the
//! deployer registering the broker with its ECIES public key).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use alloy::{
    primitives::{Address, U256},
    providers::{Provider, ProviderBuilder},
    signers::local::PrivateKeySigner,
};
use anyhow::{Context as _, bail};

use crate::{
    BrokerRegistry,
    chain::{ChainOptions, Connection},
    config_snippet::OnchainSnippet,
    deploy,
};

pub const CHAIN_ID: u64 = 31337;

/// anvil's well-known development accounts (public test keys, funded on
/// every anvil chain; never use them anywhere else).
pub const ANVIL_KEYS: [&str; 4] = [
    "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
];

pub fn anvil_signer(index: usize) -> PrivateKeySigner {
    ANVIL_KEYS[index].parse().expect("a valid key")
}

#[derive(Clone, Debug)]
pub struct Options {
    /// The address anvil listens on (another namespace's, for the lab).
    pub host: std::net::IpAddr,
    /// Port on `host`; a free one when None.
    pub port: Option<u16>,
    pub region: String,
    /// Broker capacity registered in the registry (0 = unlimited).
    pub capacity: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            host: std::net::Ipv4Addr::LOCALHOST.into(),
            port: None,
            region: "dev".into(),
            capacity: 0,
        }
    }
}

/// A running chain with the contracts deployed; anvil stops on drop.
pub struct DevChain {
    anvil: Child,
    pub rpc_url: String,
    pub chain_id: u64,
    pub deployer: PrivateKeySigner,
    pub operator: PrivateKeySigner,
    pub registry: Address,
    pub requests: Address,
    pub broker_id: U256,
    pub ecies_secret: [u8; 32],
    pub ecies_public: [u8; 65],
}

/// The anvil wrapper installed by `cargo xtask setup` (contracts/bin/anvil),
/// or `BLOCKHOST_ANVIL`.
pub fn anvil_path() -> PathBuf {
    std::env::var_os("BLOCKHOST_ANVIL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contracts/bin/anvil"))
}

fn free_port(host: std::net::IpAddr) -> anyhow::Result<u16> {
    let listener = TcpListener::bind((host, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

impl DevChain {
    /// Starts anvil on `host` and waits until it answers.
    pub async fn start_anvil(
        host: std::net::IpAddr,
        port: Option<u16>,
    ) -> anyhow::Result<(Child, String)> {
        let port = match port {
            Some(p) => p,
            None => free_port(host)?,
        };
        let address = std::net::SocketAddr::new(host, port);
        let anvil = anvil_path();
        let mut child = Command::new(&anvil)
            .args(["--host", &host.to_string(), "--port", &port.to_string()])
            .args(["--chain-id", &CHAIN_ID.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (is `cargo xtask setup` done?)",
                    anvil.display()
                )
            })?;
        let rpc_url = format!("http://{address}");
        let provider = ProviderBuilder::new().connect_http(rpc_url.parse()?);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    use std::io::Read as _;
                    let _ = s.read_to_string(&mut err);
                }
                bail!("anvil exited ({status}): {}", err.trim());
            }
            if provider.get_chain_id().await.is_ok() {
                return Ok((child, rpc_url));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("anvil did not answer on {rpc_url} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts anvil and deploys the contracts in three phases.
    pub async fn start(options: &Options) -> anyhow::Result<Self> {
        let (anvil, rpc_url) = Self::start_anvil(options.host, options.port).await?;
        let deployer = anvil_signer(0);
        let operator = anvil_signer(1);
        let (secret, public) = ecies::utils::generate_keypair();
        let mut chain = DevChain {
            anvil,
            rpc_url,
            chain_id: CHAIN_ID,
            deployer,
            operator,
            registry: Address::ZERO,
            requests: Address::ZERO,
            broker_id: U256::ZERO,
            ecies_secret: secret.serialize(),
            ecies_public: public.serialize(),
        };
        chain.registry = deploy::deploy_registry(&chain.rpc_url, CHAIN_ID, chain.deployer.clone())
            .await
            .context("phase 1: deploying BrokerRegistry")?
            .address;
        chain.requests = deploy::deploy_requests(&chain.rpc_url, CHAIN_ID, chain.operator.clone())
            .await
            .context("phase 2: deploying BrokerRequests")?
            .address;
        let conn = Connection::connect(
            &chain.rpc_url,
            CHAIN_ID,
            Some(chain.deployer.clone()),
            ChainOptions::default(),
        )
        .await?;
        let registry = BrokerRegistry::new(chain.registry, conn.provider());
        let register = registry
            .registerBroker(
                chain.operator.address(),
                chain.requests,
                chain.ecies_public.to_vec().into(),
                options.region.clone(),
                U256::from(options.capacity),
            )
            .into_transaction_request();
        conn.transact("phase 3: registerBroker", register).await?;
        chain.broker_id = conn
            .view(
                "operatorToBrokerId",
                registry.operatorToBrokerId(chain.operator.address()).call(),
            )
            .await?;
        Ok(chain)
    }

    /// The `[onchain]` lines of a broker configuration for this chain.
    pub fn config_snippet(&self, operator_key: &Path, ecies_key: &Path) -> String {
        OnchainSnippet {
            rpc_url: &self.rpc_url,
            chain_id: self.chain_id,
            registry_contract: Some(self.registry),
            requests_contract: self.requests,
            operator_key_file: operator_key,
            ecies_key_file: Some(ecies_key),
        }
        .to_string()
    }
}

/// A bare anvil (no contracts) on a free local port, for what needs a chain
/// but not the broker's contracts (deployment, balances); stopped on drop.
pub struct Anvil {
    child: Child,
    pub url: String,
}

impl Anvil {
    pub async fn start() -> anyhow::Result<Anvil> {
        let (child, url) =
            DevChain::start_anvil(std::net::Ipv4Addr::LOCALHOST.into(), None).await?;
        Ok(Anvil { child, url })
    }

    pub fn provider(&self) -> impl Provider + Clone {
        ProviderBuilder::new().connect_http(self.url.parse().expect("start_anvil's URL parses"))
    }

    /// Gives `address` exactly `wei` (anvil_setBalance).
    pub async fn set_balance(&self, address: Address, wei: U256) -> anyhow::Result<()> {
        let _: serde_json::Value = self
            .provider()
            .raw_request("anvil_setBalance".into(), (address, wei))
            .await
            .context("anvil_setBalance")?;
        Ok(())
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DevChain {
    fn drop(&mut self) {
        let _ = self.anvil.kill();
        let _ = self.anvil.wait();
    }
}
