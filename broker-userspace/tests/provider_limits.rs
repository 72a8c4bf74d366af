//! The daemon against an RPC endpoint with a hosted provider's limits on
//! `eth_getLogs` (broker-lab's `LimitedRpc`): it still sees the NFT owners'
//! releases by splitting what the node refuses, and an event scan that
//! fails for good never stops the rest of its upkeep.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use broker_lab::{
    Lab, lab_test,
    requests::{CLIENT, OTHER_CLIENT},
    rpc_limits::{LimitedRpc, Limits},
    topology::CHAIN_ADDR,
};
use serde_json::json;

/// Puts the broker behind an endpoint with `limits`.
fn limited(lab: &mut Lab, limits: Limits) -> anyhow::Result<LimitedRpc> {
    let rpc = LimitedRpc::start(CHAIN_ADDR.parse()?, &lab.chain.rpc_url, limits)?;
    lab.config.onchain.rpc_url = rpc.url.clone();
    Ok(rpc)
}

#[test]
fn owner_releases_are_seen_through_a_provider_that_caps_ranges_and_results() {
    lab_test("caps", async |lab| {
        // The daemon asks for 1,000 blocks a call; this endpoint allows 4,
        // and one log per answer.
        let rpc = limited(
            lab,
            Limits {
                max_blocks: 4,
                max_results: 1,
            },
        )?;
        lab.start_broker()?;
        let first = lab.serve(CLIENT).await?;
        let second = lab.serve(OTHER_CLIENT).await?;
        // While the broker is down, both owners release (a block each) and
        // the chain moves on: its next scan spans more blocks than the
        // endpoint allows, then more results.
        lab.stop_broker()?;
        lab.release_own(CLIENT, first.nft).await?;
        lab.release_own(OTHER_CLIENT, second.nft).await?;
        lab.anvil("anvil_mine", json!(["0xa"])).await?;
        lab.start_broker()?;
        lab.broker()?.wait_log(
            &["released by the NFT owner on chain"],
            2,
            Duration::from_secs(30),
        )?;
        ensure!(lab.routes()?.is_empty(), "routes left: {:?}", lab.routes()?);
        ensure!(rpc.refused() > 0, "the endpoint never refused a call");
        // Requests are answered as before.
        let third = lab.serve(CLIENT).await?;
        ensure!(lab.routes()? == [third.prefix]);
        Ok(())
    });
}

#[test]
fn an_event_scan_that_keeps_failing_does_not_stop_the_rest_of_the_upkeep() {
    lab_test("upkeep", async |lab| {
        // No answer with a log in it is ever allowed: once an owner has
        // released, the scan fails at every poll.
        let rpc = limited(
            lab,
            Limits {
                max_blocks: 1000,
                max_results: 0,
            },
        )?;
        let timeout = 10;
        lab.config.wireguard.handshake_timeout_secs = timeout;
        lab.start_broker()?;
        let owner = lab.serve(CLIENT).await?;
        lab.release_own(CLIENT, owner.nft).await?;
        // This client never brings its tunnel up: the handshake check must
        // still release it, and the owed release still go on chain.
        let silent = lab.serve(OTHER_CLIENT).await?;
        let operator = lab.chain.operator.address();
        let deadline = Instant::now() + Duration::from_secs(timeout + 30);
        loop {
            let events = lab.released_events().await?;
            if events.contains(&(silent.id, silent.nft, operator)) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the silent tunnel was not released on chain: {events:?}\n{}",
                lab.broker_log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        ensure!(rpc.refused() > 0, "the endpoint never refused a call");
        // The failures show where an operator looks: the metrics.
        let metrics = lab.metrics().await?;
        let errors: u128 = [
            "transient",
            "reverted",
            "bad_data",
            "config",
            "wrong_chain",
            "other",
        ]
        .into_iter()
        .map(|kind| metrics.broker("chain_errors_total", &[("kind", kind)]))
        .sum::<anyhow::Result<u128>>()?;
        ensure!(errors > 0, "no failed upkeep step was counted");
        lab.broker()?
            .wait_log(
                &["watching for releases by NFT owners (again next poll)"],
                1,
                Duration::from_secs(5),
            )
            .context("the failing scan is reported")?;
        Ok(())
    });
}
