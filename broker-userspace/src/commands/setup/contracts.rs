//! The chain steps: the endpoint (its chain id confirmed), the requests
//! contract (deploy or owned), the registry, funds, the deployment.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use alloy::primitives::{Address, U256};
use anyhow::{Context as _, bail};
use broker_contracts::{
    BrokerRegistry, BrokerRequests,
    chain::{self, ChainOptions, Connection, ether},
    deploy::{self, Progress},
    keys,
};
use broker_userspace::wallet;

use super::{Setup, Shown, ask::Question};

/// The chain as answered: the endpoint (shown redacted) and its chain.
pub(super) struct Chain {
    pub(super) rpc_url: String,
    pub(super) shown: String,
    pub(super) chain_id: u64,
}

impl std::fmt::Display for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (chain {})", self.shown, self.chain_id)
    }
}

/// `deploy`, or a contract the operator owns.
#[derive(Clone, Copy)]
pub(super) enum Requests {
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

/// An amount of ether, shown in ETH.
pub(super) struct Eth(pub(super) U256);

impl std::fmt::Display for Eth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ETH", ether(self.0))
    }
}

pub(super) async fn connect(chain: &Chain) -> Result<Connection, chain::ChainError> {
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
pub(super) async fn owned_requests_contract(
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

/// How often the balance is read while waiting for funds.
const FUNDS_POLL: Duration = Duration::from_secs(5);

impl Setup<'_> {
    pub(super) fn chain(&mut self) -> anyhow::Result<Chain> {
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

    pub(super) fn requests_contract(
        &mut self,
        chain: &Chain,
        operator: Address,
    ) -> anyhow::Result<Requests> {
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

    pub(super) fn registry_contract(&mut self, chain: &Chain) -> anyhow::Result<Option<Address>> {
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

    /// Waits for what the deployment and the reserve need, then deploys
    /// when asked to: the requests contract's address.
    pub(super) fn fund_and_deploy(
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

    pub(super) fn balance(&self, chain: &Chain, address: Address) -> anyhow::Result<U256> {
        Ok(self
            .runtime
            .block_on(wallet::balance(&chain.rpc_url, chain.chain_id, address))
            .context("reading the operator's balance")?
            .wei)
    }

    /// Interactively until the funds arrive; otherwise up to
    /// --wait-for-funds. The balance at the end.
    pub(super) fn wait_for_funds(
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

    pub(super) fn registered(
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
}
