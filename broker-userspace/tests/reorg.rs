//! Reorgs, end to end: the real daemon in broker-lab's namespaces against
//! anvil, whose `anvil_reorg(depth, [[transaction, block offset], …])`
//! replaces the newest `depth` blocks with as many new ones holding the
//! transactions given (none: empty blocks). The lab reads at the latest
//! block (`confirm = 0`), so every reorg here reaches past the block read.
//!
//! Needs root (`cargo xtask test`); broker-lab's guards clean up.

use std::{collections::BTreeMap, time::Duration};

use alloy::{primitives::U256, providers::Provider as _};
use broker_contracts::BrokerRequests;
use broker_lab::{
    Lab, lab_test,
    requests::{APPROVED, CLIENT, Client, OTHER_CLIENT, PENDING, Served, count},
};
use broker_userspace::{ipam::Pool, store::Store};
use ipnet::Ipv6Net;
use serde_json::json;

const UPSTREAM: &str = "2001:db8:100::/64";
const ALLOCATION_SIZE: u8 = 120;

fn secs(limit: u64) -> Duration {
    Duration::from_secs(limit)
}

fn reorg_test(tag: &str, body: impl AsyncFnOnce(&mut Lab) -> anyhow::Result<()> + Send) {
    lab_test(tag, async |lab: &mut Lab| {
        lab.config.broker.pool = Pool::new(UPSTREAM.parse()?, ALLOCATION_SIZE)?;
        lab.start_broker()?;
        lab.broker()?
            .wait_log(&["set totalCapacity on chain"], 1, secs(10))?;
        body(lab).await
    });
}

/// Two polls: the daemon has recorded the head after what it did.
async fn two_polls() {
    tokio::time::sleep(secs(3)).await;
}

/// With the daemon stopped: [`Lab::check_consistent`]; the allocations'
/// prefixes, sorted.
fn kernel_matches_database(lab: &mut Lab) -> anyhow::Result<Vec<Ipv6Net>> {
    let mut prefixes: Vec<Ipv6Net> = lab.check_consistent()?.iter().map(|a| a.prefix).collect();
    prefixes.sort();
    Ok(prefixes)
}

#[test]
fn a_reorg_that_drops_an_answered_request_releases_its_allocation_and_never_answers_it() {
    reorg_test("rdrop", async |lab: &mut Lab| {
        let before = lab.block_number().await?;
        let Served { id, prefix, .. } = lab.serve(CLIENT).await?;
        assert_eq!(lab.routes()?, [prefix]);
        assert_eq!(lab.ndp_prefixes()?, [prefix]);
        two_polls().await;

        // The NFT, the request and the answer go; the chain is as long.
        lab.reorg_after(before, Vec::new()).await?;
        let on_chain = BrokerRequests::new(lab.chain.requests, lab.wallet(0)?)
            .getRequestCount()
            .call()
            .await?;
        assert_eq!(on_chain, U256::ZERO, "the request is gone from the chain");
        // What the kernel holds, not the log, says it: without the check
        // the allocation stays for good.
        let deadline = std::time::Instant::now() + secs(20);
        while !lab.routes()?.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the allocation of the dropped request stays:\n{}",
                lab.broker()?.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(lab.peers()?, [], "the peer stays");
        assert_eq!(lab.routes()?, [], "the route stays");
        assert_eq!(lab.ndp_prefixes()?, [], "the NDP map entry stays");
        two_polls().await;
        let log = lab.broker()?.log();
        assert!(log.contains("reorg: block"), "{log}");
        assert_eq!(
            log.matches("reorg: allocation released").count(),
            1,
            "{log}"
        );
        let metrics = lab.metrics().await?;
        assert_eq!(metrics.broker("reorg_releases_total", &[])?, 1, "{log}");
        assert!(metrics.broker("reorgs_total", &[])? >= 1, "{log}");

        // A new request takes the id: it is answered, once, as a new one.
        let Served { id: again, .. } = lab.serve(OTHER_CLIENT).await?;
        assert_eq!(again, id, "ids restart where the reorg left them");
        two_polls().await;
        lab.stop_broker()?;
        let prefixes = kernel_matches_database(lab)?;
        assert_eq!(prefixes.len(), 1, "{prefixes:?}");
        let db = Store::open(&lab.config.database.path, lab.config.broker.pool)?;
        let held = db.allocations()?;
        assert_eq!(held[0].nft, lab.request(id).await?.nftContract);
        drop(db);
        assert_eq!(lab.response_events().await?, BTreeMap::from([(id, 1)]));
        let calls = lab.operator_calls().await?;
        assert_eq!(
            count(&calls, &format!("submitResponse({id})")),
            1,
            "{calls:?}"
        );
        Ok(())
    });
}

#[test]
fn a_reorg_that_reincludes_the_request_without_its_answer_answers_it_once() {
    reorg_test("rback", async |lab: &mut Lab| {
        let nft = lab.nft(CLIENT).await?;
        let before = lab.block_number().await?;
        let client = Client::new(CLIENT);
        let payload = lab.encrypt(&client.payload(nft).to_json())?;
        let id = lab.submit(CLIENT, nft, payload.clone()).await?;
        let answer = lab.wait_answer(id, &client, secs(30)).await?;
        let prefix = lab.check_answer(&answer)?;
        two_polls().await;

        // The request comes back in the new chain, its answer does not.
        let tx = lab.submit_request_tx(CLIENT, nft, &payload);
        lab.reorg_after(before, vec![tx]).await?;
        assert_eq!(lab.status(id).await?, PENDING, "re-included, unanswered");
        let answer = lab.wait_answer(id, &client, secs(30)).await?;
        let log = lab.broker()?.log();
        assert!(
            log.contains("the answer went in a reorg: answering again"),
            "{log}"
        );
        assert_eq!(lab.check_answer(&answer)?, prefix, "the same prefix");
        two_polls().await;
        lab.stop_broker()?;
        assert_eq!(kernel_matches_database(lab)?, [prefix]);
        assert_eq!(lab.status(id).await?, APPROVED);
        assert_eq!(lab.response_events().await?, BTreeMap::from([(id, 1)]));
        let calls = lab.operator_calls().await?;
        assert_eq!(
            count(&calls, &format!("submitResponse({id})")),
            1,
            "{calls:?}"
        );
        Ok(())
    });
}

/// The raw signed transaction that answered request `id`, for a reorg to
/// include again.
async fn answer_tx(lab: &Lab, id: u64) -> anyhow::Result<serde_json::Value> {
    use alloy::{rpc::types::Filter, sol_types::SolEvent as _};
    let provider = lab.wallet(0)?;
    let filter = Filter::new()
        .address(lab.chain.requests)
        .event_signature(BrokerRequests::ResponseSubmitted::SIGNATURE_HASH)
        .from_block(0);
    let logs = provider.get_logs(&filter).await?;
    let log = logs
        .iter()
        .find(|l| {
            BrokerRequests::ResponseSubmitted::decode_log_data(l.data())
                .is_ok_and(|e| e.requestId == U256::from(id))
        })
        .ok_or_else(|| anyhow::anyhow!("no answer to request {id} on chain"))?;
    let hash = log.transaction_hash.expect("a mined log");
    lab.anvil("eth_getRawTransactionByHash", json!([hash]))
        .await
}

#[test]
fn a_reorg_that_reincludes_the_request_and_its_answer_changes_nothing() {
    reorg_test("rboth", async |lab: &mut Lab| {
        let nft = lab.nft(CLIENT).await?;
        let before = lab.block_number().await?;
        let client = Client::new(CLIENT);
        let payload = lab.encrypt(&client.payload(nft).to_json())?;
        let id = lab.submit(CLIENT, nft, payload.clone()).await?;
        let answer = lab.wait_answer(id, &client, secs(30)).await?;
        let prefix = lab.check_answer(&answer)?;
        two_polls().await;

        let request = lab.submit_request_tx(CLIENT, nft, &payload);
        let answered = answer_tx(lab, id).await?;
        lab.reorg_after(before, vec![request, answered]).await?;
        assert_eq!(lab.status(id).await?, APPROVED, "both re-included");
        // Past the polls that notice the reorg and look at the request.
        let deadline = std::time::Instant::now() + secs(20);
        while !lab.broker()?.log().contains("reorg handled") {
            assert!(
                std::time::Instant::now() < deadline,
                "{}",
                lab.broker()?.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        two_polls().await;
        lab.stop_broker()?;
        let log = lab.broker_log();
        assert!(!log.contains("answering again"), "{log}");
        assert!(!log.contains("allocation released"), "{log}");
        assert_eq!(kernel_matches_database(lab)?, [prefix]);
        assert_eq!(lab.response_events().await?, BTreeMap::from([(id, 1)]));
        let calls = lab.operator_calls().await?;
        assert_eq!(
            count(&calls, &format!("submitResponse({id})")),
            1,
            "{calls:?}"
        );
        Ok(())
    });
}

#[test]
fn a_reorg_that_puts_another_request_under_the_id_releases_the_old_answer_and_answers_the_new() {
    reorg_test("rswap", async |lab: &mut Lab| {
        let nft = lab.nft(CLIENT).await?;
        let other_nft = lab.nft(OTHER_CLIENT).await?;
        let before = lab.block_number().await?;
        let client = Client::new(CLIENT);
        let payload = lab.encrypt(&client.payload(nft).to_json())?;
        let id = lab.submit(CLIENT, nft, payload).await?;
        lab.wait_answer(id, &client, secs(30)).await?;
        assert_eq!(lab.peers()?.len(), 1);
        two_polls().await;

        // Another server's request takes the id in the new chain.
        let other = Client::new(OTHER_CLIENT);
        let other_payload = lab.encrypt(&other.payload(other_nft).to_json())?;
        let swapped = lab.submit_request_tx(OTHER_CLIENT, other_nft, &other_payload);
        lab.reorg_after(before, vec![swapped]).await?;
        assert_eq!(lab.request(id).await?.nftContract, other_nft);
        let answer = lab.wait_answer(id, &other, secs(30)).await?;
        let prefix = lab.check_answer(&answer)?;
        two_polls().await;
        lab.stop_broker()?;
        let log = lab.broker_log();
        assert!(log.contains("a reorg replaced its request"), "{log}");
        assert_eq!(kernel_matches_database(lab)?, [prefix]);
        assert_eq!(
            lab.peers()?,
            [(other.wg_public(), prefix.to_string())],
            "only the new request's peer"
        );
        assert_eq!(lab.response_events().await?, BTreeMap::from([(id, 1)]));
        let calls = lab.operator_calls().await?;
        assert_eq!(
            count(&calls, &format!("submitResponse({id})")),
            1,
            "{calls:?}"
        );
        Ok(())
    });
}

/// Killed in the middle of undoing a reorg (its release committed, the
/// kernel not changed yet, the request's record not forgotten): the next
/// start repairs the kernel from the database and the first poll undoes the
/// reorg again, to the end.
#[test]
fn a_daemon_killed_while_undoing_a_reorg_finishes_it_at_the_next_start() {
    reorg_test("rkill", async |lab: &mut Lab| {
        let before = lab.block_number().await?;
        let Served { id, prefix, .. } = lab.serve(CLIENT).await?;
        two_polls().await;
        lab.stop_broker()?;

        lab.reorg_after(before, Vec::new()).await?;
        let crashing = lab.spawn_crashing("after-release=return")?;
        let status = crashing.wait_exit(secs(30))?;
        assert!(
            broker_lab::process::killed_by_sigkill(status),
            "{status}:\n{}",
            crashing.log()
        );
        assert!(
            crashing.log().contains("reorg: block"),
            "{}",
            crashing.log()
        );
        assert_eq!(lab.routes()?, [prefix], "killed before the kernel changed");
        let db = Store::open(&lab.config.database.path, lab.config.broker.pool)?;
        assert_eq!(db.allocations()?, [], "the release committed");
        assert!(
            db.request(lab.chain.requests, id)?.is_some(),
            "not forgotten yet"
        );
        drop(db);

        lab.start_broker()?;
        let deadline = std::time::Instant::now() + secs(20);
        while !lab.broker()?.log().contains("reorg handled") {
            assert!(
                std::time::Instant::now() < deadline,
                "{}",
                lab.broker()?.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(lab.routes()?, [], "the kernel follows the database");
        let Served { id: again, .. } = lab.serve(OTHER_CLIENT).await?;
        assert_eq!(again, id);
        two_polls().await;
        lab.stop_broker()?;
        assert_eq!(kernel_matches_database(lab)?.len(), 1);
        assert_eq!(lab.response_events().await?, BTreeMap::from([(id, 1)]));
        let calls = lab.operator_calls().await?;
        assert_eq!(
            count(&calls, &format!("submitResponse({id})")),
            1,
            "{calls:?}"
        );
        Ok(())
    });
}
