//! The daemon's chain access layer (`broker_userspace::chain`) against real
//! anvil chains (no root needed). Each test starts its own anvil on a free
//! port with the contracts deployed (`DevChain`), so the tests run in
//! parallel. Clients act with the bindings, from their own wallets (anvil
//! accounts 2 and 3), as BlockHost servers would.

use std::{
    net::{Ipv4Addr, TcpListener},
    time::{Duration, Instant},
};

use alloy::{
    network::EthereumWallet,
    primitives::{Address, TxHash, U256},
    providers::{DynProvider, Provider, ProviderBuilder},
    rpc::types::TransactionReceipt,
    sol_types::SolCall as _,
};
use broker_contracts::{
    BrokerRequests, BrokerRequestsV1, FakeNFT, TestNFT,
    devchain::{DevChain, Options, anvil_signer},
    protocol::frame_response,
};
use broker_lab::relay::Relay;
use broker_userspace::{
    chain::{Chain, ChainError, ChainOptions, NftCheck, OnchainRequest, Released, RequestStatus},
    config::{Confirm, Onchain},
};
use serde_json::json;

const CLIENT: usize = 2;
const OTHER_CLIENT: usize = 3;
const DAY: u64 = 24 * 60 * 60;

// FakeNFT.Mode
const CLAIMS_ERC721: u8 = 0;
const DENIES_ERC721: u8 = 1;
const REVERTS_IN_SUPPORTS_INTERFACE: u8 = 2;
const MALFORMED_SUPPORTS_INTERFACE: u8 = 3;
const OWNER_REVERTS: u8 = 4;

fn onchain(rpc_url: &str, chain_id: u64, requests: Address, confirmations: u64) -> Onchain {
    Onchain {
        rpc_url: rpc_url.to_string(),
        chain_id,
        requests_contract: requests,
        registry_contract: None,
        legacy_requests_contracts: Vec::new(),
        operator_key_file: "/nonexistent/operator.key".into(),
        ecies_key_file: "/nonexistent/ecies.key".into(),
        poll_interval_secs: 5,
        confirm: Confirm::Blocks(confirmations),
        start_request_id: 1,
        max_requests_per_poll: broker_userspace::config::DEFAULT_MAX_REQUESTS_PER_POLL,
        log_range_blocks: broker_userspace::config::DEFAULT_LOG_RANGE_BLOCKS,
        low_balance_wei: U256::ZERO,
    }
}

/// Short timeouts: a local chain answers in milliseconds.
fn quick() -> ChainOptions {
    ChainOptions {
        rpc_timeout: Duration::from_secs(3),
        receipt_timeout: Duration::from_secs(10),
        receipt_poll_max: Duration::from_millis(200),
        ..ChainOptions::default()
    }
}

/// A chain with the contracts, and the broker's view of it.
struct Env {
    dev: DevChain,
    chain: Chain,
    started: Instant,
}

impl Env {
    async fn start(confirmations: u64) -> Env {
        let started = Instant::now();
        let dev = DevChain::start(&Options::default())
            .await
            .expect("anvil with the contracts");
        let chain = Chain::connect_with(
            &onchain(&dev.rpc_url, dev.chain_id, dev.requests, confirmations),
            dev.operator.clone(),
            quick(),
        )
        .await
        .expect("connects");
        Env {
            dev,
            chain,
            started,
        }
    }

    fn requests(&self) -> Address {
        self.dev.requests
    }

    /// A provider signing with anvil account `index`.
    fn wallet(&self, index: usize) -> DynProvider {
        ProviderBuilder::new()
            .wallet(EthereumWallet::from(anvil_signer(index)))
            .connect_http(self.dev.rpc_url.parse().unwrap())
            .erased()
    }

    fn address(index: usize) -> Address {
        anvil_signer(index).address()
    }

    /// A TestNFT owned by anvil account `owner`.
    async fn nft(&self, owner: usize) -> Address {
        *TestNFT::deploy(self.wallet(owner), Self::address(owner))
            .await
            .expect("TestNFT deploys")
            .address()
    }

    async fn fake_nft(&self, claimed_owner: Address, mode: u8) -> Address {
        *FakeNFT::deploy(self.wallet(OTHER_CLIENT), claimed_owner, mode)
            .await
            .expect("FakeNFT deploys")
            .address()
    }

    /// `submitRequest` from the client's wallet: the new request id and its
    /// block.
    async fn submit(&self, client: usize, nft: Address, payload: &[u8]) -> (u64, u64) {
        let receipt = BrokerRequests::new(self.requests(), self.wallet(client))
            .submitRequest(nft, payload.to_vec().into())
            .send()
            .await
            .expect("submitRequest sent")
            .get_receipt()
            .await
            .expect("a receipt");
        assert!(receipt.status(), "submitRequest reverted");
        let event = receipt
            .decoded_log::<BrokerRequests::RequestSubmitted>()
            .expect("RequestSubmitted");
        (event.requestId.to::<u64>(), receipt.block_number.unwrap())
    }

    /// An anvil/evm RPC method.
    async fn anvil(&self, method: &'static str, params: serde_json::Value) -> serde_json::Value {
        self.wallet(0)
            .raw_request(method.into(), params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    async fn mine(&self, blocks: u64) {
        self.anvil("anvil_mine", json!([U256::from(blocks)])).await;
    }

    async fn increase_time(&self, secs: u64) {
        self.anvil("evm_increaseTime", json!([secs])).await;
        self.anvil("evm_mine", json!([])).await;
    }

    async fn latest(&self) -> u64 {
        self.wallet(0).get_block_number().await.unwrap()
    }

    async fn receipt(&self, tx: TxHash) -> TransactionReceipt {
        self.wallet(0)
            .get_transaction_receipt(tx)
            .await
            .unwrap()
            .expect("mined")
    }

    async fn request(&self, id: u64) -> OnchainRequest {
        let at = self.chain.safe_block().await.unwrap();
        self.chain.request(self.requests(), id, &at).await.unwrap()
    }

    fn done(&self, test: &str) {
        eprintln!(
            "{test}: {:.0} ms",
            self.started.elapsed().as_secs_f64() * 1000.0
        );
    }
}

fn assert_reverted(result: Result<impl std::fmt::Debug, ChainError>, reason: &str) -> ChainError {
    match result {
        Err(e @ ChainError::Reverted { .. }) => {
            let text = e.to_string();
            assert!(text.contains(reason), "{text}");
            assert!(!text.contains('\n'), "{text}");
            assert!(!e.is_transient());
            e
        }
        other => panic!("expected a revert with {reason:?}, got {other:?}"),
    }
}

fn assert_transient(result: Result<impl std::fmt::Debug, ChainError>, what: &str) -> ChainError {
    match result {
        Err(e @ ChainError::Transient { .. }) => {
            let text = e.to_string();
            assert!(text.contains(what), "{text}");
            assert!(!text.contains('\n'), "{text}");
            e
        }
        other => panic!("expected a transient error with {what:?}, got {other:?}"),
    }
}

fn assert_bad_data(result: Result<impl std::fmt::Debug, ChainError>, what: &str) {
    match result {
        Err(e @ ChainError::BadData { .. }) => {
            assert!(e.to_string().contains(what), "{e}");
        }
        other => panic!("expected unusable data with {what:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn requests_are_read_at_the_safe_block() {
    let env = Env::start(0).await;
    let contract = env.requests();
    let client = Env::address(CLIENT);
    let nft = env.nft(CLIENT).await;

    let (id, block) = env.submit(CLIENT, nft, b"request one").await;
    assert_eq!(id, 1);
    let at = env.chain.safe_block().await.unwrap();
    assert_eq!(at.number, block, "no confirmations: the latest block");
    let header = env
        .wallet(0)
        .get_block_by_number(block.into())
        .await
        .unwrap()
        .unwrap()
        .header;
    assert_eq!((at.hash, at.timestamp), (header.hash, header.timestamp));

    assert_eq!(env.chain.request_count(contract, &at).await.unwrap(), 1);
    assert_eq!(
        env.chain.request(contract, 1, &at).await.unwrap(),
        OnchainRequest {
            id: 1,
            requester: client,
            nft_contract: nft,
            encrypted_payload: b"request one".to_vec(),
            status: RequestStatus::Pending,
            response_payload: Vec::new(),
            submitted_at: header.timestamp,
            responded_at: 0,
        }
    );
    assert_eq!(
        env.chain
            .current_request_id(contract, nft, &at)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        env.chain
            .current_request_id(contract, Address::repeat_byte(7), &at)
            .await
            .unwrap(),
        0
    );
    assert_eq!(env.chain.expiration_time(contract, &at).await.unwrap(), DAY);

    // Ids outside 1..=count: the contract's refusal, naming the call.
    let e = assert_reverted(
        env.chain.request(contract, 2, &at).await,
        "Invalid request ID",
    );
    assert!(
        e.to_string().starts_with(&format!(
            "getRequest(2) on {contract} at block {}",
            at.number
        )),
        "{e}"
    );
    assert_reverted(
        env.chain.request(contract, 0, &at).await,
        "Invalid request ID",
    );
    assert_reverted(
        env.chain.request(contract, u64::MAX, &at).await,
        "Invalid request ID",
    );

    // An overwrite expires the old request; the old block still shows the past.
    let (id2, _) = env.submit(CLIENT, nft, b"request two").await;
    assert_eq!(id2, 2);
    let now = env.chain.safe_block().await.unwrap();
    assert_eq!(env.chain.request_count(contract, &now).await.unwrap(), 2);
    let old = env.chain.request(contract, 1, &now).await.unwrap();
    assert_eq!(old.status, RequestStatus::Expired);
    assert!(old.responded_at >= old.submitted_at && old.responded_at > 0);
    assert_eq!(
        env.chain.request(contract, 2, &now).await.unwrap().status,
        RequestStatus::Pending
    );
    assert_eq!(
        env.chain
            .current_request_id(contract, nft, &now)
            .await
            .unwrap(),
        2
    );
    assert_eq!(env.chain.request_count(contract, &at).await.unwrap(), 1);
    assert_eq!(
        env.chain.request(contract, 1, &at).await.unwrap().status,
        RequestStatus::Pending
    );
    env.done("requests_are_read_at_the_safe_block");
}

#[tokio::test]
async fn confirmations_hide_the_newest_blocks() {
    let env = Env::start(2).await;
    let contract = env.requests();
    let nft = env.nft(CLIENT).await;
    let (id, block) = env.submit(CLIENT, nft, b"payload").await;
    assert_eq!(env.latest().await, block);

    let at = env.chain.safe_block().await.unwrap();
    assert_eq!(at.number, block - 2);
    assert_eq!(env.chain.request_count(contract, &at).await.unwrap(), 0);
    assert_reverted(
        env.chain.request(contract, id, &at).await,
        "Invalid request ID",
    );

    env.mine(1).await;
    let at = env.chain.safe_block().await.unwrap();
    assert_eq!(at.number, block - 1);
    assert_eq!(env.chain.request_count(contract, &at).await.unwrap(), 0);

    env.anvil("evm_mine", json!([])).await;
    let at = env.chain.safe_block().await.unwrap();
    assert_eq!(at.number, block);
    assert_eq!(env.chain.request_count(contract, &at).await.unwrap(), 1);
    assert_eq!(
        env.chain
            .request(contract, id, &at)
            .await
            .unwrap()
            .nft_contract,
        nft
    );

    // A depth beyond the chain's height saturates at the genesis block.
    let deep = Chain::connect_with(
        &onchain(&env.dev.rpc_url, env.dev.chain_id, contract, 1_000_000),
        env.dev.operator.clone(),
        quick(),
    )
    .await
    .unwrap();
    let genesis = deep.safe_block().await.unwrap();
    assert_eq!(genesis.number, 0);
    assert_eq!(deep.confirm(), Confirm::Blocks(1_000_000));
    env.done("confirmations_hide_the_newest_blocks");
}

#[tokio::test]
async fn nft_checks_follow_the_contract() {
    let env = Env::start(0).await;
    let client = Env::address(CLIENT);
    let other = Env::address(OTHER_CLIENT);
    let nft = env.nft(CLIENT).await;

    assert_eq!(
        env.chain.verify_nft(nft, client).await.unwrap(),
        NftCheck::Ok
    );
    assert_eq!(
        env.chain.verify_nft(nft, other).await.unwrap(),
        NftCheck::NotOwner { owner: client }
    );
    // No code: an EOA, an empty address.
    assert_eq!(
        env.chain.verify_nft(other, client).await.unwrap(),
        NftCheck::NoCode
    );
    assert_eq!(
        env.chain
            .verify_nft(Address::repeat_byte(0x5a), client)
            .await
            .unwrap(),
        NftCheck::NoCode
    );
    // Code without supportsInterface (the requests contract reverts on it).
    assert_eq!(
        env.chain.verify_nft(env.requests(), client).await.unwrap(),
        NftCheck::NotErc721
    );

    for (mode, expected) in [
        (CLAIMS_ERC721, NftCheck::Ok),
        (DENIES_ERC721, NftCheck::NotErc721),
        (REVERTS_IN_SUPPORTS_INTERFACE, NftCheck::NotErc721),
        (MALFORMED_SUPPORTS_INTERFACE, NftCheck::NotErc721),
        (OWNER_REVERTS, NftCheck::NoOwner),
    ] {
        let fake = env.fake_nft(client, mode).await;
        assert_eq!(
            env.chain.verify_nft(fake, client).await.unwrap(),
            expected,
            "FakeNFT mode {mode}"
        );
    }
    let fake = env.fake_nft(other, CLAIMS_ERC721).await;
    assert_eq!(
        env.chain.verify_nft(fake, client).await.unwrap(),
        NftCheck::NotOwner { owner: other }
    );

    // Ownership is checked now, not at submission.
    let receipt = TestNFT::new(nft, env.wallet(CLIENT))
        .transferOwnership(other)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status());
    assert_eq!(
        env.chain.verify_nft(nft, client).await.unwrap(),
        NftCheck::NotOwner { owner: other }
    );
    assert_eq!(
        env.chain.verify_nft(nft, other).await.unwrap(),
        NftCheck::Ok
    );
    env.done("nft_checks_follow_the_contract");
}

#[tokio::test]
async fn a_response_lands_once() {
    let env = Env::start(0).await;
    let contract = env.requests();
    let nft = env.nft(CLIENT).await;
    let (id, _) = env.submit(CLIENT, nft, b"payload").await;
    assert_eq!(
        env.chain.response_on_chain(contract, id).await.unwrap(),
        None
    );
    assert_eq!(
        env.chain.contract_owner(contract).await.unwrap(),
        env.chain.operator()
    );

    let framed = frame_response(id, b"ciphertext");
    let tx = env
        .chain
        .submit_response(contract, id, framed.clone())
        .await
        .unwrap();
    let receipt = env.receipt(tx).await;
    assert!(receipt.status());
    assert_eq!(receipt.from, env.dev.operator.address());
    assert_eq!(
        env.chain.response_on_chain(contract, id).await.unwrap(),
        Some(framed.clone())
    );
    let request = env.request(id).await;
    assert_eq!(request.status, RequestStatus::Approved);
    assert_eq!(request.response_payload, framed);
    assert!(request.responded_at >= request.submitted_at);

    // Again: refused by the simulation, nothing sent, nothing changed.
    let nonce = env
        .wallet(0)
        .get_transaction_count(env.chain.operator())
        .await
        .unwrap();
    let e = assert_reverted(
        env.chain
            .submit_response(contract, id, frame_response(id, b"other"))
            .await,
        "Request not pending",
    );
    assert!(matches!(e, ChainError::Reverted { tx: None, .. }), "{e:?}");
    assert!(e.is_reverted());
    assert!(
        e.to_string()
            .starts_with(&format!("submitResponse({id}) on {contract}: reverted: ")),
        "{e}"
    );
    assert_eq!(
        env.wallet(0)
            .get_transaction_count(env.chain.operator())
            .await
            .unwrap(),
        nonce,
        "nothing was sent"
    );
    assert_eq!(
        env.chain.response_on_chain(contract, id).await.unwrap(),
        Some(framed)
    );

    assert_reverted(
        env.chain
            .submit_response(contract, 99, frame_response(99, b"x"))
            .await,
        "Invalid request ID",
    );
    let (id2, _) = env.submit(CLIENT, env.nft(CLIENT).await, b"second").await;
    assert_reverted(
        env.chain.submit_response(contract, id2, Vec::new()).await,
        "Response requires payload",
    );

    // A key that does not own the contract: a revert too, never retried.
    let stranger = Chain::connect_with(
        &onchain(&env.dev.rpc_url, env.dev.chain_id, contract, 0),
        anvil_signer(OTHER_CLIENT),
        quick(),
    )
    .await
    .unwrap();
    assert_reverted(
        stranger
            .submit_response(contract, id2, frame_response(id2, b"x"))
            .await,
        &format!("OwnableUnauthorizedAccount({})", Env::address(OTHER_CLIENT)),
    );
    assert_eq!(env.request(id2).await.status, RequestStatus::Pending);
    env.done("a_response_lands_once");
}

#[tokio::test]
async fn racing_responses_land_once() {
    // The crash case: a response is in the pool, unmined, when a second one
    // for the same request is sent. Exactly one lands; the other reverts.
    let env = Env::start(0).await;
    let contract = env.requests();
    let (id, _) = env.submit(CLIENT, env.nft(CLIENT).await, b"payload").await;
    env.anvil("evm_setAutomine", json!([false])).await;

    let first = tokio::spawn({
        let chain = env.chain.clone();
        async move {
            chain
                .submit_response(contract, id, frame_response(id, b"first"))
                .await
        }
    });
    wait_for_pool(&env, 1).await;
    assert_eq!(
        env.chain.response_on_chain(contract, id).await.unwrap(),
        None
    );
    let second = tokio::spawn({
        let chain = env.chain.clone();
        async move {
            chain
                .submit_response(contract, id, frame_response(id, b"second"))
                .await
        }
    });
    // The second is refused by its simulation (anvil estimates against the
    // pending state) or sent and reverted when mined; give it time to get
    // as far as it goes.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !second.is_finished() && pool_size(&env).await < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.anvil("evm_mine", json!([])).await;
    env.anvil("evm_setAutomine", json!([true])).await;

    let first = first.await.unwrap();
    let second = second.await.unwrap();
    assert!(first.is_ok(), "{first:?}");
    let e = assert_reverted(second, "");
    eprintln!("racing_responses_land_once: the second one: {e}");
    assert_eq!(
        env.chain.response_on_chain(contract, id).await.unwrap(),
        Some(frame_response(id, b"first"))
    );
    env.done("racing_responses_land_once");
}

async fn pool_size(env: &Env) -> u64 {
    let status = env.anvil("txpool_status", json!([])).await;
    let pending = status["pending"].as_str().unwrap_or("0x0");
    u64::from_str_radix(pending.trim_start_matches("0x"), 16).unwrap_or(0)
}

async fn wait_for_pool(env: &Env, size: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool_size(env).await < size {
        assert!(
            Instant::now() < deadline,
            "the pool never held {size} transaction(s)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_expired_request_cannot_be_answered() {
    let env = Env::start(0).await;
    let contract = env.requests();
    let (id, _) = env.submit(CLIENT, env.nft(CLIENT).await, b"payload").await;
    env.increase_time(DAY + 1).await;

    let at = env.chain.safe_block().await.unwrap();
    let request = env.chain.request(contract, id, &at).await.unwrap();
    // Expiry is lazy: still Pending, but past its deadline at this block.
    assert_eq!(request.status, RequestStatus::Pending);
    assert!(
        request.submitted_at + env.chain.expiration_time(contract, &at).await.unwrap()
            < at.timestamp
    );

    assert_reverted(
        env.chain
            .submit_response(contract, id, frame_response(id, b"late"))
            .await,
        "Request expired",
    );
    assert_eq!(
        env.chain.response_on_chain(contract, id).await.unwrap(),
        None
    );
    env.done("an_expired_request_cannot_be_answered");
}

#[tokio::test]
async fn a_transaction_that_reverts_when_mined_is_reverted() {
    // It passes its simulation, then the request expires before it is mined.
    let env = Env::start(0).await;
    let contract = env.requests();
    let (id, _) = env.submit(CLIENT, env.nft(CLIENT).await, b"payload").await;
    env.anvil("evm_setAutomine", json!([false])).await;
    let response = tokio::spawn({
        let chain = env.chain.clone();
        async move {
            chain
                .submit_response(contract, id, frame_response(id, b"late"))
                .await
        }
    });
    wait_for_pool(&env, 1).await;
    env.increase_time(DAY + 1).await;
    env.anvil("evm_setAutomine", json!([true])).await;

    let e = assert_reverted(response.await.unwrap(), "reverted in block");
    let ChainError::Reverted { tx: Some(tx), .. } = e else {
        panic!("{e:?}")
    };
    assert!(e.to_string().contains(&tx.to_string()), "{e}");
    assert!(!env.receipt(tx).await.status());
    assert_eq!(
        env.chain.response_on_chain(contract, id).await.unwrap(),
        None
    );
    env.done("a_transaction_that_reverts_when_mined_is_reverted");
}

#[tokio::test]
async fn releases_are_reported_with_who_released() {
    let env = Env::start(0).await;
    let contract = env.requests();
    let owner_b = Env::address(OTHER_CLIENT);
    let nft_a = env.nft(CLIENT).await;
    let nft_b = env.nft(OTHER_CLIENT).await;
    let (id_a, _) = env.submit(CLIENT, nft_a, b"a").await;
    let (id_b, _) = env.submit(OTHER_CLIENT, nft_b, b"b").await;
    env.chain
        .submit_response(contract, id_a, frame_response(id_a, b"answer"))
        .await
        .unwrap();

    // The broker releases A; B's owner releases B itself.
    let tx_a = env.chain.release_allocation(contract, nft_a).await.unwrap();
    let block_a = env.receipt(tx_a).await.block_number.unwrap();
    let receipt_b = BrokerRequests::new(contract, env.wallet(OTHER_CLIENT))
        .releaseOwnAllocation(nft_b)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt_b.status());
    let block_b = receipt_b.block_number.unwrap();
    let latest = env.latest().await;

    let expected = vec![
        Released {
            request_id: id_a,
            nft: nft_a,
            by: env.chain.operator(),
            block: block_a,
            transaction: Some(tx_a),
        },
        Released {
            request_id: id_b,
            nft: nft_b,
            by: owner_b,
            block: block_b,
            transaction: Some(receipt_b.transaction_hash),
        },
    ];
    assert_eq!(
        env.chain
            .released_events(contract, 0, latest)
            .await
            .unwrap(),
        expected
    );
    // Both ends inclusive.
    assert_eq!(
        env.chain
            .released_events(contract, block_a, block_a)
            .await
            .unwrap(),
        expected[..1]
    );
    assert_eq!(
        env.chain
            .released_events(contract, block_b, block_b)
            .await
            .unwrap(),
        expected[1..]
    );
    assert!(
        env.chain
            .released_events(contract, block_b + 1, latest)
            .await
            .unwrap()
            .is_empty()
    );
    // Beyond the chain's head: the node's refusal, to retry once it exists.
    assert_transient(
        env.chain
            .released_events(contract, latest + 1, latest + 5)
            .await,
        &format!(
            "AllocationReleased logs of {contract} in blocks {}..={}",
            latest + 1,
            latest + 5
        ),
    );
    assert!(
        env.chain
            .released_events(contract, 5, 4)
            .await
            .unwrap()
            .is_empty()
    );
    // One block per eth_getLogs call: the same list.
    let chunked = Chain::connect_with(
        &onchain(&env.dev.rpc_url, env.dev.chain_id, contract, 0),
        env.dev.operator.clone(),
        ChainOptions {
            log_range: 1,
            ..quick()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        chunked.released_events(contract, 0, latest).await.unwrap(),
        expected
    );

    // Both requests ended; nothing left to release.
    let at = env.chain.safe_block().await.unwrap();
    for (id, nft) in [(id_a, nft_a), (id_b, nft_b)] {
        assert_eq!(
            env.chain.request(contract, id, &at).await.unwrap().status,
            RequestStatus::Expired
        );
        assert_eq!(
            env.chain
                .current_request_id(contract, nft, &at)
                .await
                .unwrap(),
            0
        );
    }
    // A released answer is still an answer: never send it again.
    assert_eq!(
        env.chain.response_on_chain(contract, id_a).await.unwrap(),
        Some(frame_response(id_a, b"answer"))
    );
    assert_reverted(
        env.chain.release_allocation(contract, nft_a).await,
        "No allocation for this NFT contract",
    );
    env.done("releases_are_reported_with_who_released");
}

#[tokio::test]
async fn total_capacity_is_sent_only_when_it_differs() {
    let env = Env::start(0).await;
    let contract = env.requests();
    let read = || async {
        BrokerRequests::new(contract, env.wallet(0))
            .totalCapacity()
            .call()
            .await
            .unwrap()
    };
    assert_eq!(read().await, U256::ZERO);
    assert_eq!(
        env.chain.sync_total_capacity(contract, 0).await.unwrap(),
        None
    );

    let tx = env.chain.sync_total_capacity(contract, 5).await.unwrap();
    assert!(env.receipt(tx.expect("sent")).await.status());
    assert_eq!(read().await, U256::from(5));
    let block = env.latest().await;
    assert_eq!(
        env.chain.sync_total_capacity(contract, 5).await.unwrap(),
        None
    );
    assert_eq!(env.latest().await, block, "nothing sent");

    assert!(
        env.chain
            .sync_total_capacity(contract, 0)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(read().await, U256::ZERO);
    assert_eq!(
        env.chain.sync_total_capacity(contract, 0).await.unwrap(),
        None
    );
    env.done("total_capacity_is_sent_only_when_it_differs");
}

#[tokio::test]
async fn legacy_v1_contracts_are_readable() {
    let env = Env::start(0).await;
    let v1 = *BrokerRequestsV1::deploy(env.wallet(1))
        .await
        .expect("V1 deploys from the operator")
        .address();
    let nft = env.nft(CLIENT).await;
    let receipt = BrokerRequestsV1::new(v1, env.wallet(CLIENT))
        .submitRequest(nft, b"legacy".to_vec().into())
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status());
    let submitted_at = env
        .wallet(0)
        .get_block_by_number(receipt.block_number.unwrap().into())
        .await
        .unwrap()
        .unwrap()
        .header
        .timestamp;

    let at = env.chain.safe_block().await.unwrap();
    assert_eq!(env.chain.request_count(v1, &at).await.unwrap(), 1);
    assert_eq!(
        env.chain.request(v1, 1, &at).await.unwrap(),
        OnchainRequest {
            id: 1,
            requester: Env::address(CLIENT),
            nft_contract: nft,
            encrypted_payload: b"legacy".to_vec(),
            status: RequestStatus::Pending,
            response_payload: Vec::new(),
            submitted_at,
            responded_at: 0,
        }
    );
    assert_eq!(env.chain.current_request_id(v1, nft, &at).await.unwrap(), 1);
    assert_eq!(env.chain.expiration_time(v1, &at).await.unwrap(), DAY);
    assert_reverted(env.chain.request(v1, 2, &at).await, "Invalid request ID");

    // Answering works the same way.
    env.chain
        .submit_response(v1, 1, frame_response(1, b"legacy answer"))
        .await
        .unwrap();
    assert_eq!(
        env.chain.response_on_chain(v1, 1).await.unwrap(),
        Some(frame_response(1, b"legacy answer"))
    );
    let at = env.chain.safe_block().await.unwrap();
    assert_eq!(
        env.chain.request_count(env.requests(), &at).await.unwrap(),
        0,
        "V2 untouched"
    );
    assert_eq!(
        env.chain.request(v1, 1, &at).await.unwrap().status,
        RequestStatus::Approved
    );
    // V1 has no capacity: a clear error, not a hang or a panic.
    assert!(env.chain.sync_total_capacity(v1, 5).await.is_err());
    env.done("legacy_v1_contracts_are_readable");
}

#[tokio::test]
async fn unreachable_endpoints_are_transient_and_quick() {
    let started = Instant::now();
    let requests = Address::repeat_byte(1);

    // Nothing listening.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // With an API key in its path: errors show the origin only.
    let url = format!("http://127.0.0.1:{port}/v3/secret-api-key?token=secret");
    let t = Instant::now();
    let e = assert_transient(
        Chain::connect(&onchain(&url, 31337, requests, 1), anvil_signer(1)).await,
        &format!("eth_chainId: cannot reach the RPC endpoint http://127.0.0.1:{port}: "),
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{e}");
    assert!(!e.to_string().contains("secret"), "{e}");
    eprintln!("unreachable_endpoints_are_transient_and_quick: {e}");

    // Listening, never answering: the timeout.
    let black_hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", black_hole.local_addr().unwrap());
    let t = Instant::now();
    let options = ChainOptions {
        rpc_timeout: Duration::from_millis(300),
        ..ChainOptions::default()
    };
    assert_transient(
        Chain::connect_with(&onchain(&url, 31337, requests, 1), anvil_signer(1), options).await,
        "no answer from",
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );

    // Settings that cannot work.
    for bad in ["ws://127.0.0.1:1", "not a url", "http://"] {
        match Chain::connect(&onchain(bad, 1, requests, 1), anvil_signer(1)).await {
            Err(ChainError::Config(reason)) => {
                assert!(reason.contains("invalid RPC URL"), "{reason}")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    eprintln!(
        "unreachable_endpoints_are_transient_and_quick: {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
}

#[tokio::test]
async fn an_outage_mid_session_is_transient() {
    let env = Env::start(0).await;
    let contract = env.requests();
    let nft = env.nft(CLIENT).await;
    let (id, _) = env.submit(CLIENT, nft, b"payload").await;
    let at = env.chain.safe_block().await.unwrap();
    let Env {
        dev,
        chain,
        started,
    } = env;
    drop(dev); // kills anvil

    let t = Instant::now();
    assert_transient(chain.safe_block().await, "cannot reach");
    assert_transient(chain.request_count(contract, &at).await, "cannot reach");
    assert_transient(chain.request(contract, id, &at).await, "cannot reach");
    assert_transient(
        chain.current_request_id(contract, nft, &at).await,
        "cannot reach",
    );
    assert_transient(chain.expiration_time(contract, &at).await, "cannot reach");
    assert_transient(chain.response_on_chain(contract, id).await, "cannot reach");
    assert_transient(
        chain.verify_nft(nft, Env::address(CLIENT)).await,
        "cannot reach",
    );
    assert_transient(
        chain
            .submit_response(contract, id, frame_response(id, b"x"))
            .await,
        "cannot reach",
    );
    assert_transient(
        chain.release_allocation(contract, nft).await,
        "cannot reach",
    );
    assert_transient(chain.sync_total_capacity(contract, 3).await, "cannot reach");
    assert_transient(
        chain.released_events(contract, 0, 100).await,
        "cannot reach",
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    eprintln!(
        "an_outage_mid_session_is_transient: {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
}

#[tokio::test]
async fn a_stalled_endpoint_times_out() {
    let env = Env::start(0).await;
    let contract = env.requests();
    let nft = env.nft(CLIENT).await;
    let (id, _) = env.submit(CLIENT, nft, b"payload").await;
    let relay = Relay::start(Ipv4Addr::LOCALHOST.into(), &env.dev.rpc_url).unwrap();
    let timeout = Duration::from_millis(250);
    let chain = Chain::connect_with(
        &onchain(&relay.url, env.dev.chain_id, contract, 0),
        env.dev.operator.clone(),
        ChainOptions {
            rpc_timeout: timeout,
            ..quick()
        },
    )
    .await
    .unwrap();
    let at = chain.safe_block().await.unwrap();
    assert_eq!(chain.request_count(contract, &at).await.unwrap(), 1);

    relay.stall();
    // Concurrently: each one times out on its own.
    let t = Instant::now();
    let (block, request, response, nft_check) = tokio::join!(
        chain.safe_block(),
        chain.request(contract, id, &at),
        chain.submit_response(contract, id, frame_response(id, b"x")),
        chain.verify_nft(nft, Env::address(CLIENT)),
    );
    let took = t.elapsed();
    for e in [
        assert_transient(block, "eth_blockNumber: no answer from"),
        assert_transient(request, &format!("getRequest({id}) on {contract}")),
        assert_transient(response, &format!("submitResponse({id}) on {contract}")),
        assert_transient(nft_check, "no answer from"),
    ] {
        assert!(e.to_string().contains("no answer from"), "{e}");
        eprintln!("a_stalled_endpoint_times_out: {e}");
    }
    assert!(took >= timeout && took < timeout * 4, "{took:?}");
    // Nothing was sent while stalled.
    assert_eq!(
        env.chain.response_on_chain(contract, id).await.unwrap(),
        None
    );
    env.done("a_stalled_endpoint_times_out");
}

/// Code that answers every call with `blob` (PUSH2 len, DUP1, PUSH1 12,
/// PUSH1 0, CODECOPY, PUSH1 0, RETURN, then the blob).
fn answering(blob: &[u8]) -> Vec<u8> {
    let len = u16::try_from(blob.len()).unwrap().to_be_bytes();
    let mut code = vec![
        0x61, len[0], len[1], 0x80, 0x60, 12, 0x60, 0, 0x39, 0x60, 0, 0xf3,
    ];
    code.extend_from_slice(blob);
    code
}

#[tokio::test]
async fn odd_chain_data_is_an_error_not_a_panic() {
    let env = Env::start(0).await;
    let chain = &env.chain;
    let at = chain.safe_block().await.unwrap();
    let set_code = |address: Address, code: Vec<u8>| {
        let env = &env;
        async move {
            env.anvil(
                "anvil_setCode",
                json!([address, alloy::hex::encode_prefixed(code)]),
            )
            .await;
        }
    };

    // A word above u64::MAX for counts and ids.
    let huge = Address::repeat_byte(0xa1);
    set_code(
        huge,
        answering(&(U256::from(u64::MAX) + U256::from(1)).to_be_bytes::<32>()),
    )
    .await;
    assert_bad_data(
        chain.request_count(huge, &at).await,
        "does not fit in 64 bits",
    );
    assert_bad_data(
        chain.current_request_id(huge, Address::ZERO, &at).await,
        "does not fit in 64 bits",
    );
    assert_bad_data(
        chain.expiration_time(huge, &at).await,
        "does not fit in 64 bits",
    );

    // getRequest answers: a sane one, then an unknown status, then a huge id.
    let sane = BrokerRequests::getRequestCall::abi_encode_returns(&BrokerRequests::Request {
        id: U256::from(1),
        requester: Address::repeat_byte(2),
        nftContract: Address::repeat_byte(3),
        encryptedPayload: b"p".to_vec().into(),
        status: 1,
        responsePayload: b"r".to_vec().into(),
        submittedAt: U256::from(10),
        respondedAt: U256::from(20),
    });
    let fake = Address::repeat_byte(0xa2);
    set_code(fake, answering(&sane)).await;
    let request = chain.request(fake, 1, &at).await.unwrap();
    assert_eq!(request.status, RequestStatus::Approved);
    assert_eq!(
        chain.response_on_chain(fake, 1).await.unwrap(),
        Some(b"r".to_vec())
    );
    // The tuple starts after its offset word; status is its fifth word.
    let mut odd = sane.clone();
    odd[32 + 4 * 32 + 31] = 7;
    set_code(fake, answering(&odd)).await;
    assert_bad_data(
        chain.request(fake, 1, &at).await,
        "status 7 is not a RequestStatus",
    );
    let mut odd = sane.clone();
    odd[32 + 23] = 1; // id = 2^64 + 1
    set_code(fake, answering(&odd)).await;
    assert_bad_data(chain.request(fake, 1, &at).await, "does not fit in 64 bits");
    // Garbage and nothing.
    set_code(fake, answering(&[0xff; 7])).await;
    assert_bad_data(chain.request(fake, 1, &at).await, "getRequest(1)");
    assert_bad_data(
        chain.request_count(Env::address(OTHER_CLIENT), &at).await,
        "no answer data",
    );

    // The wrong chain.
    match Chain::connect(
        &onchain(&env.dev.rpc_url, 1, env.requests(), 1),
        env.dev.operator.clone(),
    )
    .await
    {
        Err(
            e @ ChainError::WrongChain {
                expected: 1,
                actual: 31337,
                ..
            },
        ) => {
            assert!(e.to_string().starts_with("wrong chain: "), "{e}")
        }
        other => panic!("{other:?}"),
    }
    env.done("odd_chain_data_is_an_error_not_a_panic");
}

#[tokio::test]
async fn the_client_accounts_are_anvils_funded_ones() {
    let env = Env::start(0).await;
    for (index, address) in [
        "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
        "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(
            Env::address(index),
            address.parse::<Address>().unwrap(),
            "account {index}"
        );
        assert!(
            !env.wallet(0)
                .get_balance(Env::address(index))
                .await
                .unwrap()
                .is_zero()
        );
    }
    env.done("the_client_accounts_are_anvils_funded_ones");
}

#[tokio::test]
async fn a_sent_transaction_is_followed_up_at_its_nonce() {
    use broker_userspace::chain::{Fees, TxState, response_call};
    let env = Env::start(0).await;
    let contract = env.requests();
    let nft = env.nft(CLIENT).await;
    let (id, _) = env.submit(CLIENT, nft, b"payload").await;
    let call = response_call(contract, id);
    env.anvil("evm_setAutomine", json!([false])).await;

    // Signed here: the hash is known before the node sees it.
    let prepared = env
        .chain
        .prepare_response(contract, id, frame_response(id, b"first"), false)
        .await
        .unwrap();
    let nonce = env.chain.pending_nonce(&call).await.unwrap();
    let first = env.chain.sign(&call, &prepared, nonce).await.unwrap();
    let state = env.chain.tx_state(&call, first.hash, nonce).await.unwrap();
    assert!(matches!(state, TxState::Dropped), "not sent yet: {state:?}");
    env.chain.broadcast(&call, &first).await.unwrap();
    // A second broadcast of the same transaction is no error.
    env.chain.broadcast(&call, &first).await.unwrap();
    assert_eq!(pool_size(&env).await, 1);
    let state = env.chain.tx_state(&call, first.hash, nonce).await.unwrap();
    assert!(matches!(state, TxState::Pending), "{state:?}");

    // Dropped by the node, and sent again; then, pending, replaced at the
    // same nonce with higher fees (simulated at the latest block, where the
    // request is unanswered: the pending block has it answered).
    env.anvil("anvil_dropAllTransactions", json!([])).await;
    let state = env.chain.tx_state(&call, first.hash, nonce).await.unwrap();
    assert!(matches!(state, TxState::Dropped), "{state:?}");
    env.chain.broadcast(&call, &first).await.unwrap();
    let replacement = env
        .chain
        .prepare_response(contract, id, frame_response(id, b"second"), true)
        .await
        .unwrap();
    let fees = first.cost.fees.replacing(replacement.cost.fees);
    assert!(fees.max_fee_per_gas() > first.cost.fees.max_fee_per_gas());
    let replacement = replacement.with_fees(fees);
    let second = env.chain.sign(&call, &replacement, nonce).await.unwrap();
    assert_ne!(second.hash, first.hash);
    // The node takes it in place of the pending first one.
    env.chain.broadcast(&call, &second).await.unwrap();
    assert_eq!(pool_size(&env).await, 1);
    // The first is unknown now, but not dropped: another transaction waits
    // at its nonce, and replacing the first would displace it.
    let state = env.chain.tx_state(&call, first.hash, nonce).await.unwrap();
    assert!(matches!(state, TxState::Pending), "{state:?}");
    env.anvil("evm_mine", json!([])).await;
    env.anvil("evm_setAutomine", json!([true])).await;

    let state = env.chain.tx_state(&call, second.hash, nonce).await.unwrap();
    let TxState::Mined(receipt) = state else {
        panic!("{state:?}")
    };
    assert!(receipt.status());
    let state = env.chain.tx_state(&call, first.hash, nonce).await.unwrap();
    assert!(matches!(state, TxState::NonceTaken), "{state:?}");
    assert_eq!(
        env.chain.response_on_chain(contract, id).await.unwrap(),
        Some(frame_response(id, b"second"))
    );
    // Legacy fees are bumped the same way.
    let legacy = Fees::Legacy { gas_price: 8 };
    assert_eq!(
        legacy.replacing(Fees::Legacy { gas_price: 1 }),
        Fees::Legacy { gas_price: 10 }
    );
}

/// `confirm = "safe"` / `"finalized"` read the node's tagged blocks, and a
/// block hash is read as the reorg checks need it (None past the head).
#[tokio::test]
async fn block_tags_are_read_at_and_block_hashes_compared() {
    let env = Env::start(0).await;
    let nft = env.nft(CLIENT).await;
    env.submit(CLIENT, nft, b"payload").await;
    let latest = env.chain.latest_block().await.unwrap();
    assert_eq!(
        env.chain.block_hash(latest.number).await.unwrap(),
        Some(latest.hash)
    );
    assert_eq!(
        env.chain.block_hash(latest.number + 100).await.unwrap(),
        None
    );
    for confirm in [Confirm::Safe, Confirm::Finalized] {
        let mut cfg = onchain(&env.dev.rpc_url, env.dev.chain_id, env.requests(), 0);
        cfg.confirm = confirm;
        let chain = Chain::connect_with(&cfg, env.dev.operator.clone(), quick())
            .await
            .unwrap_or_else(|e| panic!("{confirm}: {e}"));
        let at = chain.safe_block().await.unwrap();
        // anvil's tagged blocks trail its head by two epochs of slots.
        assert!(at.number <= latest.number, "{confirm}: {at:?}");
        assert_eq!(chain.block_hash(at.number).await.unwrap(), Some(at.hash));
    }
    env.done("block_tags_are_read_at_and_block_hashes_compared");
}

/// A node that does not know the tag (some providers, older nodes) is a
/// configuration error at connect, naming the key and what to set instead:
/// the daemon stops rather than read at another block than configured.
#[tokio::test]
async fn a_node_without_the_block_tag_is_refused_at_connect() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || tagless_node(stream));
        }
    });
    for (confirm, tag) in [(Confirm::Safe, "safe"), (Confirm::Finalized, "finalized")] {
        let mut cfg = onchain(&url, 31337, Address::repeat_byte(1), 0);
        cfg.confirm = confirm;
        let e = Chain::connect_with(&cfg, anvil_signer(1), quick())
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, ChainError::Config(_)), "{e:?}");
        assert!(
            text.contains(&format!("[onchain] confirm = \"{tag}\"")),
            "{text}"
        );
        assert!(text.contains("does not know the block tag"), "{text}");
        assert!(text.contains("set confirm to a number of blocks"), "{text}");
    }
    // The same node with a number of blocks: connects.
    let cfg = onchain(&url, 31337, Address::repeat_byte(1), 1);
    Chain::connect_with(&cfg, anvil_signer(1), quick())
        .await
        .expect("no tag needed");
}

/// Answers `eth_chainId` (31337) and refuses every other call as a node
/// without the block tags does (-32602), over HTTP/1.1 with keep-alive.
fn tagless_node(stream: std::net::TcpStream) {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let call: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let answer = match call["method"].as_str() {
            Some("eth_chainId") => json!({"jsonrpc": "2.0", "id": call["id"], "result": "0x7a69"}),
            _ => json!({"jsonrpc": "2.0", "id": call["id"],
                "error": {"code": -32602, "message": "invalid block tag"}}),
        };
        let text = answer.to_string();
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
