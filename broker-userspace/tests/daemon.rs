//! The daemon end to end: the real `blockhost-broker run` against a real
//! anvil chain, in real network namespaces, with wireguard-go tunnels, a
//! redb file on disk and the XDP responder, its processes stopped with
//! SIGTERM and killed with SIGKILL.
//!
//! Each test builds its own lab (broker-lab's `topology`): the router
//! resolves the broker's prefix on-link with neighbour discovery, the
//! broker runs the daemon, anvil runs in the chain namespace, and server 1's
//! namespace carries the tunnels. The test itself plays the BlockHost
//! servers (anvil accounts 2 and 3, broker-lab's `requests`), submitting
//! requests with the bindings. The crash tests use the daemon's crash
//! points (feature `failpoints`, enabled for the tests by the dev-dependency
//! on this crate): `FAILPOINTS=NAME=return` makes it SIGKILL itself there.
//!
//! Needs root (`cargo xtask test`). Guards remove the namespaces, pins,
//! wireguard-go processes and their sockets even when a test fails, and
//! print the daemon's log then.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use alloy::{
    primitives::{Address, U256},
    sol_types::SolEvent as _,
};
use anyhow::Context as _;
use broker_contracts::{
    BrokerRequests, TestNFT, bindings::legacy_fixture::BrokerRequestsV1, devchain::anvil_signer,
};
use broker_lab::{
    Lab, lab_test,
    process::{killed_by_sigkill, lines_with},
    relay::Relay,
    requests::{
        APPROVED, CLIENT, CLIENT_TX_GAS, Client, EXPIRED, OTHER_CLIENT, PENDING, Served,
        client_address, count, request_id,
    },
    topology::{CHAIN_ADDR, UPSTREAM_IF},
};
use broker_userspace::{
    ipam::Pool,
    ndp::{PinDir, Responder},
    tunnel::ROUTE_PROTOCOL,
};
use ipnet::Ipv6Net;
use serde_json::json;
use wireguard_control::Key;

/// The broker's pool: a /64 of the /48 the router has on-link, in /120s
/// (few enough slots for the contract's capacity to be the exact count).
const UPSTREAM: &str = "2001:db8:100::/64";
const ALLOCATION_SIZE: u8 = 120;
/// The upstream network + 2 (the response's `gateway`).
const GATEWAY: &str = "2001:db8:100::2";
/// The shortest handshake timeout the configuration allows.
const SHORT_HANDSHAKE_TIMEOUT: u64 = 10;

fn net(s: &str) -> Ipv6Net {
    s.parse().unwrap_or_else(|_| panic!("{s} is not a prefix"))
}

fn secs(limit: u64) -> Duration {
    Duration::from_secs(limit)
}

/// A lab whose broker hands out UPSTREAM in /ALLOCATION_SIZE (a test
/// changes the rest of `lab.config` it is about before starting it).
fn daemon_test(tag: &str, body: impl AsyncFnOnce(&mut Lab) -> anyhow::Result<()> + Send) {
    lab_test(tag, async |lab: &mut Lab| {
        lab.config.broker.pool = Pool::new(net(UPSTREAM), ALLOCATION_SIZE)?;
        body(lab).await
    });
}

/// The time of day of a log line, in seconds (tracing's RFC 3339 stamp).
fn log_time(line: &str) -> f64 {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    let time = stamp
        .split_once('T')
        .and_then(|(_, t)| t.strip_suffix('Z'))
        .unwrap_or_else(|| panic!("no timestamp in {line}"));
    time.split(':')
        .map(|part| part.parse::<f64>().expect("a number"))
        .fold(0.0, |acc, part| acc * 60.0 + part)
}

/// The on-chain status of request `id` once it is no longer `status`
/// (polled; an error after `limit`).
async fn wait_status_not(lab: &Lab, id: u64, status: u8, limit: Duration) -> anyhow::Result<u8> {
    let deadline = Instant::now() + limit;
    loop {
        let now = lab.status(id).await?;
        if now != status {
            return Ok(now);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "request {id} still in status {status} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn a_request_is_answered_and_its_tunnel_carries_traffic() {
    daemon_test("ans", async |lab: &mut Lab| {
        lab.start_broker()?;
        // The upstream NIC passes every multicast group: the routers'
        // solicitations go to groups the host never joins, which a NIC
        // filtering by group (virtio-net) would drop before XDP.
        let link = lab.net.broker.ip(&["link", "show", UPSTREAM_IF])?;
        assert!(link.contains("ALLMULTI"), "{link}");
        let Served {
            client,
            nft,
            id,
            answer,
            prefix,
        } = lab.serve(CLIENT).await?;

        assert_eq!(
            lab.peers()?,
            [(client.wg_public(), prefix.to_string())],
            "wg show"
        );
        assert_eq!(lab.routes()?, [prefix]);
        assert_eq!(lab.ndp_status_count()?, 1);
        assert_eq!(lab.ndp_prefixes()?, [prefix]);

        lab.bring_up_tunnel(&client, &answer)?;
        assert!(
            lab.net.servers[0].ping(GATEWAY, 10),
            "the client cannot reach the gateway through its tunnel"
        );
        lab.broker()?.wait_log(&["tunnel up"], 1, secs(15))?;
        // From the provider's side: the router resolves the client's address
        // with the responder's answer and reaches it through the broker.
        let address = client_address(prefix);
        assert!(
            lab.net.router.ping(&address, 5),
            "the router cannot reach {address} through the broker"
        );
        let neigh = lab
            .net
            .router
            .neigh("to-broker", &address)?
            .expect("a neighbour entry");
        let broker_mac = lab.net.broker.mac(UPSTREAM_IF)?;
        assert_eq!(neigh.lladdr, Some(broker_mac), "{neigh:?}");

        lab.stop_broker()?;
        let all = lab.check_consistent()?;
        assert_eq!(all.len(), 1);
        let a = &all[0];
        assert_eq!((a.nft, a.request_id, a.prefix), (nft, id, prefix));
        assert!(a.answered_at.is_some(), "{a:?}");
        assert_eq!(a.handshake_deadline, None, "the handshake was seen: {a:?}");
        assert_eq!(lab.response_events().await?, BTreeMap::from([(id, 1)]));
        Ok(())
    });
}

#[test]
fn a_new_request_of_the_same_nft_rotates_the_key_and_keeps_the_prefix() {
    daemon_test("rot", async |lab: &mut Lab| {
        lab.start_broker()?;
        let Served {
            client: first,
            nft,
            id: id1,
            answer: answer1,
            prefix,
        } = lab.serve(CLIENT).await?;
        lab.bring_up_tunnel(&first, &answer1)?;
        assert!(lab.net.servers[0].ping(GATEWAY, 10));
        lab.broker()?.wait_log(&["tunnel up"], 1, secs(15))?;

        let second = first.rotated();
        let id2 = lab.request_tunnel(&second, nft).await?;
        assert_eq!(lab.status(id1).await?, EXPIRED, "overwritten on chain");
        let answer2 = lab.wait_answer(id2, &second, secs(30)).await?;
        assert_eq!(lab.check_answer(&answer2)?, prefix, "the prefix changed");
        assert_eq!(
            lab.peers()?,
            [(second.wg_public(), prefix.to_string())],
            "the old key's peer must be gone, the new one there"
        );
        assert_eq!(lab.routes()?, [prefix]);
        assert_eq!(lab.ndp_prefixes()?, [prefix]);

        // The client switches keys; the tunnel works with the new one.
        lab.bring_up_tunnel(&second, &answer2)?;
        assert!(
            lab.net.servers[0].ping(GATEWAY, 10),
            "no traffic with the rotated key"
        );
        lab.broker()?.wait_log(&["tunnel up"], 2, secs(15))?;

        lab.stop_broker()?;
        let all = lab.check_consistent()?;
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].request_id, all[0].prefix), (id2, prefix));
        assert_eq!(
            lab.response_events().await?,
            BTreeMap::from([(id1, 1), (id2, 1)])
        );
        Ok(())
    });
}

#[test]
fn invalid_requests_are_never_answered_and_do_not_block_valid_ones() {
    daemon_test("rej", async |lab: &mut Lab| {
        lab.start_broker()?;
        let client = Client::new(CLIENT);

        // 1. Submitted by the NFT's owner, who hands the NFT contract to
        //    someone else in the same block: the requester no longer owns it
        //    when the broker looks.
        let sold = lab.nft(CLIENT).await?;
        let payload = lab.encrypt(&client.payload(sold).to_json())?;
        let wallet = lab.wallet(CLIENT)?;
        lab.anvil("evm_setAutomine", json!([false])).await?;
        let submitted = BrokerRequests::new(lab.chain.requests, &wallet)
            .submitRequest(sold, payload.into())
            .gas(CLIENT_TX_GAS)
            .send()
            .await
            .expect("submitRequest sent");
        let transferred = TestNFT::new(sold, &wallet)
            .transferOwnership(anvil_signer(OTHER_CLIENT).address())
            .gas(CLIENT_TX_GAS)
            .send()
            .await
            .expect("transferOwnership sent");
        lab.anvil("evm_mine", json!([])).await?;
        lab.anvil("evm_setAutomine", json!([true])).await?;
        let receipt = submitted.get_receipt().await.unwrap();
        assert!(receipt.status());
        assert!(transferred.get_receipt().await.unwrap().status());
        let not_owner = request_id(&receipt)?;

        // 2. Not ECIES at all.
        let nft = lab.nft(CLIENT).await?;
        let garbage = lab.submit(CLIENT, nft, vec![0x5a; 200]).await?;

        // 3. A WireGuard key that is not one.
        let nft = lab.nft(CLIENT).await?;
        let mut payload = client.payload(nft);
        payload.wg_pubkey = "bm90IGEga2V5".into();
        let bad_wg = lab
            .submit(CLIENT, nft, lab.encrypt(&payload.to_json())?)
            .await?;

        // 4. A server key that is no curve point.
        let nft = lab.nft(CLIENT).await?;
        let mut payload = client.payload(nft);
        payload.server_pubkey = format!("04{}", "11".repeat(64));
        let bad_server = lab
            .submit(CLIENT, nft, lab.encrypt(&payload.to_json())?)
            .await?;

        // A valid request after them is answered.
        let Served {
            client: valid_client,
            id: valid,
            prefix,
            ..
        } = lab.serve(OTHER_CLIENT).await?;

        // 5. A WireGuard key that another allocation holds.
        let nft = lab.nft(CLIENT).await?;
        let mut payload = client.payload(nft);
        payload.wg_pubkey = valid_client.wg_public();
        let key_in_use = lab
            .submit(CLIENT, nft, lab.encrypt(&payload.to_json())?)
            .await?;
        lab.broker()?
            .wait_log(&["rejected (silently)"], 5, secs(15))?;

        let invalid = [
            (not_owner, "NotOwner"),
            (garbage, "does not decrypt"),
            (bad_wg, "wgPubkey"),
            (bad_server, "serverPubkey"),
            (key_in_use, "belongs to another allocation"),
        ];
        // Expired on chain by the broker at once (markExpired), so none holds
        // capacity for a day (fails without it: they stay pending).
        for (id, reason) in invalid {
            let status = wait_status_not(lab, id, PENDING, secs(20)).await?;
            assert_eq!(status, EXPIRED, "request {id} ({reason})");
        }
        let log = lab.broker()?.log();
        assert!(log.contains("rejected requests expired on chain"), "{log}");
        // Several polls later, each was rejected once, for its reason.
        tokio::time::sleep(secs(4)).await;
        let log = lab.broker()?.log();
        for (id, reason) in invalid {
            let line = lines_with(&log, &["rejected (silently)", &format!(" id={id}")])
                .next()
                .unwrap_or_else(|| panic!("no rejection of request {id} in:\n{log}"));
            assert!(line.contains(reason), "request {id}: {line}");
        }
        assert_eq!(log.matches("rejected (silently)").count(), 5, "{log}");
        assert_eq!(
            lab.peers()?,
            [(valid_client.wg_public(), prefix.to_string())]
        );
        assert_eq!(lab.response_events().await?, BTreeMap::from([(valid, 1)]));

        lab.stop_broker()?;
        assert_eq!(lab.check_consistent()?.len(), 1);
        Ok(())
    });
}

#[test]
fn an_rpc_outage_is_survived() {
    daemon_test("rpc", async |lab: &mut Lab| {
        // The daemon reaches anvil through a relay that can stall.
        let relay = Relay::start(CHAIN_ADDR.parse()?, &lab.chain.rpc_url)?;
        lab.config.onchain.rpc_url = relay.url.clone();
        lab.start_broker()?;
        let nft = lab.nft(CLIENT).await?;
        let client = Client::new(CLIENT);
        // The daemon is through its first polls.
        let first = lab.request_tunnel(&client, nft).await?;
        lab.wait_answer(first, &client, secs(30)).await?;
        // ... and has its receipt (a stall now would hold it in the receipt
        // wait, up to 180 s, rather than fail polls).
        lab.broker()?.wait_log(&["answered"], 1, secs(10))?;

        relay.stall();
        let stalled = Instant::now();
        let nft = lab.nft(OTHER_CLIENT).await?;
        let other = Client::new(OTHER_CLIENT);
        let id = lab.request_tunnel(&other, nft).await?;
        // Each poll waits out the RPC timeout (10 s), then backs off.
        lab.broker()?
            .wait_log(&["poll failed (2 in a row)"], 1, secs(45))?;
        assert!(lab.broker()?.running());
        assert_eq!(lab.status(id).await?, PENDING);
        let log = lab.broker()?.log();
        let failure = lines_with(&log, &["poll failed (1 in a row)"])
            .next()
            .unwrap();
        assert!(failure.contains("no answer from"), "{failure}");
        // Backed off: 10 s of RPC timeout plus a pause of 2 poll intervals
        // (1 without back-off) between the two failures.
        let second = lines_with(&log, &["poll failed (2 in a row)"])
            .next()
            .unwrap();
        let between = log_time(second) - log_time(failure);
        assert!(
            between >= 11.6,
            "{between:.2} s between:\n{failure}\n{second}"
        );
        eprintln!(
            "an_rpc_outage_is_survived: two failed polls after {:.1} s",
            stalled.elapsed().as_secs_f64()
        );

        relay.resume();
        let resumed = Instant::now();
        let answer = lab.wait_answer(id, &other, secs(40)).await?;
        eprintln!(
            "an_rpc_outage_is_survived: answered {:.1} s after the endpoint came back",
            resumed.elapsed().as_secs_f64()
        );
        lab.check_answer(&answer)?;

        lab.stop_broker()?;
        assert_eq!(lab.check_consistent()?.len(), 2);
        assert_eq!(
            lab.response_events().await?,
            BTreeMap::from([(first, 1), (id, 1)])
        );
        Ok(())
    });
}

#[test]
fn a_daemon_killed_anywhere_in_the_request_path_answers_exactly_once() {
    daemon_test("crash", async |lab: &mut Lab| {
        let mut answered = Vec::new();
        for point in ["after-decision", "after-kernel", "before-answered"] {
            let account = if answered.len() % 2 == 0 {
                CLIENT
            } else {
                OTHER_CLIENT
            };
            let nft = lab.nft(account).await?;
            let client = Client::new(account);
            let id = lab.request_tunnel(&client, nft).await?;

            let crashing = lab.spawn_crashing(&format!("{point}=return"))?;
            let status = crashing.wait_exit(secs(30))?;
            assert!(
                killed_by_sigkill(status),
                "{point}: ended with {status}, not SIGKILL:\n{}",
                crashing.log()
            );
            assert!(
                crashing
                    .log()
                    .contains(&format!("crash point {point}: SIGKILL")),
                "{}",
                crashing.log()
            );
            let expected = if point == "before-answered" {
                APPROVED
            } else {
                PENDING
            };
            assert_eq!(lab.status(id).await?, expected, "after {point}");
            if point == "before-answered" {
                // The client has its answer before the broker knows it sent
                // it, and brings the tunnel up at once: the broker's
                // wireguard-go has the peer and answers while no daemon runs.
                let answer = lab.wait_answer(id, &client, secs(1)).await?;
                lab.bring_up_tunnel(&client, &answer)?;
                assert!(lab.net.servers[0].ping(GATEWAY, 10));
                // The daemon's clock is seconds: the handshake is now
                // strictly older than anything the restart records.
                tokio::time::sleep(Duration::from_millis(1100)).await;
            }

            lab.start_broker()?;
            let answer = lab.wait_answer(id, &client, secs(30)).await?;
            let prefix = lab.check_answer(&answer)?;
            if point == "before-answered" {
                // That handshake counts: the tunnel is up, and must not be
                // released for want of another one.
                lab.broker()?.wait_log(&["tunnel up"], 1, secs(10))?;
                // The restart adopted the interface: the tunnel still works.
                assert!(lab.net.servers[0].ping(GATEWAY, 5));
            }
            lab.stop_broker()?;
            // The restart sent the answer itself, or found it on chain.
            let log = lab.broker()?.log();
            // (Since the answer's transaction is recorded before it is
            // sent, the restart after `before-answered` finds it mined.)
            let found = lines_with(
                &log,
                &["the answer sent earlier is mined", &format!(" id={id}")],
            )
            .next();
            let sent = lines_with(&log, &["answered", &format!(" id={id}"), "tx=0x"]).next();
            if point == "before-answered" {
                assert!(found.is_some() && sent.is_none(), "{point}:\n{log}");
            } else {
                assert!(sent.is_some() && found.is_none(), "{point}:\n{log}");
            }
            let all = lab.check_consistent()?;
            let a = all
                .iter()
                .find(|a| a.nft == nft)
                .unwrap_or_else(|| panic!("{point}: no allocation for {nft}: {all:?}"));
            assert_eq!((a.request_id, a.prefix), (id, prefix), "{point}");
            assert!(a.answered_at.is_some(), "{point}: {a:?}");
            assert_eq!(
                a.handshake_deadline.is_none(),
                point == "before-answered",
                "{point}: {a:?}"
            );
            answered.push((id, prefix));
            assert_eq!(all.len(), answered.len(), "{point}: {all:?}");
        }

        let mut prefixes: Vec<Ipv6Net> = answered.iter().map(|(_, p)| *p).collect();
        prefixes.dedup();
        assert_eq!(prefixes.len(), 3, "prefixes handed out twice: {answered:?}");
        let ids = answered.iter().map(|(id, _)| (*id, 1));
        assert_eq!(lab.response_events().await?, BTreeMap::from_iter(ids));
        let calls = lab.operator_calls().await?;
        for (id, _) in &answered {
            assert_eq!(
                count(&calls, &format!("submitResponse({id})")),
                1,
                "{calls:?}"
            );
        }
        assert_eq!(calls.len(), 1 + answered.len(), "{calls:?}");
        Ok(())
    });
}

#[test]
fn a_tunnel_that_never_comes_up_is_released() {
    daemon_test("hs", async |lab: &mut Lab| {
        lab.config.wireguard.handshake_timeout_secs = SHORT_HANDSHAKE_TIMEOUT;
        lab.start_broker()?;
        let Served {
            nft, id, prefix, ..
        } = lab.serve(CLIENT).await?;
        let answered = Instant::now();
        assert_eq!(lab.routes()?, [prefix]);

        // The client never brings its tunnel up.
        let operator = lab.chain.operator.address();
        let deadline = answered + secs(SHORT_HANDSHAKE_TIMEOUT + 20);
        let released = loop {
            let events = lab.released_events().await?;
            if !events.is_empty() {
                break events;
            }
            assert!(
                Instant::now() < deadline,
                "no release {} s after the answer",
                SHORT_HANDSHAKE_TIMEOUT + 20
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let after = answered.elapsed();
        assert_eq!(released, [(id, nft, operator)]);
        // Not too early, on the chain's clock: when the test saw the answer
        // depends on its polling and the machine's load.
        let time_of = async |signature| {
            lab.first_event_time(signature)
                .await?
                .context("the event's block")
        };
        let answer_time = time_of(BrokerRequests::ResponseSubmitted::SIGNATURE_HASH).await?;
        let release_time = time_of(BrokerRequests::AllocationReleased::SIGNATURE_HASH).await?;
        assert!(
            release_time >= answer_time + SHORT_HANDSHAKE_TIMEOUT,
            "released at chain time {release_time}, answered at {answer_time}"
        );
        eprintln!(
            "a_tunnel_that_never_comes_up_is_released: released {:.1} s after the answer",
            after.as_secs_f64()
        );
        assert_eq!(lab.status(id).await?, EXPIRED);
        let log = lab.broker()?.log();
        assert!(
            lines_with(&log, &["released: no handshake within 10 s"])
                .next()
                .is_some(),
            "{log}"
        );
        assert_eq!(lab.peers()?, []);
        assert_eq!(lab.routes()?, []);
        assert_eq!(lab.ndp_prefixes()?, []);

        lab.stop_broker()?;
        assert_eq!(lab.check_consistent()?, []);
        let calls = lab.operator_calls().await?;
        assert_eq!(
            count(&calls, &format!("releaseAllocation({nft})")),
            1,
            "{calls:?}"
        );
        Ok(())
    });
}

/// A handshake deadline that passed while the broker was down does not
/// fire at its restart: the peer was only just put back, and gets the
/// handshake timeout again from there (a client that never comes up is
/// still released, after that grace period).
#[test]
fn a_deadline_that_passed_while_the_broker_was_down_gets_a_grace_period() {
    daemon_test("grace", async |lab: &mut Lab| {
        lab.config.wireguard.handshake_timeout_secs = SHORT_HANDSHAKE_TIMEOUT;
        lab.start_broker()?;
        let Served {
            nft, id, prefix, ..
        } = lab.serve(CLIENT).await?;
        lab.stop_broker()?;
        // Past the deadline while the daemon is down.
        tokio::time::sleep(secs(SHORT_HANDSHAKE_TIMEOUT + 3)).await;

        let restarted = Instant::now();
        lab.start_broker()?;
        // Several polls inside the grace period: the allocation stays.
        while restarted.elapsed() < secs(SHORT_HANDSHAKE_TIMEOUT - 3) {
            assert_eq!(
                lab.released_events().await?,
                [],
                "released {:.1} s after the restart: {}",
                restarted.elapsed().as_secs_f64(),
                lab.broker_log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(lab.routes()?, [prefix]);
        assert_eq!(lab.peers()?.len(), 1);
        assert_eq!(lab.status(id).await?, APPROVED);

        // After it, the client that never came up is released as ever.
        let deadline = restarted + secs(SHORT_HANDSHAKE_TIMEOUT + 20);
        let operator = lab.chain.operator.address();
        let released = loop {
            let events = lab.released_events().await?;
            if !events.is_empty() {
                break events;
            }
            assert!(
                Instant::now() < deadline,
                "no release after the grace period"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert_eq!(released, [(id, nft, operator)]);
        // The daemon's clock is whole seconds.
        assert!(
            restarted.elapsed() >= secs(SHORT_HANDSHAKE_TIMEOUT - 1),
            "released {:.1} s after the restart",
            restarted.elapsed().as_secs_f64()
        );
        assert_eq!(lab.routes()?, []);
        lab.stop_broker()?;
        assert_eq!(lab.check_consistent()?, []);
        Ok(())
    });
}

#[test]
fn a_restart_repairs_tampered_kernel_state() {
    daemon_test("tamp", async |lab: &mut Lab| {
        lab.start_broker()?;
        let Served {
            client, id, prefix, ..
        } = lab.serve(CLIENT).await?;
        lab.stop_broker()?;

        // Behind the stopped daemon's back: its peer, route and NDP entry go,
        // strangers of each kind come.
        let bogus = net("2001:db8:100::f00/120");
        let bogus_key = Key::generate_private().get_public().to_base64();
        let wg_if = lab.config.wireguard.interface.clone();
        let wg = |args: &[&str]| {
            let out = lab.net.broker.output("wg", args).unwrap();
            assert!(out.status.success(), "wg {args:?}: {out:?}");
        };
        wg(&["set", &wg_if, "peer", &client.wg_public(), "remove"]);
        wg(&[
            "set",
            &wg_if,
            "peer",
            &bogus_key,
            "allowed-ips",
            &bogus.to_string(),
        ]);
        let proto = ROUTE_PROTOCOL.to_string();
        lab.net.broker.ip(&[
            "-6",
            "route",
            "del",
            &prefix.to_string(),
            "dev",
            &wg_if,
            "proto",
            &proto,
        ])?;
        lab.net.broker.ip(&[
            "-6",
            "route",
            "add",
            &bogus.to_string(),
            "dev",
            &wg_if,
            "proto",
            &proto,
        ])?;
        {
            // The responder's own library on its pinned maps (the program it
            // loads is never attached).
            let mut responder = Responder::load(&PinDir::new(lab.pin_dir())).unwrap();
            responder.insert(bogus).unwrap();
            assert!(responder.remove(prefix).unwrap());
        }
        assert_eq!(lab.peers()?, [(bogus_key.clone(), bogus.to_string())]);
        assert_eq!(lab.routes()?, [bogus]);
        assert_eq!(lab.ndp_prefixes()?, [bogus]);

        lab.start_broker()?;
        let log = lab.broker()?.log();
        let summary = lines_with(&log, &["kernel reconciled with the database"])
            .next()
            .unwrap();
        assert!(
            summary.ends_with(
                "kernel reconciled with the database: 1 allocations; peers +1 -1, routes +1 -1, NDP +1 -1"
            ),
            "{summary}"
        );
        assert_eq!(lab.peers()?, [(client.wg_public(), prefix.to_string())]);
        assert_eq!(lab.routes()?, [prefix]);
        assert_eq!(lab.ndp_prefixes()?, [prefix]);

        // Nothing else changes: no second answer.
        tokio::time::sleep(secs(2)).await;
        lab.stop_broker()?;
        lab.check_consistent()?;
        assert_eq!(lab.response_events().await?, BTreeMap::from([(id, 1)]));
        Ok(())
    });
}

#[test]
fn sigterm_while_idle_stops_cleanly_and_a_restart_goes_on() {
    daemon_test("term", async |lab: &mut Lab| {
        lab.start_broker()?;
        let Served {
            id, prefix: first, ..
        } = lab.serve(CLIENT).await?;
        // Idle for a few polls.
        tokio::time::sleep(secs(3)).await;

        let (status, took) = lab.broker()?.terminate(secs(10))?;
        assert!(status.success(), "exit status {status}");
        assert!(took < secs(3), "SIGTERM took {took:?}");
        eprintln!(
            "sigterm_while_idle_stops_cleanly_and_a_restart_goes_on: exit 0 after {:.0} ms",
            took.as_secs_f64() * 1000.0
        );
        assert!(lab.broker()?.log().contains("stopping: state is on disk"));
        let all = lab.check_consistent()?;
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].request_id, all[0].prefix), (id, first));

        lab.start_broker()?;
        let Served {
            id: id2,
            prefix: second,
            ..
        } = lab.serve(OTHER_CLIENT).await?;
        assert_ne!(second, first);
        lab.stop_broker()?;
        assert_eq!(lab.check_consistent()?.len(), 2);
        assert_eq!(
            lab.response_events().await?,
            BTreeMap::from([(id, 1), (id2, 1)])
        );
        Ok(())
    });
}

#[test]
fn a_daemon_killed_while_releasing_finishes_the_release_once() {
    daemon_test("rel", async |lab: &mut Lab| {
        lab.config.wireguard.handshake_timeout_secs = SHORT_HANDSHAKE_TIMEOUT;
        let nft = lab.nft(CLIENT).await?;
        let client = Client::new(CLIENT);
        let id = lab.request_tunnel(&client, nft).await?;

        // Killed once the release has committed: the kernel still has it.
        lab.spawn_crashing("after-release=return")?;
        let answer = lab.wait_answer(id, &client, secs(30)).await?;
        let prefix = lab.check_answer(&answer)?;
        let crashing = lab.broker()?;
        let status = crashing.wait_exit(secs(SHORT_HANDSHAKE_TIMEOUT + 30))?;
        assert!(killed_by_sigkill(status), "{status}:\n{}", crashing.log());
        assert!(
            crashing
                .log()
                .contains("crash point after-release: SIGKILL")
        );
        {
            let db = lab.database()?;
            assert_eq!(db.allocations().unwrap(), []);
            let owed = db.owed_releases().unwrap();
            let owed: Vec<_> = owed.iter().map(|o| (o.contract, o.nft)).collect();
            assert_eq!(owed, [(lab.chain.requests, nft)]);
        }
        assert_eq!(lab.peers()?, [(client.wg_public(), prefix.to_string())]);
        assert_eq!(lab.routes()?, [prefix]);
        assert_eq!(lab.ndp_prefixes()?, [prefix]);
        assert_eq!(lab.released_events().await?, []);

        // The restart clears the kernel, sends the release and is killed
        // before recording it.
        let restarted = lab.spawn_crashing("before-release-recorded=return")?;
        let status = restarted.wait_exit(secs(30))?;
        assert!(killed_by_sigkill(status), "{status}:\n{}", restarted.log());
        let log = restarted.log();
        assert!(
            log.contains(
                "kernel reconciled with the database: 0 allocations; peers +0 -1, routes +0 -1, NDP +0 -1"
            ),
            "{log}"
        );
        assert!(log.contains("crash point before-release-recorded: SIGKILL"));
        assert_eq!(lab.peers()?, []);
        assert_eq!(lab.routes()?, []);
        assert_eq!(lab.ndp_prefixes()?, []);
        let operator = lab.chain.operator.address();
        assert_eq!(lab.released_events().await?, [(id, nft, operator)]);

        // The next start finds the recorded transaction mined and drops
        // the debt.
        lab.start_broker()?;
        lab.broker()?
            .wait_log(&["released on chain (sent earlier)"], 1, secs(15))?;
        lab.stop_broker()?;
        assert_eq!(lab.check_consistent()?, []);
        assert_eq!(lab.released_events().await?, [(id, nft, operator)]);
        let calls = lab.operator_calls().await?;
        assert_eq!(
            count(&calls, &format!("releaseAllocation({nft})")),
            1,
            "{calls:?}"
        );
        assert_eq!(lab.status(id).await?, EXPIRED);
        Ok(())
    });
}

/// An on-chain release owed for a tunnel that never came up must not end a
/// newer request of the same NFT: `releaseAllocation` ends the NFT's current
/// request, which by the time the release goes out may be a new one.
#[test]
fn an_owed_release_never_ends_a_newer_request_of_the_nft() {
    daemon_test("newer", async |lab: &mut Lab| {
        lab.config.wireguard.handshake_timeout_secs = SHORT_HANDSHAKE_TIMEOUT;
        let nft = lab.nft(CLIENT).await?;
        let first = Client::new(CLIENT);
        let id1 = lab.request_tunnel(&first, nft).await?;
        // Killed once the release of the unused tunnel has committed, with
        // the on-chain release still owed.
        lab.spawn_crashing("after-release=return")?;
        lab.wait_answer(id1, &first, secs(30)).await?;
        let crashing = lab.broker()?;
        let status = crashing.wait_exit(secs(SHORT_HANDSHAKE_TIMEOUT + 30))?;
        assert!(killed_by_sigkill(status), "{status}:\n{}", crashing.log());

        // Meanwhile the owner asks again; the restart answers that request
        // and leaves the release to it.
        let second = first.rotated();
        let id2 = lab.request_tunnel(&second, nft).await?;
        lab.start_broker()?;
        let answer2 = lab.wait_answer(id2, &second, secs(30)).await?;
        lab.check_answer(&answer2)?;
        lab.broker()?
            .wait_log(&["a newer request of the NFT decides"], 1, secs(15))?;
        lab.stop_broker()?;
        assert_eq!(lab.status(id2).await?, APPROVED);
        let calls = lab.operator_calls().await?;
        assert_eq!(
            count(&calls, &format!("releaseAllocation({nft})")),
            0,
            "{calls:?}"
        );
        assert_eq!(lab.released_events().await?, []);
        assert_eq!(lab.check_consistent()?.len(), 1);
        Ok(())
    });
}

#[test]
fn an_owner_release_frees_the_prefix_but_never_a_newer_request() {
    daemon_test("own", async |lab: &mut Lab| {
        lab.start_broker()?;
        let nft = lab.nft(CLIENT).await?;
        let first = Client::new(CLIENT);
        let id1 = lab.request_tunnel(&first, nft).await?;
        let answer = lab.wait_answer(id1, &first, secs(30)).await?;
        let prefix = lab.check_answer(&answer)?;

        // The NFT's owner gives the prefix back on chain.
        lab.release_own(CLIENT, nft).await?;
        lab.broker()?
            .wait_log(&["released by the NFT owner on chain"], 1, secs(15))?;
        assert_eq!(lab.peers()?, []);
        assert_eq!(lab.routes()?, []);
        assert_eq!(lab.ndp_prefixes()?, []);

        // Asked again, it gets a prefix again (the lowest free: the same).
        let second = Client::new(CLIENT);
        let id2 = lab.request_tunnel(&second, nft).await?;
        let answer = lab.wait_answer(id2, &second, secs(30)).await?;
        assert_eq!(lab.check_answer(&answer)?, prefix);

        // Released and asked again in one block: the broker sees the new
        // request before the release event, which must not take the new
        // allocation away.
        let third = Client::new(CLIENT);
        let payload = lab.encrypt(&third.payload(nft).to_json())?;
        let wallet = lab.wallet(CLIENT)?;
        let contract = BrokerRequests::new(lab.chain.requests, &wallet);
        lab.anvil("evm_setAutomine", json!([false])).await?;
        let released = contract
            .releaseOwnAllocation(nft)
            .gas(CLIENT_TX_GAS)
            .send()
            .await
            .unwrap();
        let submitted = contract
            .submitRequest(nft, payload.into())
            .gas(CLIENT_TX_GAS)
            .send()
            .await
            .unwrap();
        lab.anvil("evm_mine", json!([])).await?;
        lab.anvil("evm_setAutomine", json!([true])).await?;
        let release_receipt = released.get_receipt().await.unwrap();
        let receipt = submitted.get_receipt().await.unwrap();
        assert!(
            release_receipt.status() && receipt.status(),
            "{release_receipt:?}\n{receipt:?}\nrequest {id2}: {:?}",
            lab.request(id2).await?
        );
        let id3 = request_id(&receipt)?;
        let answer = lab.wait_answer(id3, &third, secs(30)).await?;
        assert_eq!(lab.check_answer(&answer)?, prefix);
        // A few polls on, it is still there.
        tokio::time::sleep(secs(3)).await;
        assert_eq!(lab.peers()?, [(third.wg_public(), prefix.to_string())]);
        assert_eq!(lab.routes()?, [prefix]);
        assert_eq!(lab.ndp_prefixes()?, [prefix]);

        lab.stop_broker()?;
        let all = lab.check_consistent()?;
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].request_id, all[0].prefix), (id3, prefix));
        // The owner's releases are not repeated by the broker.
        let calls = lab.operator_calls().await?;
        assert_eq!(
            count(&calls, &format!("releaseAllocation({nft})")),
            0,
            "{calls:?}"
        );
        let events = lab.released_events().await?;
        let by_owner = anvil_signer(CLIENT).address();
        assert_eq!(events, [(id1, nft, by_owner), (id2, nft, by_owner)]);
        Ok(())
    });
}

#[test]
fn sigterm_while_the_chain_is_unreachable_at_start_stops_cleanly() {
    daemon_test("down", async |lab: &mut Lab| {
        // A port where nothing listens in the broker's namespace.
        lab.config.onchain.rpc_url = "http://127.0.0.1:1".into();
        let daemon = lab.spawn_broker(None)?;
        daemon.wait_log(&["chain unreachable, retrying"], 2, secs(30))?;
        let (status, took) = daemon.terminate(secs(15))?;
        assert!(
            status.success(),
            "exit status {status} after {took:?}:\n{}",
            daemon.log()
        );
        assert!(took < secs(3), "SIGTERM took {took:?}");
        // The kernel side was up and stays up; nothing else happened.
        assert_eq!(lab.check_consistent()?, []);
        Ok(())
    });
}

#[test]
fn a_legacy_v1_contract_is_watched_beside_the_primary_one() {
    daemon_test("v1", async |lab: &mut Lab| {
        // A V1 requests contract from the operator, watched as a legacy one.
        let operator = lab.provider(lab.chain.operator.clone())?;
        let v1 = *BrokerRequestsV1::deploy(operator).await?.address();
        lab.config.onchain.legacy_requests_contracts.push(v1);
        lab.start_broker()?
            .wait_log(&["set totalCapacity on chain"], 1, secs(30))?;
        // The primary contract's capacity is the pool's (the broker's own
        // slot excepted), or what wireguard-go holds when it is the
        // WireGuard (the pool has 2^56 slots); V1 has no capacity to keep.
        let capacity = BrokerRequests::new(lab.chain.requests, lab.wallet(0)?)
            .totalCapacity()
            .call()
            .await
            .unwrap();
        let slots = lab.config.broker.pool.slots() - 1;
        let log = lab.broker()?.log();
        let expected = if log.contains("WireGuard holds this many peers at most") {
            assert!(log.contains("max=65536"), "{log}");
            slots.min(65_536)
        } else {
            slots
        };
        assert_eq!(capacity, U256::from(expected));

        let old = Client::new(CLIENT);
        let old_nft = lab.nft(CLIENT).await?;
        let legacy_id = lab.request_tunnel_at(v1, &old, old_nft).await?;
        let new = Client::new(OTHER_CLIENT);
        let new_nft = lab.nft(OTHER_CLIENT).await?;
        let id = lab.request_tunnel(&new, new_nft).await?;
        // Both contracts number from 1: the same id on each is a different
        // request.
        assert_eq!((legacy_id, id), (1, 1));

        let legacy_answer = lab.wait_answer_at(v1, legacy_id, &old, secs(30)).await?;
        let answer = lab.wait_answer(id, &new, secs(30)).await?;
        let legacy_prefix = lab.check_answer(&legacy_answer)?;
        assert_ne!(lab.check_answer(&answer)?, legacy_prefix);

        // An old client's tunnel works like any other.
        lab.bring_up_tunnel(&old, &legacy_answer)?;
        assert!(
            lab.net.servers[0].ping(GATEWAY, 10),
            "the legacy client cannot reach the gateway through its tunnel"
        );

        lab.stop_broker()?;
        let all = lab.check_consistent()?;
        let legacy = all
            .iter()
            .find(|a| a.contract == v1)
            .expect("V1's allocation");
        assert_eq!((legacy.nft, legacy.request_id), (old_nft, legacy_id));
        assert_eq!(all.len(), 2);
        assert_eq!(
            lab.response_events_at(v1).await?,
            BTreeMap::from([(legacy_id, 1)])
        );
        assert_eq!(lab.response_events().await?, BTreeMap::from([(id, 1)]));
        // Capacity was set once, at the first start, never on V1.
        let calls = lab.operator_calls().await?;
        assert_eq!(count(&calls, "setTotalCapacity"), 1, "{calls:?}");
        Ok(())
    });
}

#[test]
fn a_fresh_database_starts_at_start_request_id_and_takes_a_bounded_number_per_poll() {
    daemon_test("cur", async |lab: &mut Lab| {
        lab.config.onchain.start_request_id = 3;
        lab.config.onchain.max_requests_per_poll = 1;
        // History before the broker existed: ids 1 and 2.
        let mut ids = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..5 {
            let client = Client::new(CLIENT);
            let nft = lab.nft(CLIENT).await?;
            ids.push(lab.request_tunnel(&client, nft).await?);
            clients.push(client);
        }
        assert_eq!(ids, [1, 2, 3, 4, 5]);

        lab.start_broker()?;
        for (&id, client) in ids.iter().zip(&clients).skip(2) {
            lab.wait_answer(id, client, secs(30)).await?;
        }
        // One new request per poll (1 s apart): 3, 4 and 5 take two polls
        // more than 3 alone; all in one poll would take a fraction of that.
        // (The daemon logs an answer after its receipt, which can be after
        // the test saw the request approved.)
        lab.broker()?
            .wait_log(&["answered contract="], 3, secs(10))?;
        let log = lab.broker()?.log();
        let answered = |id: u64| {
            let line = lines_with(&log, &["answered", &format!(" id={id}"), "tx=0x"])
                .next()
                .unwrap_or_else(|| panic!("request {id} answered but not logged:\n{log}"));
            log_time(line)
        };
        let spread = answered(5) - answered(3);
        assert!(
            spread >= 1.5,
            "requests 3 and 5 answered {spread:.2} s apart: more than one per poll"
        );
        assert_eq!(lab.status(1).await?, PENDING);
        assert_eq!(lab.status(2).await?, PENDING);

        lab.stop_broker()?;
        assert_eq!(lab.check_consistent()?.len(), 3);
        let db = lab.database()?;
        for id in [1, 2] {
            assert_eq!(
                db.request(lab.chain.requests, id).unwrap(),
                None,
                "request {id} is before start_request_id"
            );
        }
        assert_eq!(
            lab.response_events().await?,
            BTreeMap::from([(3, 1), (4, 1), (5, 1)])
        );
        Ok(())
    });
}

#[test]
fn sigterm_while_an_answer_waits_to_be_mined_stops_promptly_and_a_restart_answers_once() {
    daemon_test("mine", async |lab: &mut Lab| {
        lab.start_broker()?;
        lab.broker()?
            .wait_log(&["set totalCapacity on chain"], 1, secs(10))?;
        // From here on nothing is mined until the test says so.
        lab.anvil("evm_setAutomine", json!([false])).await?;
        let (client, id) = request_mined_by_hand(lab, CLIENT).await?;
        assert_eq!(id, 1);

        // The daemon sends its answer; it stays in the mempool.
        let deadline = Instant::now() + secs(30);
        loop {
            let pool = lab.anvil("txpool_status", json!([])).await?;
            if pool["pending"].as_str() == Some("0x1") {
                break;
            }
            assert!(Instant::now() < deadline, "no answer sent: {pool}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(secs(1)).await;
        let (status, took) = lab.broker()?.terminate(secs(30))?;
        assert!(
            status.success(),
            "exit status {status}:\n{}",
            lab.broker()?.log()
        );
        // Without the stop the first wait for the receipt would last 20 s.
        assert!(took < secs(5), "SIGTERM took {took:?}");
        assert!(
            lab.broker()?
                .log()
                .contains("stopped while waiting for transaction"),
            "{}",
            lab.broker()?.log()
        );
        eprintln!(
            "sigterm_while_an_answer_waits_to_be_mined…: exit 0 after {:.0} ms",
            took.as_secs_f64() * 1000.0
        );

        // The chain mines the answer while the broker is down; the restart
        // finds it instead of sending another.
        lab.anvil("evm_mine", json!([])).await?;
        lab.anvil("evm_setAutomine", json!([true])).await?;
        let answer = lab.wait_answer(id, &client, secs(5)).await?;
        lab.check_answer(&answer)?;
        lab.start_broker()?;
        lab.broker()?
            .wait_log(&["the answer sent earlier is mined"], 1, secs(30))?;
        lab.stop_broker()?;
        let all = lab.check_consistent()?;
        assert_eq!(all.len(), 1);
        assert!(all[0].answered_at.is_some(), "{:?}", all[0]);
        assert_eq!(lab.response_events().await?, BTreeMap::from([(id, 1)]));
        let calls = lab.operator_calls().await?;
        assert_eq!(count(&calls, "submitResponse(1)"), 1, "{calls:?}");
        Ok(())
    });
}

/// With automine off: a TestNFT of `account` and its request, each mined
/// by hand; the request's client and id.
async fn request_mined_by_hand(lab: &mut Lab, account: usize) -> anyhow::Result<(Client, u64)> {
    let nft_tx = TestNFT::deploy_builder(lab.wallet(account)?, anvil_signer(account).address())
        .send()
        .await
        .expect("TestNFT sent");
    lab.anvil("evm_mine", json!([])).await?;
    let nft = nft_tx
        .get_receipt()
        .await
        .expect("TestNFT mined")
        .contract_address
        .expect("a contract address");
    let client = Client::new(account);
    let payload = lab.encrypt(&client.payload(nft).to_json())?;
    let sent = BrokerRequests::new(lab.chain.requests, lab.wallet(account)?)
        .submitRequest(nft, payload.into())
        .gas(CLIENT_TX_GAS)
        .send()
        .await
        .expect("submitRequest sent");
    lab.anvil("evm_mine", json!([])).await?;
    let receipt = sent.get_receipt().await?;
    assert!(receipt.status());
    Ok((client, request_id(&receipt)?))
}

/// Transactions in anvil's pool, not mined.
async fn pending_transactions(lab: &mut Lab) -> anyhow::Result<u64> {
    let pool = lab.anvil("txpool_status", json!([])).await?;
    let pending = pool["pending"].as_str().context("txpool_status")?;
    Ok(u64::from_str_radix(pending.trim_start_matches("0x"), 16)?)
}

#[test]
fn a_daemon_killed_right_after_sending_an_answer_never_sends_a_second_one() {
    daemon_test("sent", async |lab: &mut Lab| {
        // The capacity transaction first, mined at once.
        lab.start_broker()?;
        lab.broker()?
            .wait_log(&["set totalCapacity on chain"], 1, secs(10))?;
        lab.stop_broker()?;
        // From here on nothing is mined until the test says so.
        lab.anvil("evm_setAutomine", json!([false])).await?;

        // 1. Killed right after the broadcast: the restart waits for that
        // transaction instead of answering again at the next nonce.
        let (client, id) = request_mined_by_hand(lab, CLIENT).await?;
        let crashing = lab.spawn_crashing("after-send=return")?;
        let status = crashing.wait_exit(secs(30))?;
        assert!(killed_by_sigkill(status), "{status}:\n{}", crashing.log());
        assert!(
            crashing.log().contains("crash point after-send: SIGKILL"),
            "{}",
            crashing.log()
        );
        assert_eq!(pending_transactions(lab).await?, 1, "the answer is pending");
        lab.start_broker()?;
        // "ready" follows the first poll, which saw the request as sent.
        lab.broker()?.wait_log(&["ready:"], 1, secs(30))?;
        tokio::time::sleep(secs(2)).await;
        assert_eq!(
            pending_transactions(lab).await?,
            1,
            "a second answer was sent:\n{}",
            lab.broker()?.log()
        );
        // (A node that simulates at its pending block, as anvil does, sees
        // the request answered by the pending transaction: without the
        // record of it, the answer would be taken as refused.)
        let log = lab.broker()?.log();
        assert!(!log.contains("answer was refused"), "{log}");
        lab.anvil("evm_mine", json!([])).await?;
        let answer = lab.wait_answer(id, &client, secs(5)).await?;
        lab.check_answer(&answer)?;
        lab.broker()?
            .wait_log(&["the answer sent earlier is mined"], 1, secs(30))?;
        lab.stop_broker()?;

        // 2. Killed after the broadcast, and the node dropped the
        // transaction meanwhile: the restart sends it again at its nonce.
        let (other, id2) = request_mined_by_hand(lab, OTHER_CLIENT).await?;
        let crashing = lab.spawn_crashing("after-send=return")?;
        let status = crashing.wait_exit(secs(30))?;
        assert!(killed_by_sigkill(status), "{status}:\n{}", crashing.log());
        lab.anvil("anvil_dropAllTransactions", json!([])).await?;
        assert_eq!(pending_transactions(lab).await?, 0);
        lab.start_broker()?;
        lab.broker()?.wait_log(
            &["the answer's transaction was dropped: replacing it at its nonce"],
            1,
            secs(30),
        )?;
        lab.broker()?.wait_log(&["ready:"], 1, secs(30))?;
        assert_eq!(pending_transactions(lab).await?, 1);
        lab.anvil("evm_mine", json!([])).await?;
        lab.anvil("evm_setAutomine", json!([true])).await?;
        let answer = lab.wait_answer(id2, &other, secs(5)).await?;
        lab.check_answer(&answer)?;
        lab.broker()?
            .wait_log(&["the answer sent earlier is mined"], 1, secs(30))?;
        lab.stop_broker()?;

        let all = lab.check_consistent()?;
        assert_eq!(all.len(), 2, "{all:?}");
        assert!(all.iter().all(|a| a.answered_at.is_some()), "{all:?}");
        assert_eq!(
            lab.response_events().await?,
            BTreeMap::from([(id, 1), (id2, 1)])
        );
        // Every transaction the operator ever had mined: the capacity and
        // one answer each.
        let calls = lab.operator_calls().await?;
        assert_eq!(
            count(&calls, &format!("submitResponse({id})")),
            1,
            "{calls:?}"
        );
        assert_eq!(
            count(&calls, &format!("submitResponse({id2})")),
            1,
            "{calls:?}"
        );
        assert_eq!(calls.len(), 3, "{calls:?}");
        Ok(())
    });
}

#[test]
fn a_daemon_killed_right_after_sending_a_release_never_sends_a_second_one() {
    daemon_test("relsent", async |lab: &mut Lab| {
        lab.config.wireguard.handshake_timeout_secs = SHORT_HANDSHAKE_TIMEOUT;
        let nft = lab.nft(CLIENT).await?;
        let client = Client::new(CLIENT);
        let id = lab.request_tunnel(&client, nft).await?;
        // Answered (mined at once); the tunnel never comes up, so the
        // release follows, and is sent while nothing is mined.
        lab.spawn_crashing("after-release-send=return")?;
        let answer = lab.wait_answer(id, &client, secs(30)).await?;
        lab.check_answer(&answer)?;
        lab.anvil("evm_setAutomine", json!([false])).await?;
        let crashing = lab.broker()?;
        let status = crashing.wait_exit(secs(SHORT_HANDSHAKE_TIMEOUT + 30))?;
        assert!(killed_by_sigkill(status), "{status}:\n{}", crashing.log());
        assert!(
            crashing
                .log()
                .contains("crash point after-release-send: SIGKILL"),
            "{}",
            crashing.log()
        );
        assert_eq!(
            pending_transactions(lab).await?,
            1,
            "the release is pending"
        );

        lab.start_broker()?;
        lab.broker()?.wait_log(&["ready:"], 1, secs(30))?;
        tokio::time::sleep(secs(2)).await;
        assert_eq!(
            pending_transactions(lab).await?,
            1,
            "a second release was sent:\n{}",
            lab.broker()?.log()
        );
        let log = lab.broker()?.log();
        assert!(!log.contains("on-chain release refused"), "{log}");
        lab.anvil("evm_mine", json!([])).await?;
        lab.anvil("evm_setAutomine", json!([true])).await?;
        lab.broker()?
            .wait_log(&["released on chain (sent earlier)"], 1, secs(30))?;
        lab.stop_broker()?;
        assert_eq!(lab.check_consistent()?, []);
        let operator = lab.chain.operator.address();
        assert_eq!(lab.released_events().await?, [(id, nft, operator)]);
        let calls = lab.operator_calls().await?;
        assert_eq!(
            count(&calls, &format!("releaseAllocation({nft})")),
            1,
            "{calls:?}"
        );
        Ok(())
    });
}

#[test]
fn hostile_nft_contracts_are_rejected_silently_and_never_delay_honest_requests() {
    use broker_contracts::bindings::hostile_fixture::{HostileNFT, SelfDestructingRequester};
    daemon_test("hostile", async |lab: &mut Lab| {
        // Every request is on chain before the broker starts: the hostile
        // ones first, then the honest one, all in its first poll.
        let client = Client::new(CLIENT);
        let owner = anvil_signer(CLIENT).address();
        let mut hostile = Vec::new();
        // HostileNFT.Mode: GasLoop, HugeReturn, RevertsForFreeCalls.
        for (mode, name) in [
            (0u8, "GasLoop"),
            (1, "HugeReturn"),
            (2, "RevertsForFreeCalls"),
        ] {
            let nft = *HostileNFT::deploy(lab.wallet(CLIENT)?, owner, mode)
                .await
                .context("deploying a HostileNFT")?
                .address();
            // It passes the contract's own checks.
            hostile.push((lab.request_tunnel(&client, nft).await?, name.to_string()));
        }
        let payload = lab.encrypt(&client.payload(Address::ZERO).to_json())?;
        let requester = SelfDestructingRequester::deploy(
            lab.wallet(CLIENT)?,
            lab.chain.requests,
            payload.into(),
        )
        .await
        .context("deploying a SelfDestructingRequester")?;
        let id = requester.requestId().call().await?.to::<u64>();
        hostile.push((id, "SelfDestructs".into()));
        let honest = Client::new(OTHER_CLIENT);
        let nft = lab.nft(OTHER_CLIENT).await?;
        let honest_id = lab.request_tunnel(&honest, nft).await?;

        let started = Instant::now();
        lab.start_broker()?;
        let answer = lab.wait_answer(honest_id, &honest, secs(30)).await?;
        lab.check_answer(&answer)?;
        let took = started.elapsed();
        eprintln!("hostile NFTs: the honest request was answered {took:?} after the start");
        // The lab polls every second: its first poll or the next.
        lab.broker()?.wait_log(&["ready:"], 1, secs(10))?;
        let log = lab.broker()?.log();
        let polls_before_answer = log
            .lines()
            .take_while(|l| !(l.contains("answered") && l.contains(&format!(" id={honest_id}"))))
            .filter(|l| l.contains("ready:") || l.contains("poll failed"))
            .count();
        assert!(polls_before_answer <= 1, "{log}");
        assert!(took < secs(20), "{took:?}:\n{log}");
        // Each hostile one was judged at once: silently rejected, no retry.
        for (id, mode) in &hostile {
            let rejected = lines_with(&log, &["rejected (silently)", &format!(" id={id}")]).count();
            assert_eq!(rejected, 1, "{mode} (request {id}):\n{log}");
            let retried = lines_with(&log, &["will retry", &format!(" id={id}")]).count();
            assert_eq!(retried, 0, "{mode} (request {id}):\n{log}");
            let status = wait_status_not(lab, *id, PENDING, secs(20)).await?;
            assert_eq!(status, EXPIRED, "{mode} was answered");
        }
        lab.stop_broker()?;
        assert_eq!(
            lab.response_events().await?,
            BTreeMap::from([(honest_id, 1)])
        );
        let db = lab.database()?;
        for (id, mode) in &hostile {
            let stage = db.request(lab.chain.requests, *id)?.map(|r| r.stage);
            assert!(
                matches!(
                    stage,
                    Some(broker_userspace::store::requests::Stage::Rejected { .. })
                ),
                "{mode}: {stage:?}"
            );
        }
        Ok(())
    });
}

// ------------------------------------------------- pipelined answers (issue 15)

/// `n` requests from distinct NFT contracts (all owned by CLIENT), sent
/// together and mined in one block by hand; automine is left off. The
/// clients with their request ids, and that block.
async fn burst_in_one_block(lab: &mut Lab, n: usize) -> anyhow::Result<(Vec<(Client, u64)>, u64)> {
    lab.anvil("evm_setAutomine", json!([true])).await?;
    let mut nfts = Vec::new();
    for _ in 0..n {
        nfts.push(lab.nft(CLIENT).await?);
    }
    lab.anvil("evm_setAutomine", json!([false])).await?;
    let requests = BrokerRequests::new(lab.chain.requests, lab.wallet(CLIENT)?);
    let mut sent = Vec::new();
    for nft in nfts {
        let client = Client::new(CLIENT);
        let payload = lab.encrypt(&client.payload(nft).to_json())?;
        let pending = requests
            .submitRequest(nft, payload.into())
            .gas(CLIENT_TX_GAS)
            .send()
            .await
            .context("sending submitRequest")?;
        sent.push((client, pending));
    }
    lab.anvil("evm_mine", json!([])).await?;
    let mut burst = Vec::new();
    let mut blocks = std::collections::BTreeSet::new();
    for (client, pending) in sent {
        let receipt = pending.get_receipt().await?;
        assert!(receipt.status(), "submitRequest reverted");
        blocks.insert(receipt.block_number.context("a mined receipt")?);
        burst.push((client, request_id(&receipt)?));
    }
    assert_eq!(blocks.len(), 1, "the burst spans blocks {blocks:?}");
    Ok((burst, blocks.into_iter().next().unwrap_or_default()))
}

/// The block of each `ResponseSubmitted` event, by request id.
async fn response_blocks(lab: &Lab) -> anyhow::Result<BTreeMap<u64, u64>> {
    use alloy::{providers::Provider as _, rpc::types::Filter};
    let filter = Filter::new()
        .address(lab.chain.requests)
        .event_signature(BrokerRequests::ResponseSubmitted::SIGNATURE_HASH)
        .from_block(0);
    let mut blocks = BTreeMap::new();
    for log in lab.wallet(0)?.get_logs(&filter).await? {
        let block = log.block_number.context("a mined event")?;
        let event = log.log_decode::<BrokerRequests::ResponseSubmitted>()?;
        blocks.insert(event.inner.data.requestId.to::<u64>(), block);
    }
    Ok(blocks)
}

/// Each request of `burst` answered exactly once, by one `submitResponse`
/// of the operator each, and its answer decrypting for its client.
async fn each_answered_once(lab: &mut Lab, burst: &[(Client, u64)]) -> anyhow::Result<()> {
    for (client, id) in burst {
        let answer = lab.wait_answer(*id, client, secs(30)).await?;
        lab.check_answer(&answer)?;
    }
    let events = lab.response_events().await?;
    let calls = lab.operator_calls().await?;
    for (_, id) in burst {
        assert_eq!(events.get(id), Some(&1), "{events:?}");
        assert_eq!(
            count(&calls, &format!("submitResponse({id})")),
            1,
            "{calls:?}"
        );
    }
    let answers = calls
        .iter()
        .filter(|c| c.starts_with("submitResponse"))
        .count();
    assert_eq!(answers, burst.len(), "{calls:?}");
    Ok(())
}

/// The answers to a burst found in one poll leave back to back at
/// consecutive nonces: with 2-second blocks, ten requests mined in one
/// block are all answered within 2 blocks (measured: all in the next one;
/// the one-at-a-time daemon, `pipeline_answers = false`, which awaits each
/// receipt before sending the next answer, took 10: blocks +1 to +10).
#[test]
fn a_burst_of_requests_in_one_block_is_answered_within_two_blocks() {
    const BURST: usize = 10;
    daemon_test("burst", async |lab: &mut Lab| {
        lab.start_broker()?;
        lab.broker()?
            .wait_log(&["set totalCapacity on chain"], 1, secs(10))?;
        lab.broker()?.wait_log(&["ready:"], 1, secs(30))?;
        let (burst, requested) = burst_in_one_block(lab, BURST).await?;
        // Confirmations 0: the burst is confirmed in its own block.
        lab.anvil("evm_setIntervalMining", json!([2])).await?;
        each_answered_once(lab, &burst).await?;
        let blocks = response_blocks(lab).await?;
        let last = blocks.values().copied().max().unwrap_or_default();
        eprintln!(
            "burst of {BURST} requested in block {requested}: answered in blocks {:?}",
            blocks.values().collect::<Vec<_>>()
        );
        assert_eq!(blocks.len(), BURST, "{blocks:?}");
        assert!(
            last <= requested + 2,
            "answered in blocks {blocks:?}, the requests in {requested}:\n{}",
            lab.broker()?.log()
        );
        // One transaction per answer: none replaced, none sent again.
        let log = lab.broker()?.log();
        let sent = lines_with(&log, &["answer sent"]).count();
        assert_eq!(sent, BURST, "{log}");
        // Their peers were set up in one exchange with the device.
        let together = lines_with(&log, &["set up allocations together", "count=10"]).count();
        assert_eq!(together, 1, "{log}");
        lab.stop_broker()?;
        let all = lab.check_consistent()?;
        assert_eq!(all.len(), BURST);
        assert!(all.iter().all(|a| a.answered_at.is_some()), "{all:?}");
        Ok(())
    });
}

/// Killed in the middle of a run of pipelined answers (right after the 3rd
/// of 4 was sent, the 4th decided but not sent), before the run's receipts
/// were awaited, and after the first of them was mined but before the
/// database knew it: each restart follows up what was sent at its nonce and
/// sends only what was not, so every request is answered exactly once.
#[test]
fn a_daemon_killed_in_the_middle_of_a_run_of_answers_answers_each_exactly_once() {
    daemon_test("runkill", async |lab: &mut Lab| {
        lab.start_broker()?;
        lab.broker()?
            .wait_log(&["set totalCapacity on chain"], 1, secs(10))?;
        lab.stop_broker()?;
        let mut answered = Vec::new();

        // 1. The 3rd answer sent, then killed: 3 pending, the 4th only
        // decided. The restart sends the 4th alone.
        let (burst, _) = burst_in_one_block(lab, 4).await?;
        let crashing = lab.spawn_crashing("after-send=2*off->return")?;
        let status = crashing.wait_exit(secs(30))?;
        assert!(killed_by_sigkill(status), "{status}:\n{}", crashing.log());
        let log = crashing.log();
        assert_eq!(lines_with(&log, &["daemon: allocated"]).count(), 4, "{log}");
        assert_eq!(pending_transactions(lab).await?, 3, "{log}");
        lab.start_broker()?;
        lab.broker()?.wait_log(&["answer sent"], 1, secs(30))?;
        lab.broker()?.wait_log(&["ready:"], 1, secs(30))?;
        tokio::time::sleep(secs(2)).await;
        assert_eq!(
            pending_transactions(lab).await?,
            4,
            "answers sent again:\n{}",
            lab.broker()?.log()
        );
        lab.anvil("evm_mine", json!([])).await?;
        answered.extend(burst);
        each_answered_once(lab, &answered).await?;
        lab.broker()?
            .wait_log(&["the answer sent earlier is mined"], 3, secs(30))?;
        lab.stop_broker()?;

        // 2. All 3 sent, killed before their receipts were awaited.
        let (burst, _) = burst_in_one_block(lab, 3).await?;
        let crashing = lab.spawn_crashing("before-receipts=return")?;
        let status = crashing.wait_exit(secs(30))?;
        assert!(killed_by_sigkill(status), "{status}:\n{}", crashing.log());
        assert_eq!(pending_transactions(lab).await?, 3);
        lab.start_broker()?;
        lab.broker()?.wait_log(&["ready:"], 1, secs(30))?;
        assert_eq!(
            pending_transactions(lab).await?,
            3,
            "{}",
            lab.broker()?.log()
        );
        lab.anvil("evm_mine", json!([])).await?;
        answered.extend(burst);
        each_answered_once(lab, &answered).await?;
        lab.broker()?
            .wait_log(&["the answer sent earlier is mined"], 3, secs(30))?;
        lab.stop_broker()?;

        // 3. Mined at once (automine), killed once the first receipt is
        // read and before the database records it.
        let (burst, _) = burst_in_one_block(lab, 3).await?;
        lab.anvil("evm_setAutomine", json!([true])).await?;
        let crashing = lab.spawn_crashing("before-answered=return")?;
        let status = crashing.wait_exit(secs(30))?;
        assert!(killed_by_sigkill(status), "{status}:\n{}", crashing.log());
        lab.start_broker()?;
        answered.extend(burst);
        each_answered_once(lab, &answered).await?;
        lab.broker()?
            .wait_log(&["the answer sent earlier is mined"], 3, secs(30))?;
        lab.stop_broker()?;

        let all = lab.check_consistent()?;
        assert_eq!(all.len(), answered.len(), "{all:?}");
        assert!(all.iter().all(|a| a.answered_at.is_some()), "{all:?}");
        Ok(())
    });
}

/// One answer of a run refused by the node at its broadcast ("txpool is
/// full"): the next answer takes its nonce (each nonce is the node's pending
/// count), so no gap holds the later ones back. The refused one, unknown to
/// the node while another answer waits at its nonce, is left alone (replacing
/// it would displace that answer, and the two would displace each other
/// poll after poll at rising fees), and is sent again at a fresh nonce once
/// the chain shows its nonce used. Each request is answered exactly once.
#[test]
fn an_answer_refused_at_its_broadcast_leaves_no_nonce_gap() {
    use broker_lab::rpc_limits::{LimitedRpc, Limits};
    daemon_test("refused", async |lab: &mut Lab| {
        let unlimited = Limits {
            max_blocks: u64::MAX,
            max_results: usize::MAX,
        };
        let rpc = LimitedRpc::start(CHAIN_ADDR.parse()?, &lab.chain.rpc_url, unlimited)?;
        lab.config.onchain.rpc_url = rpc.url.clone();
        lab.start_broker()?;
        lab.broker()?
            .wait_log(&["set totalCapacity on chain"], 1, secs(10))?;
        lab.broker()?.wait_log(&["ready:"], 1, secs(30))?;
        rpc.refuse_send(2);
        let (burst, _) = burst_in_one_block(lab, 3).await?;
        let refused = burst[1].1;
        lab.broker()?.wait_log(&["answer deferred"], 1, secs(30))?;
        // The run's receipt wait ends with nothing mined; then a few polls
        // look at the three answers.
        lab.broker()?.wait_log(
            &["answer not mined yet, followed up by the next polls"],
            2,
            secs(40),
        )?;
        tokio::time::sleep(secs(3)).await;
        let log = lab.broker()?.log();
        assert!(log.contains("txpool is full"), "{log}");
        assert_eq!(pending_transactions(lab).await?, 2, "{log}");
        assert!(!log.contains("replacing it"), "{log}");
        lab.anvil("evm_mine", json!([])).await?;
        lab.anvil("evm_setAutomine", json!([true])).await?;
        each_answered_once(lab, &burst).await?;
        let log = lab.broker()?.log();
        let again = lines_with(
            &log,
            &[
                "another transaction took the answer's nonce: answering again",
                &format!(" id={refused}"),
            ],
        )
        .count();
        assert_eq!(again, 1, "{log}");
        lab.stop_broker()?;
        let all = lab.check_consistent()?;
        assert_eq!(all.len(), 3);
        Ok(())
    });
}
