//! `request` and `renew`: submit an encrypted request (wire-protocol §3) to
//! a broker, wait for its answer, resubmit on stale answers (a bounded
//! number of times), move on to the next broker when one fails, and record
//! the allocation (§7).

use std::{path::Path, time::Duration};

use alloy::primitives::{Address, U256};
use anyhow::Context as _;
use broker_contracts::{
    BrokerRequests,
    chain::{ChainError, Connection},
    error_text::one_line,
    protocol::RequestPayload,
};
use ipnet::Ipv6Net;
use serde_json::{Value, json};

use crate::{
    cli::{Global, RenewArgs, RequestArgs},
    discovery::{self, Registry},
    files::{self, Allocation, BrokerContract, parse_address},
    install,
    keys::{self, ServerKey, WgKeys},
    registry::{self, ecies_key_from_hex},
    response::{Outcome, Wait, own_networks},
};

/// A broker as far as a request needs it.
#[derive(Clone, Debug)]
pub struct Target {
    pub broker_id: u64,
    pub requests_contract: Address,
    pub ecies_key: [u8; 65],
}

impl Target {
    fn label(&self) -> String {
        if self.broker_id == 0 {
            format!("the broker at {}", self.requests_contract)
        } else {
            format!("broker #{}", self.broker_id)
        }
    }

    /// As the final error lists the brokers tried.
    fn short(&self) -> String {
        if self.broker_id == 0 {
            self.requests_contract.to_string()
        } else {
            format!("#{}", self.broker_id)
        }
    }
}

/// Everything that stays the same across attempts.
struct Session<'a> {
    chain: &'a Connection,
    nft: Address,
    server: &'a ServerKey,
    timeout: Duration,
    poll: Duration,
    attempts: u32,
    /// The server's own networks, which no answer may overlap.
    own: &'a [Ipv6Net],
}

/// Why a broker gave no allocation.
struct Failure {
    reason: String,
    /// A request of ours may still be pending there.
    pending: bool,
}

pub fn durations(global: &Global) -> anyhow::Result<(Duration, Duration)> {
    let secs = |what: &str, v: f64| {
        Duration::try_from_secs_f64(v)
            .ok()
            .filter(|d| !d.is_zero())
            .with_context(|| format!("--{what} must be a positive number of seconds, not {v}"))
    };
    Ok((
        secs("timeout", global.timeout)?,
        secs("poll-interval", global.poll_interval)?,
    ))
}

pub async fn request(
    global: &Global,
    args: &RequestArgs,
    chain: &Connection,
    registry: Option<Registry>,
) -> anyhow::Result<()> {
    let config_dir = &global.config_dir;
    let existing = files::read_allocation(config_dir)?;
    if !args.force
        && let Some(existing) = &existing
    {
        // The field client run again (an installer re-run) recovers the
        // allocation it has: so does this one, sending nothing, when the
        // chain still shows it as the NFT contract's answered request.
        let why = match still_held(config_dir, existing, args.nft_contract, chain).await {
            Ok(contract) => {
                eprintln!(
                    "already allocated: prefix {} (request {}); nothing sent (`renew` for a new key, --force for a new request)",
                    existing.prefix, existing.request_id
                );
                println!("{}", summary(existing, &contract)?);
                if args.configure_wg {
                    install::bring_up(&args.tunnel, existing, None).await?;
                }
                return Ok(());
            }
            Err(why) => why,
        };
        anyhow::bail!(
            "{} already holds prefix {} (request {}), {why}: use `renew` to change its key, `release` to give it up, or --force",
            files::allocation_path(config_dir).display(),
            existing.prefix,
            existing.request_id
        );
    }
    if args.attempts == 0 {
        anyhow::bail!("--attempts must be at least 1");
    }
    let (timeout, poll) = durations(global)?;
    if args.configure_wg {
        // Checked before anything is sent.
        install::runtime_conf_path(&args.tunnel)?;
    }
    chain
        .require_contract("the NFT contract", args.nft_contract)
        .await?;
    let server = keys::server_key(config_dir)?;
    let candidates = match (&registry, args.requests_contract, &args.broker_pubkey) {
        (_, Some(requests_contract), Some(pubkey)) => {
            let ecies_key = ecies_key_from_hex(pubkey).with_context(|| {
                format!(
                    "--broker-pubkey {:?} is not a secp256k1 public key (130 hex digits, 04‖X‖Y)",
                    one_line(pubkey)
                )
            })?;
            chain
                .require_contract("the requests contract", requests_contract)
                .await?;
            eprintln!("using the broker at {requests_contract} directly (no registry)");
            vec![Target {
                broker_id: 0,
                requests_contract,
                ecies_key,
            }]
        }
        (Some(registry), _, _) => {
            eprintln!("brokers of {}", registry.describe());
            let brokers = registry::list(chain, registry.address).await?;
            discovery::remember(config_dir, chain.chain_id(), registry);
            let (candidates, skipped) =
                registry::candidates(&brokers, args.region.as_deref(), args.broker_id)?;
            for reason in skipped {
                eprintln!("skipping broker {reason}");
            }
            candidates
                .iter()
                .map(|broker| Target {
                    broker_id: broker.id,
                    requests_contract: broker.requests_contract,
                    ecies_key: broker.ecies_key().expect("candidates have valid keys"),
                })
                .collect()
        }
        _ => anyhow::bail!("no registry and no --requests-contract with --broker-pubkey"),
    };
    // A forced request replaces our own allocation: its prefix may be
    // answered again.
    let replaced = existing.as_ref().and_then(|a| a.prefix.parse().ok());
    let own = own_networks(replaced).context("reading this server's addresses")?;
    let session = Session {
        chain,
        nft: args.nft_contract,
        server: &server,
        timeout,
        poll,
        attempts: args.attempts,
        own: &own,
    };
    let mut failures = Vec::new();
    for (i, target) in candidates.iter().enumerate() {
        eprintln!("trying {}", target.label());
        match session.obtain(target).await {
            Ok(allocation) => {
                finish(config_dir, target, &allocation, None)?;
                if args.configure_wg {
                    install::bring_up(&args.tunnel, &allocation, None).await?;
                }
                return Ok(());
            }
            Err(failure) => {
                let more = i + 1 < candidates.len();
                eprintln!(
                    "{} failed: {}{}",
                    target.label(),
                    failure.reason,
                    if more { "; trying the next broker" } else { "" }
                );
                if failure.pending {
                    session.withdraw(target).await;
                }
                failures.push(format!("{}: {}", target.short(), failure.reason));
            }
        }
    }
    anyhow::bail!("no broker gave an allocation: {}", failures.join("; "))
}

pub async fn renew(
    global: &Global,
    args: &RenewArgs,
    chain: &Connection,
    registry_contract: Option<Address>,
) -> anyhow::Result<()> {
    let config_dir = &global.config_dir;
    let (timeout, poll) = durations(global)?;
    if args.attempts == 0 {
        anyhow::bail!("--attempts must be at least 1");
    }
    let old = files::read_allocation(config_dir)?;
    let contract = files::read_contract(config_dir)?.with_context(|| {
        format!(
            "no allocation to renew: {} does not exist (run `request` first)",
            files::contract_path(config_dir).display()
        )
    })?;
    let nft = match (args.nft_contract, &old) {
        (Some(nft), _) => nft,
        (None, Some(old)) => {
            parse_address("nft_contract in the allocation file", &old.nft_contract)?
        }
        (None, None) => anyhow::bail!(
            "no allocation: {} does not exist (give --nft-contract, or run `request` first)",
            files::allocation_path(config_dir).display()
        ),
    };
    let requests = parse_address(
        "requests_contract in broker-contract.json",
        &contract.requests_contract,
    )?;
    let mut ecies_key = ecies_key_from_hex(&contract.broker_pubkey).with_context(|| {
        format!(
            "broker_pubkey in {} is not a secp256k1 public key",
            files::contract_path(config_dir).display()
        )
    })?;
    // The broker may have rotated its key since: the registry has the
    // current one.
    if let Some(registry_contract) = registry_contract
        && contract.broker_id != 0
    {
        let brokers = registry::list(chain, registry_contract).await?;
        match brokers.iter().find(|b| b.id == contract.broker_id) {
            Some(b) if b.requests_contract == requests => {
                if let Some(key) = b.ecies_key() {
                    ecies_key = key;
                }
            }
            _ => eprintln!(
                "note: broker #{} of the registry is not the one of {}; using the recorded key",
                contract.broker_id,
                files::contract_path(config_dir).display()
            ),
        }
    }
    let server = keys::server_key(config_dir)?;
    let target = Target {
        broker_id: contract.broker_id,
        requests_contract: requests,
        ecies_key,
    };
    let replaced = old.as_ref().and_then(|a| a.prefix.parse().ok());
    let own = own_networks(replaced).context("reading this server's addresses")?;
    let session = Session {
        chain,
        nft,
        server: &server,
        timeout,
        poll,
        attempts: args.attempts,
        own: &own,
    };
    eprintln!(
        "renewing {} with {} (new WireGuard key)",
        old.as_ref()
            .map(|a| format!("prefix {}", a.prefix))
            .unwrap_or_else(|| format!("the allocation of {nft}")),
        target.label()
    );
    let allocation = session
        .obtain(&target)
        .await
        .map_err(|f| anyhow::anyhow!("{} failed: {}", target.label(), f.reason))?;
    if let Some(old) = &old
        && allocation.prefix != old.prefix
    {
        eprintln!(
            "note: the broker answered with prefix {}, not {}",
            allocation.prefix, old.prefix
        );
    }
    finish(config_dir, &target, &allocation, old.as_ref())?;
    // An installed tunnel must follow the new key, or it stops working.
    let conf = install::conf_path(&args.tunnel)?;
    if conf.exists() {
        eprintln!("updating the installed tunnel {}", conf.display());
        install::apply(&args.tunnel, &allocation, None).await?;
    } else if args.configure_wg || install::runtime_conf_path(&args.tunnel)?.exists() {
        install::bring_up(&args.tunnel, &allocation, None).await?;
    }
    Ok(())
}

/// Writes both files and prints the result on stdout (one JSON line).
fn finish(
    config_dir: &Path,
    target: &Target,
    allocation: &Allocation,
    previous: Option<&Allocation>,
) -> anyhow::Result<()> {
    let contract = BrokerContract {
        requests_contract: target.requests_contract.to_string(),
        broker_pubkey: hex::encode(target.ecies_key),
        broker_id: target.broker_id,
    };
    let path = files::write_allocation(config_dir, allocation)?;
    files::write_contract(config_dir, &contract)?;
    eprintln!(
        "allocated {} (gateway {}, endpoint {}); wrote {}",
        allocation.prefix,
        allocation.gateway,
        allocation.broker_endpoint,
        path.display()
    );
    let mut summary = summary(allocation, &contract)?;
    if let Some(old) = previous {
        summary["previous_request_id"] = json!(old.request_id);
        summary["prefix_kept"] = json!(old.prefix == allocation.prefix);
    }
    println!("{summary}");
    Ok(())
}

/// The result line of `request` and `renew`.
fn summary(allocation: &Allocation, contract: &BrokerContract) -> anyhow::Result<Value> {
    Ok(json!({
        "prefix": allocation.prefix,
        "gateway": allocation.gateway,
        "tunnel_address": install::tunnel_address(&allocation.prefix)?.to_string(),
        "broker_endpoint": allocation.broker_endpoint,
        "broker_id": contract.broker_id,
        "requests_contract": contract.requests_contract,
        "request_id": allocation.request_id,
        "wg_public_key": allocation.wg_public_key,
    }))
}

/// The broker file when `existing` is `nft`'s allocation and its request is
/// still the NFT contract's current, answered one; else why not.
async fn still_held(
    config_dir: &Path,
    existing: &Allocation,
    nft: Address,
    chain: &Connection,
) -> Result<BrokerContract, String> {
    if existing.nft_contract.parse::<Address>().ok() != Some(nft) {
        return Err(format!("for NFT contract {}", existing.nft_contract));
    }
    let contract = match files::read_contract(config_dir) {
        Ok(Some(c)) => c,
        Ok(None) => return Err("without broker-contract.json".into()),
        Err(e) => return Err(format!("{e:#}")),
    };
    let requests = contract
        .requests_contract
        .parse::<Address>()
        .map_err(|_| "with an unreadable broker-contract.json".to_string())?;
    let requests_contract = BrokerRequests::new(requests, chain.provider());
    let current = chain
        .view(
            "nftContractToRequestId",
            requests_contract.nftContractToRequestId(nft).call(),
        )
        .await
        .map_err(|e| format!("unchecked on chain ({e})"))?;
    if current != U256::from(existing.request_id) {
        return Err(format!(
            "no longer the NFT contract's current request on chain (that is {current})"
        ));
    }
    let request = chain
        .view("getRequest", requests_contract.getRequest(current).call())
        .await
        .map_err(|e| format!("unchecked on chain ({e})"))?;
    if request.status != 1 {
        return Err(format!("not answered on chain (status {})", request.status));
    }
    Ok(contract)
}

impl Session<'_> {
    /// Requests from one broker until it answers, gives a non-stale
    /// failure, or `attempts` answers were stale.
    async fn obtain(&self, target: &Target) -> Result<Allocation, Failure> {
        let wg = WgKeys::generate();
        let payload = RequestPayload {
            wg_pubkey: wg.public.to_base64(),
            nft_contract: self.nft.to_string(),
            server_pubkey: self.server.public_hex(),
        }
        .to_json();
        let mut stale = Vec::new();
        for attempt in 1..=self.attempts {
            let request_id = self.submit(target, payload.as_bytes()).await.map_err(|e| {
                Failure {
                    reason: e,
                    // A failed submission leaves an earlier attempt's
                    // request as the NFT contract's current one.
                    pending: attempt > 1,
                }
            })?;
            let wait = Wait {
                chain: self.chain,
                requests: target.requests_contract,
                request_id,
                server_secret: &self.server.secret,
                timeout: self.timeout,
                poll: self.poll,
                label: &target.label(),
                own: self.own,
            };
            match wait.run().await {
                Outcome::Answer(answer) => {
                    let broker_wallet = self.answerer(target).await;
                    let p = answer.payload;
                    return Ok(Allocation {
                        prefix: answer.prefix.to_string(),
                        gateway: p.gateway,
                        broker_pubkey: p.broker_pubkey,
                        broker_endpoint: p.broker_endpoint,
                        nft_contract: self.nft.to_string(),
                        request_id,
                        wg_private_key: wg.private.to_base64(),
                        wg_public_key: wg.public.to_base64(),
                        allocated_at: files::now_iso8601(),
                        broker_wallet,
                        dns_zone: p.dns_zone.unwrap_or_default(),
                    });
                }
                Outcome::Stale(reason) | Outcome::Ended(reason) => {
                    eprintln!(
                        "stale answer to request {request_id}: {reason}{}",
                        if attempt < self.attempts {
                            format!(
                                "; submitting a new request (attempt {} of {})",
                                attempt + 1,
                                self.attempts
                            )
                        } else {
                            String::new()
                        }
                    );
                    stale.push(reason);
                }
                Outcome::Bad(reason) => {
                    return Err(Failure {
                        reason: format!("unusable answer to request {request_id}: {reason}"),
                        pending: false,
                    });
                }
                Outcome::Timeout => {
                    return Err(Failure {
                        reason: format!(
                            "no answer to request {request_id} within {:.0}s",
                            self.timeout.as_secs_f64()
                        ),
                        pending: true,
                    });
                }
            }
        }
        Err(Failure {
            reason: format!(
                "{} requests, no valid answer (last: {})",
                self.attempts,
                stale.last().map(String::as_str).unwrap_or("none")
            ),
            pending: true,
        })
    }

    /// `submitRequest(nft, ECIES(payload))`; the new request's id.
    async fn submit(&self, target: &Target, payload: &[u8]) -> Result<u64, String> {
        let ciphertext = broker_contracts::protocol::encrypt(&target.ecies_key, payload)
            .map_err(|e| format!("encrypting the request: {e}"))?;
        let contract = BrokerRequests::new(target.requests_contract, self.chain.provider());
        let tx = contract
            .submitRequest(self.nft, ciphertext.into())
            .into_transaction_request();
        let receipt = self
            .chain
            .transact("submitRequest", tx)
            .await
            .map_err(|e| e.to_string())?;
        let event = receipt
            .decoded_log::<BrokerRequests::RequestSubmitted>()
            .ok_or("submitRequest: no RequestSubmitted event in the receipt")?;
        let id = u64::try_from(event.requestId)
            .map_err(|_| format!("request id {} does not fit 64 bits", event.requestId))?;
        eprintln!(
            "submitted request {id} to {} (transaction {})",
            target.label(),
            receipt.transaction_hash
        );
        Ok(id)
    }

    /// The account that answers for the broker: the requests contract's
    /// owner (only it may call submitResponse). Empty when unreadable.
    async fn answerer(&self, target: &Target) -> String {
        let contract = BrokerRequests::new(target.requests_contract, self.chain.provider());
        match self.chain.view("owner", contract.owner().call()).await {
            Ok(owner) => owner.to_string(),
            Err(e) => {
                eprintln!("note: reading the broker's wallet: {e}");
                String::new()
            }
        }
    }

    /// Ends a request left pending at a broker we give up on, so a late
    /// answer cannot give the NFT contract a second allocation.
    async fn withdraw(&self, target: &Target) {
        let contract = BrokerRequests::new(target.requests_contract, self.chain.provider());
        let tx = contract
            .releaseOwnAllocation(self.nft)
            .into_transaction_request();
        match self.chain.transact("releaseOwnAllocation", tx).await {
            Ok(_) => eprintln!("withdrew the pending request at {}", target.label()),
            Err(e @ ChainError::Reverted { .. }) => {
                eprintln!("note: nothing to withdraw at {}: {e}", target.label())
            }
            Err(e) => eprintln!(
                "warning: could not withdraw the pending request at {}: {e}",
                target.label()
            ),
        }
    }
}
