//! The whole path, end to end, with nothing stood in for: anvil with the
//! contracts, `blockhost-broker run` with its XDP responder and wireguard-go,
//! `broker-client` on BlockHost servers bringing up wg-quick tunnels, and an
//! internet host behind the provider's router that reaches the servers in
//! their prefixes (see broker-lab's `topology` for the map). Along the way
//! the broker's `/metrics` are scraped, checked with promtool and compared
//! with what happened: requests, allocations, peers, the responder's
//! answers, and gas and balance against the operator's receipts.
//!
//! Needs root (`cargo xtask test`). Each test builds its own lab, named
//! `bbt-<pid>-<n>-…`; dropping it removes everything, also when the test
//! fails (the broker's log is printed then).

use std::time::{Duration, Instant};

use alloy::{
    network::EthereumWallet,
    primitives::U256,
    providers::{Provider as _, ProviderBuilder},
};
use anyhow::{Context as _, bail, ensure};
use broker_contracts::{BrokerRequests, protocol};
use broker_lab::{Lab, lab_test, metrics::Metrics};

fn field(value: &serde_json::Value, key: &str) -> anyhow::Result<String> {
    value[key]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no {key} in {value}"))
}

/// Whether the broker has a WireGuard peer with public key `key`.
fn broker_has_peer(lab: &Lab, key: &str) -> anyhow::Result<bool> {
    Ok(lab.peers()?.iter().any(|(peer, _)| peer == key))
}

/// The chain before the broker started: what its counters start from.
struct Start {
    block: u64,
    balance: U256,
}

impl Start {
    async fn read(lab: &Lab) -> anyhow::Result<Start> {
        let provider = lab.wallet(0)?;
        Ok(Start {
            block: provider.get_block_number().await?,
            balance: provider.get_balance(lab.chain.operator.address()).await?,
        })
    }
}

/// What the broker's figures must be at a point of the scenario.
struct Expected {
    answered: u128,
    used: u128,
    active_peers: u128,
}

/// Scrapes the broker's /metrics (each scrape promtool-checked) until they
/// show `expected` (the daemon publishes its figures after each poll), then
/// checks them against the chain: the gas spent is the sum over the
/// operator's receipts since `start`, the balance is the chain's, and both
/// agree with the balance at `start`.
async fn metrics_show(lab: &Lab, expected: Expected, start: &Start) -> anyhow::Result<Metrics> {
    let requests = lab.chain.requests.to_string();
    let outcome = |o| [("contract", requests.as_str()), ("outcome", o)];
    let peers = |state| [("state", state)];
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let m = lab.metrics().await?;
        let shown = (
            m.broker("requests_total", &outcome("answered"))?,
            m.broker("allocations", &[("state", "used")])?,
            m.broker("wireguard_peers", &peers("active"))?,
            // Present once a poll read the chain.
            m.get("blockhost_broker_chain_lag_blocks", &[]).is_some(),
        );
        let wanted = (expected.answered, expected.used, expected.active_peers);
        if shown == (wanted.0, wanted.1, wanted.2, true) {
            break m;
        }
        ensure!(
            Instant::now() < deadline,
            "the metrics do not show {} answered, {} used, {} active:\n{}",
            expected.answered,
            expected.used,
            expected.active_peers,
            m.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let m = |name: &str, labels: &[(&str, &str)]| metrics.broker(name, labels);
    let checked: anyhow::Result<()> = async {
        ensure!(m("responses_total", &[])? == expected.answered);
        ensure!(m("requests_total", &outcome("rejected"))? == 0);
        ensure!(m("requests_total", &outcome("skipped"))? == 0);
        let total = lab.config.broker.pool.slots() - 1;
        ensure!(m("allocations", &[("state", "free")])? == total - expected.used);
        ensure!(m("wireguard_peers", &peers("idle"))? == 0);
        ensure!(
            m("wireguard_peers", &peers("never_connected"))?
                == expected.used - expected.active_peers
        );

        let gas = m("gas_spent_wei_total", &[])?;
        let receipts = lab.operator_gas_since(start.block).await?;
        ensure!(
            gas == receipts,
            "gas spent: {gas} wei in the metrics, {receipts} in the operator's receipts"
        );
        ensure!(expected.answered == 0 || gas > 0, "answers cost no gas");
        let balance = U256::from(m("operator_balance_wei", &[])?);
        let on_chain = lab
            .wallet(0)?
            .get_balance(lab.chain.operator.address())
            .await?;
        ensure!(
            balance == on_chain && balance == start.balance - U256::from(gas),
            "operator balance: {balance} in the metrics, {on_chain} on chain, {} - {gas} gas",
            start.balance
        );
        let polled = m("last_poll_success_timestamp_seconds", &[])?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        ensure!(
            u128::from(now).abs_diff(polled) <= 30,
            "the last poll succeeded at {polled}, now is {now}"
        );
        // No confirmations: at most the transactions of one poll behind.
        let lag = m("chain_lag_blocks", &[])?;
        ensure!(lag <= 3, "the daemon is {lag} blocks behind");
        let result = |r| [("result", r)];
        ensure!(m("ndp_solicitations_total", &result("invalid"))? == 0);
        ensure!(m("ndp_solicitations_total", &result("failed"))? == 0);
        Ok(())
    }
    .await;
    checked.with_context(|| format!("in:\n{}", metrics.text()))?;
    Ok(metrics)
}

/// The responder's answered solicitations.
fn ndp_answered(metrics: &Metrics) -> anyhow::Result<u128> {
    metrics.broker("ndp_solicitations_total", &[("result", "answered")])
}

#[test]
fn a_server_gets_a_prefix_reaches_the_internet_renews_and_survives_a_stale_answer() {
    lab_test("story", async |lab: &mut Lab| {
        lab.start_broker()?;
        let prefix = lab.connect(1)?;
        lab.check_traffic(1)?;
        // The operator's view through the control socket, with the lab's
        // /48 in /120s: counts beyond u64 arrive whole.
        let pool = lab.operator_status()?.pool;
        // 2^72 slots, the first the broker's own.
        ensure!(pool.total == (1 << 72) - 1 && pool.used == 1, "{pool:?}");
        ensure!(lab.list_allocations(None)?.len() == 1);
        let files = lab.allocation(1)?;
        let contract: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
            lab.servers[0].config_dir.join("broker-contract.json"),
        )?)?;
        ensure!(
            field(&contract, "requests_contract")?
                .eq_ignore_ascii_case(&lab.chain.requests.to_string()),
            "broker-contract.json names another contract: {contract}"
        );
        ensure!(
            field(&contract, "broker_pubkey")? == hex::encode(lab.chain.ecies_public),
            "{contract}"
        );

        // Renewal: a new WireGuard key, the same prefix, the tunnel back.
        let old_key = field(&files, "wg_public_key")?;
        lab.client(1, &["renew"])?;
        let renewed = lab.allocation(1)?;
        let new_key = field(&renewed, "wg_public_key")?;
        ensure!(
            lab.prefix(1)? == prefix,
            "renew changed the prefix: {renewed}"
        );
        ensure!(new_key != old_key, "renew kept the WireGuard key");
        ensure!(
            broker_has_peer(lab, &new_key)? && !broker_has_peer(lab, &old_key)?,
            "the broker's peers after renew: {:?}",
            lab.peers()?
        );
        lab.check_traffic(1)?;

        // A stale answer (one framed for another request, as after a
        // reinstall): the client notices and asks again by itself; the
        // broker, back up, answers the new request with the same prefix.
        lab.stop_broker()?;
        let requests = BrokerRequests::new(
            lab.chain.requests,
            ProviderBuilder::new()
                .wallet(EthereumWallet::from(lab.chain.operator.clone()))
                .connect_http(lab.chain.rpc_url.parse()?),
        );
        let count = || async { anyhow::Ok(requests.getRequestCount().call().await?.to::<u64>()) };
        let before = count().await?;
        let nft = lab.servers[0].nft.to_string();
        let args = ["request", "--nft-contract", &nft, "--force"];
        let client = lab.spawn_client(1, &args)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while count().await? == before {
            ensure!(Instant::now() < deadline, "the client submitted no request");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let stale_id = before + 1;
        let junk = protocol::encrypt(&lab.chain.ecies_public, b"not for you")?;
        let receipt = requests
            .submitResponse(
                U256::from(stale_id),
                protocol::frame_response(stale_id + 7, &junk).into(),
            )
            .send()
            .await?
            .get_receipt()
            .await?;
        ensure!(receipt.status(), "the stale answer reverted");
        while count().await? == stale_id {
            ensure!(
                Instant::now() < deadline,
                "the client did not ask again after a stale answer"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        lab.start_broker()?;
        let out = lab.finish_client(1, &args, client)?;
        ensure!(
            out.stderr.contains("stale answer"),
            "the client did not report the stale answer:\n{}",
            out.stderr
        );
        let again = lab.allocation(1)?;
        ensure!(
            again["request_id"].as_u64() == Some(stale_id + 1),
            "the allocation is not the new request's: {again}"
        );
        ensure!(
            lab.prefix(1)? == prefix,
            "the re-request changed the prefix: {again}"
        );
        lab.client(1, &["install"])?;
        lab.check_traffic(1)?;

        lab.stop_broker()?;
        Ok(())
    });
}

#[test]
fn a_released_prefix_goes_to_the_next_server_and_two_servers_work_at_once() {
    lab_test("two", async |lab: &mut Lab| {
        let start = Start::read(lab).await?;
        lab.start_broker()?;
        // The broker's /metrics along the way: see `metrics_show`.
        let expect = |answered, used, active_peers| Expected {
            answered,
            used,
            active_peers,
        };
        let before = metrics_show(lab, expect(0, 0, 0), &start).await?;
        ensure!(ndp_answered(&before)? == 0, "{}", before.text());
        let first = lab.connect(1)?;
        metrics_show(lab, expect(1, 1, 1), &start).await?;
        lab.client(1, &["release", "--cleanup-wg"])?;
        ensure!(
            !lab.servers[0]
                .config_dir
                .join("broker-allocation.json")
                .exists(),
            "release left broker-allocation.json"
        );
        let interface = &lab.servers[0].interface;
        ensure!(
            lab.net.servers[0].ip(&["link", "show", interface]).is_err(),
            "release --cleanup-wg left the tunnel {interface} up"
        );
        lab.broker()?.wait_log(
            &["released:", &first.to_string()],
            1,
            Duration::from_secs(30),
        )?;
        let peers = lab.peers()?;
        ensure!(peers.is_empty(), "peers after the release: {peers:?}");
        let released = metrics_show(lab, expect(1, 0, 0), &start).await?;

        let second = lab.connect(2)?;
        ensure!(
            second == first,
            "the released {first} was not reused: server2 got {second}"
        );
        lab.check_traffic(2)?;
        // The router resolved server2's address: the responder answered.
        let reached = metrics_show(lab, expect(2, 1, 1), &start).await?;
        ensure!(
            ndp_answered(&reached)? > ndp_answered(&released)?,
            "no solicitation answered for the ping:\n{}",
            reached.text()
        );

        let third = lab.connect(1)?;
        if third == second {
            bail!("server1 got server2's prefix {second}");
        }
        lab.check_traffic(1)?;
        lab.check_traffic(2)?;
        metrics_show(lab, expect(3, 2, 2), &start).await?;
        lab.stop_broker()?;
        Ok(())
    });
}
