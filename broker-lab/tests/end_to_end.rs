//! The whole path, end to end, with nothing stood in for: anvil with the
//! contracts, `blockhost-broker run` with its XDP responder and wireguard-go,
//! `broker-client` on BlockHost servers bringing up wg-quick tunnels, and an
//! internet host behind the provider's router that reaches the servers in
//! their prefixes (see broker-lab's `topology` for the map).
//!
//! Needs root (`cargo xtask test`). Each test builds its own lab, named
//! `bbt-<pid>-<n>-…`; dropping it removes everything, also when the test
//! fails (the broker's log is printed then).

use std::time::{Duration, Instant};

use alloy::{network::EthereumWallet, primitives::U256, providers::ProviderBuilder};
use anyhow::{Context as _, bail, ensure};
use broker_contracts::{BrokerRequests, protocol};
use broker_lab::{Lab, lab_test};

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

#[test]
fn a_server_gets_a_prefix_reaches_the_internet_renews_and_survives_a_stale_answer() {
    lab_test("story", async |lab: &mut Lab| {
        lab.start_broker()?;
        let prefix = lab.connect(1)?;
        lab.check_traffic(1)?;
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
        lab.start_broker()?;
        let first = lab.connect(1)?;
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

        let second = lab.connect(2)?;
        ensure!(
            second == first,
            "the released {first} was not reused: server2 got {second}"
        );
        lab.check_traffic(2)?;

        let third = lab.connect(1)?;
        if third == second {
            bail!("server1 got server2's prefix {second}");
        }
        lab.check_traffic(1)?;
        lab.check_traffic(2)?;
        lab.stop_broker()?;
        Ok(())
    });
}
