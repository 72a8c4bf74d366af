//! BlockHost servers played by the test itself: requests submitted with the
//! contract bindings from anvil accounts, and the answers read as
//! `broker-client` reads them; what the broker did on chain (its events and
//! transactions), and what a request's answer must hold.

use std::{
    collections::BTreeMap,
    net::Ipv6Addr,
    time::{Duration, Instant},
};

use alloy::{
    consensus::Transaction as _,
    network::TransactionResponse as _,
    primitives::{Address, B256, U256},
    providers::Provider as _,
    rpc::types::Filter,
    sol_types::{SolCall as _, SolEvent as _, SolInterface as _},
};
use anyhow::{Context as _, bail, ensure};
use broker_contracts::{
    BrokerRequests::{self, BrokerRequestsCalls},
    TestNFT,
    devchain::anvil_signer,
    protocol::{self, RequestPayload, ResponsePayload},
};
use ipnet::Ipv6Net;
use wireguard_control::Key;

use crate::{Lab, wireguard::ClientTunnel};

/// anvil accounts of the BlockHost servers (0 and 1 are the deployer and
/// the operator).
pub const CLIENT: usize = 2;
pub const OTHER_CLIENT: usize = 3;
/// RequestStatus in the ABI.
pub const PENDING: u8 = 0;
pub const APPROVED: u8 = 1;
pub const EXPIRED: u8 = 3;
/// Gas limit of the clients' requests and releases. An estimate can fall
/// short: made against the latest block, it misses that a later timestamp
/// turns a no-op write (`respondedAt` set in the same second) into a real one.
pub const CLIENT_TX_GAS: u64 = 1_000_000;

/// A BlockHost server: an anvil account, a WireGuard key and the secp256k1
/// key its answers are encrypted to.
pub struct Client {
    pub account: usize,
    pub wg: Key,
    pub secret: [u8; 32],
    pub public: [u8; 65],
}

impl Client {
    pub fn new(account: usize) -> Self {
        let (secret, public) = ecies::utils::generate_keypair();
        Client {
            account,
            wg: Key::generate_private(),
            secret: secret.serialize(),
            public: public.serialize(),
        }
    }

    /// The same server with a new WireGuard key.
    pub fn rotated(&self) -> Self {
        Client {
            account: self.account,
            wg: Key::generate_private(),
            secret: self.secret,
            public: self.public,
        }
    }

    pub fn wg_public(&self) -> String {
        self.wg.get_public().to_base64()
    }

    pub fn payload(&self, nft: Address) -> RequestPayload {
        RequestPayload {
            wg_pubkey: self.wg_public(),
            nft_contract: nft.to_string(),
            server_pubkey: hex::encode(self.public),
        }
    }
}

/// What [`Lab::serve`] gives.
pub struct Served {
    pub client: Client,
    pub nft: Address,
    pub id: u64,
    pub answer: ResponsePayload,
    pub prefix: Ipv6Net,
}

/// The client's tunnel address: the prefix's network address + 1.
pub fn client_address(prefix: Ipv6Net) -> String {
    Ipv6Addr::from(u128::from(prefix.network()) + 1).to_string()
}

/// How often a request's state is read while waiting for it.
const POLL: Duration = Duration::from_millis(200);

impl Lab {
    /// A TestNFT owned by anvil account `owner`.
    pub async fn nft(&self, owner: usize) -> anyhow::Result<Address> {
        Ok(
            *TestNFT::deploy(self.wallet(owner)?, anvil_signer(owner).address())
                .await
                .context("deploying a TestNFT")?
                .address(),
        )
    }

    /// `submitRequest(nft, payload)` from `account`; the request id.
    pub async fn submit(
        &self,
        account: usize,
        nft: Address,
        payload: Vec<u8>,
    ) -> anyhow::Result<u64> {
        self.submit_to(self.chain.requests, account, nft, payload)
            .await
    }

    /// [`Lab::submit`] to `contract` (V1 has the same call and event).
    pub async fn submit_to(
        &self,
        contract: Address,
        account: usize,
        nft: Address,
        payload: Vec<u8>,
    ) -> anyhow::Result<u64> {
        let receipt = BrokerRequests::new(contract, self.wallet(account)?)
            .submitRequest(nft, payload.into())
            .gas(CLIENT_TX_GAS)
            .send()
            .await
            .context("sending submitRequest")?
            .get_receipt()
            .await
            .context("submitRequest's receipt")?;
        ensure!(receipt.status(), "submitRequest reverted");
        request_id(&receipt)
    }

    /// The encrypted payload of a request as a client sends it.
    pub fn encrypt(&self, json: &str) -> anyhow::Result<Vec<u8>> {
        Ok(protocol::encrypt(
            &self.chain.ecies_public,
            json.as_bytes(),
        )?)
    }

    /// A valid request from `client` for `nft`.
    pub async fn request_tunnel(&self, client: &Client, nft: Address) -> anyhow::Result<u64> {
        self.request_tunnel_at(self.chain.requests, client, nft)
            .await
    }

    pub async fn request_tunnel_at(
        &self,
        contract: Address,
        client: &Client,
        nft: Address,
    ) -> anyhow::Result<u64> {
        let payload = self.encrypt(&client.payload(nft).to_json())?;
        self.submit_to(contract, client.account, nft, payload).await
    }

    pub async fn request(&self, id: u64) -> anyhow::Result<BrokerRequests::Request> {
        self.request_at(self.chain.requests, id).await
    }

    /// `getRequest(id)` on `contract` (V1's `Request` has V2's layout).
    pub async fn request_at(
        &self,
        contract: Address,
        id: u64,
    ) -> anyhow::Result<BrokerRequests::Request> {
        BrokerRequests::new(contract, self.wallet(0)?)
            .getRequest(U256::from(id))
            .call()
            .await
            .with_context(|| format!("getRequest({id})"))
    }

    pub async fn status(&self, id: u64) -> anyhow::Result<u8> {
        Ok(self.request(id).await?.status)
    }

    /// A new server (anvil `account`, an NFT of its own) whose request the
    /// broker answered, the answer checked against the configuration.
    pub async fn serve(&mut self, account: usize) -> anyhow::Result<Served> {
        let nft = self.nft(account).await?;
        let client = Client::new(account);
        let id = self.request_tunnel(&client, nft).await?;
        let answer = self
            .wait_answer(id, &client, Duration::from_secs(30))
            .await?;
        let prefix = self.check_answer(&answer)?;
        Ok(Served {
            client,
            nft,
            id,
            answer,
            prefix,
        })
    }

    /// Polls `getRequest(id)` until it is Approved (at most `limit`) and
    /// reads the answer as the client does: the framed id must match, the
    /// rest decrypt with the client's key.
    pub async fn wait_answer(
        &mut self,
        id: u64,
        client: &Client,
        limit: Duration,
    ) -> anyhow::Result<ResponsePayload> {
        self.wait_answer_at(self.chain.requests, id, client, limit)
            .await
    }

    pub async fn wait_answer_at(
        &mut self,
        contract: Address,
        id: u64,
        client: &Client,
        limit: Duration,
    ) -> anyhow::Result<ResponsePayload> {
        let deadline = Instant::now() + limit;
        loop {
            let request = self.request_at(contract, id).await?;
            match request.status {
                APPROVED => {
                    let (framed_id, ciphertext) =
                        protocol::unframe_response(&request.responsePayload)?;
                    ensure!(
                        framed_id == id,
                        "the answer to {id} names request {framed_id}"
                    );
                    let plaintext = protocol::decrypt(&client.secret, ciphertext)
                        .context("the answer does not decrypt with the client's key")?;
                    return Ok(ResponsePayload::parse(&plaintext)?);
                }
                PENDING => {}
                other => bail!("request {id} is in status {other}, not answered"),
            }
            let broker = self.broker()?;
            if !broker.running() {
                bail!(
                    "the broker exited while request {id} waits:\n{}",
                    broker.log()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "request {id} not answered within {limit:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Checks an answer against the broker's configuration; returns its
    /// prefix.
    pub fn check_answer(&self, answer: &ResponsePayload) -> anyhow::Result<Ipv6Net> {
        let pool = &self.config.broker.pool;
        let prefix: Ipv6Net = answer.prefix.parse()?;
        ensure!(prefix.prefix_len() == pool.allocation_size(), "{answer:?}");
        ensure!(pool.upstream().contains(&prefix), "{answer:?}");
        ensure!(prefix == prefix.trunc(), "host bits in {answer:?}");
        ensure!(
            answer.prefix == prefix.to_string(),
            "not the canonical form: {answer:?}"
        );
        ensure!(
            prefix.network() != pool.upstream().network(),
            "the broker's own /{} was handed out",
            pool.allocation_size()
        );
        // The upstream network + 2.
        let gateway = Ipv6Addr::from(u128::from(pool.upstream().network()) + 2);
        ensure!(answer.gateway == gateway.to_string(), "{answer:?}");
        ensure!(
            answer.broker_pubkey == self.broker_public.to_base64(),
            "{answer:?}"
        );
        ensure!(
            answer.broker_endpoint == self.config.wireguard.endpoint,
            "{answer:?}"
        );
        ensure!(answer.dns_zone.is_none(), "{answer:?}");
        Ok(prefix)
    }

    /// The client's end of the tunnel in server 1's namespace, set up from
    /// the answer as a client does (a new key on a tunnel already up).
    pub fn bring_up_tunnel(
        &mut self,
        client: &Client,
        answer: &ResponsePayload,
    ) -> anyhow::Result<()> {
        let broker = Key::from_base64(&answer.broker_pubkey).context("a WireGuard key")?;
        let prefix: Ipv6Net = answer.prefix.parse()?;
        let name = &self.servers[0].interface;
        let tunnel = ClientTunnel {
            ns: &self.net.servers[0],
            name,
            key_dir: &self.dir,
            endpoint: &answer.broker_endpoint,
            allowed_ips: "::/0",
            route: "::/0",
        };
        if crate::wireguard::daemons(name).is_empty() {
            tunnel.start(&client.wg, &broker, &client_address(prefix))
        } else {
            tunnel.set_key(&client.wg, &broker)
        }
    }

    /// An anvil RPC call (`evm_mine`, `evm_setAutomine`, `txpool_status`…).
    /// Anvil account `account` releases its NFT's allocation on chain
    /// (`releaseOwnAllocation`), mined.
    pub async fn release_own(&self, account: usize, nft: Address) -> anyhow::Result<()> {
        let receipt = BrokerRequests::new(self.chain.requests, self.wallet(account)?)
            .releaseOwnAllocation(nft)
            .gas(CLIENT_TX_GAS)
            .send()
            .await?
            .get_receipt()
            .await?;
        ensure!(receipt.status(), "releaseOwnAllocation reverted");
        Ok(())
    }

    /// The chain's newest block number.
    pub async fn block_number(&self) -> anyhow::Result<u64> {
        Ok(self.wallet(0)?.get_block_number().await?)
    }

    /// A request's `submitRequest` as a transaction anvil signs itself (its
    /// accounts are unlocked), for a reorg to include again.
    pub fn submit_request_tx(
        &self,
        account: usize,
        nft: Address,
        payload: &[u8],
    ) -> serde_json::Value {
        let data = BrokerRequests::submitRequestCall {
            nftContract: nft,
            encryptedPayload: payload.to_vec().into(),
        }
        .abi_encode();
        serde_json::json!({
            "from": anvil_signer(account).address(),
            "to": self.chain.requests,
            "data": alloy::primitives::Bytes::from(data),
            "gas": format!("{CLIENT_TX_GAS:#x}"),
        })
    }

    /// `anvil_reorg`: replaces the blocks after `keep` with as many new
    /// ones, the first holding `transactions`.
    pub async fn reorg_after(
        &self,
        keep: u64,
        transactions: Vec<serde_json::Value>,
    ) -> anyhow::Result<()> {
        let depth = self.block_number().await? - keep;
        let pairs: Vec<_> = transactions
            .into_iter()
            .map(|tx| serde_json::json!([tx, 0]))
            .collect();
        self.anvil("anvil_reorg", serde_json::json!([depth, pairs]))
            .await?;
        Ok(())
    }

    pub async fn anvil(
        &self,
        method: &'static str,
        params: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        self.wallet(0)?
            .raw_request(method.into(), params)
            .await
            .context(method)
    }

    /// How many `ResponseSubmitted` events each request has.
    pub async fn response_events(&self) -> anyhow::Result<BTreeMap<u64, usize>> {
        self.response_events_at(self.chain.requests).await
    }

    pub async fn response_events_at(
        &self,
        contract: Address,
    ) -> anyhow::Result<BTreeMap<u64, usize>> {
        let filter = Filter::new()
            .address(contract)
            .event_signature(BrokerRequests::ResponseSubmitted::SIGNATURE_HASH)
            .from_block(0);
        let mut counts = BTreeMap::new();
        for log in self.wallet(0)?.get_logs(&filter).await? {
            let event = log.log_decode::<BrokerRequests::ResponseSubmitted>()?;
            *counts
                .entry(event.inner.data.requestId.to::<u64>())
                .or_default() += 1;
        }
        Ok(counts)
    }

    /// `AllocationReleased` events: (request id, NFT, by).
    pub async fn released_events(&self) -> anyhow::Result<Vec<(u64, Address, Address)>> {
        let filter = Filter::new()
            .address(self.chain.requests)
            .event_signature(BrokerRequests::AllocationReleased::SIGNATURE_HASH)
            .from_block(0);
        let mut events = Vec::new();
        for log in self.wallet(0)?.get_logs(&filter).await? {
            let e = log
                .log_decode::<BrokerRequests::AllocationReleased>()?
                .inner
                .data;
            events.push((e.requestId.to::<u64>(), e.nftContract, e.by));
        }
        Ok(events)
    }

    /// The chain's time (block timestamp, seconds) of the first event
    /// `signature` of the lab's requests contract, if there is one: for
    /// durations measured on the chain's clock rather than by when a test
    /// happened to look.
    pub async fn first_event_time(&self, signature: B256) -> anyhow::Result<Option<u64>> {
        let provider = self.wallet(0)?;
        let filter = Filter::new()
            .address(self.chain.requests)
            .event_signature(signature)
            .from_block(0);
        let Some(block) = provider
            .get_logs(&filter)
            .await?
            .first()
            .and_then(|log| log.block_number)
        else {
            return Ok(None);
        };
        let block = provider
            .get_block_by_number(block.into())
            .await?
            .with_context(|| format!("block {block}"))?;
        Ok(Some(block.header.timestamp))
    }

    /// What the operator paid (gas used × effective gas price, from the
    /// receipts) for its transactions mined after block `after`.
    pub async fn operator_gas_since(&self, after: u64) -> anyhow::Result<u128> {
        let provider = self.wallet(0)?;
        let mut paid = 0u128;
        for tx in self.operator_transactions(after + 1).await? {
            let hash = tx.tx_hash();
            let receipt = provider
                .get_transaction_receipt(hash)
                .await?
                .with_context(|| format!("no receipt for {hash}"))?;
            paid += u128::from(receipt.gas_used) * receipt.effective_gas_price;
        }
        Ok(paid)
    }

    /// Every transaction the operator sent to the requests contract, as
    /// `submitResponse(ID)`, `releaseAllocation(NFT)` or the function name.
    pub async fn operator_calls(&self) -> anyhow::Result<Vec<String>> {
        let mut calls = Vec::new();
        for tx in self.operator_transactions(0).await? {
            if tx.to() != Some(self.chain.requests) {
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
        Ok(calls)
    }

    /// The operator's transactions mined from block `from` to the latest,
    /// in chain order.
    async fn operator_transactions(
        &self,
        from: u64,
    ) -> anyhow::Result<Vec<alloy::rpc::types::Transaction>> {
        let provider = self.wallet(0)?;
        let operator = self.chain.operator.address();
        let latest = provider.get_block_number().await?;
        let mut sent = Vec::new();
        for number in from..=latest {
            let block = provider
                .get_block_by_number(number.into())
                .full()
                .await?
                .with_context(|| format!("block {number} is not mined"))?;
            sent.extend(
                block
                    .transactions
                    .into_transactions()
                    .filter(|tx| tx.from() == operator),
            );
        }
        Ok(sent)
    }
}

/// The request id of a `submitRequest` receipt.
pub fn request_id(receipt: &alloy::rpc::types::TransactionReceipt) -> anyhow::Result<u64> {
    Ok(receipt
        .decoded_log::<BrokerRequests::RequestSubmitted>()
        .context("no RequestSubmitted event")?
        .requestId
        .to::<u64>())
}

/// How many times `call` is in `calls`.
pub fn count(calls: &[String], call: &str) -> usize {
    calls.iter().filter(|c| *c == call).count()
}
