//! The operator's surface end to end: `blockhost-broker status` and
//! `allocations list|show|release` against the real daemon (real anvil,
//! network namespaces, wireguard-go, the XDP responder), through its control
//! socket, and against the database alone when no daemon runs.
//!
//! Each test builds its own lab (broker-lab's `topology`); the requests
//! come from anvil account 2 (broker-lab's `requests`), the answers are
//! read back with the CLI itself (broker-lab's `operator`). Needs root.

use std::time::{Duration, Instant};

use alloy::primitives::utils::parse_ether;
use broker_lab::{
    Lab, lab_test, operator::CliRun, process::killed_by_sigkill, topology::UPSTREAM_IF,
};
use broker_userspace::{
    ipam::Pool,
    operator::{AllocationView, OnChainRelease, PeerState, Released},
    store::Store,
};
use ipnet::Ipv6Net;

/// The broker's pool: a /64 in /120s.
const UPSTREAM: &str = "2001:db8:100::/64";
const ALLOCATION_SIZE: u8 = 120;
/// The broker's address in the pool: the clients' gateway.
const GATEWAY: &str = "2001:db8:100::2";
/// Above what anvil gives an account: the wallet is reported low.
const LOW_BALANCE_ETH: &str = "1000000";
/// The user the permission checks run as.
const NOBODY: u32 = 65534;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A lab whose broker hands out UPSTREAM in /ALLOCATION_SIZE and reports
/// its wallet low below LOW_BALANCE_ETH.
fn operator_test(tag: &str, body: impl AsyncFnOnce(&mut Lab) -> anyhow::Result<()> + Send) {
    lab_test(tag, async |lab: &mut Lab| {
        lab.config.broker.pool = Pool::new(UPSTREAM.parse()?, ALLOCATION_SIZE)?;
        lab.config.onchain.low_balance_wei = parse_ether(LOW_BALANCE_ETH)?;
        body(lab).await
    });
}

/// `allocations show PREFIX ARGS`.
fn show(lab: &Lab, prefix: Ipv6Net, args: &[&str]) -> anyhow::Result<CliRun> {
    let prefix = prefix.to_string();
    lab.cli(&[&["allocations", "show", &prefix], args].concat())
}

/// `allocations release PREFIX ARGS`.
fn release(lab: &Lab, prefix: Ipv6Net, args: &[&str]) -> anyhow::Result<CliRun> {
    let prefix = prefix.to_string();
    lab.cli(&[&["allocations", "release", &prefix], args].concat())
}

/// The views' (key, prefix) as `wg show allowed-ips` gives them, sorted.
fn as_peers(views: &[AllocationView]) -> Vec<(String, String)> {
    let mut peers: Vec<_> = views
        .iter()
        .map(|v| (v.wireguard_key.clone(), v.prefix.to_string()))
        .collect();
    peers.sort();
    peers
}

#[test]
fn status_list_show_and_release_agree_with_the_database_the_kernel_and_the_chain() {
    operator_test("ops", async |lab: &mut Lab| {
        lab.start_broker_serving(None)?;
        let mut requests = Vec::new();
        for _ in 0..3 {
            requests.push(lab.request_from_new_server().await?);
        }
        lab.wait_answered(3).await?;
        let all = lab.list_allocations(None)?;
        assert_eq!(all.len(), 3, "{all:?}");
        let (client, nft, id) = &requests[0];
        let up = all
            .iter()
            .find(|v| v.wireguard_key == client.wg_public())
            .unwrap()
            .clone();
        assert_eq!(up.nft_contract, *nft);
        let answer = lab.wait_answer(*id, client, secs(5)).await?;
        assert_eq!(lab.check_answer(&answer)?, up.prefix);
        // No client sent anything yet: no endpoint.
        assert!(all.iter().all(|v| v.endpoint.is_none()), "{all:?}");
        lab.bring_up_tunnel(client, &answer)?;
        // The daemon's next poll sees the handshake.
        let deadline = Instant::now() + secs(30);
        while lab.operator_status()?.peers.unwrap().active == 0 {
            assert!(Instant::now() < deadline, "no handshake seen");
            lab.net.servers[0].ping(GATEWAY, 1);
        }

        // status: the database, the kernel, the chain.
        let status_now = lab.operator_status()?;
        assert!(status_now.daemon);
        // A /64 in /120s; the first is the broker's.
        assert_eq!(
            (status_now.pool.used, status_now.pool.total),
            (3, (1 << 56) - 1)
        );
        assert_eq!(status_now.pool.free, status_now.pool.total - 3);
        let counts = status_now.contracts[0].requests;
        assert_eq!((counts.seen, counts.answered, counts.pending), (3, 3, 0));
        let peers = status_now.peers.unwrap();
        assert_eq!((peers.active, peers.idle, peers.never), (1, 0, 2));
        let (kernel_peers, routes, ndp) = lab.kernel_state()?;
        let ndp_status = status_now.ndp.as_ref().unwrap();
        assert_eq!(ndp_status.prefixes, ndp.len());
        assert_eq!(ndp_status.interface.as_deref(), Some(UPSTREAM_IF));
        assert_eq!(ndp_status.mode.as_deref(), Some("generic"));
        let chain = status_now.chain.as_ref().unwrap();
        assert!(
            chain.head >= chain.confirmed && chain.confirmed > 0,
            "{chain:?}"
        );
        let wallet = status_now.wallet.unwrap();
        assert_eq!(wallet.address, lab.chain.operator.address());
        assert!(wallet.low, "{LOW_BALANCE_ETH} ETH is more than anvil gives");
        let text = lab.cli(&["status"])?;
        assert!(
            text.ok()?.contains("LOW: below 1000000 ETH"),
            "{}",
            text.stdout
        );
        assert!(text.ok()?.contains("1 active, 0 idle, 2 never connected"));

        // list: the kernel's peers, routes and NDP entries, and the filters.
        let all = lab.list_allocations(None)?;
        assert_eq!(as_peers(&all), kernel_peers);
        let mut prefixes: Vec<Ipv6Net> = all.iter().map(|v| v.prefix).collect();
        prefixes.sort();
        assert_eq!(ndp, prefixes);
        assert_eq!(routes.len(), 3);
        let active = lab.list_allocations(Some("active"))?;
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].prefix, up.prefix);
        assert!(active[0].last_handshake.is_some());
        // Where its packets come from: server 1 and its WireGuard port.
        let endpoint = lab.server_endpoint(1)?;
        assert_eq!(active[0].endpoint, Some(endpoint));
        let never = lab.list_allocations(Some("never"))?;
        assert!(never.iter().all(|v| v.endpoint.is_none()), "{never:?}");
        assert_eq!(never.len(), 2);
        assert_eq!(lab.list_allocations(Some("idle"))?, []);
        let table = lab.cli(&["allocations", "list"])?;
        assert!(table.ok()?.starts_with("PREFIX"), "{}", table.stdout);
        assert!(table.ok()?.lines().next().unwrap().contains(" ENDPOINT "));
        assert_eq!(table.ok()?.lines().count(), 4);
        let row = |prefix: Ipv6Net| {
            table
                .stdout
                .lines()
                .find(|l| l.starts_with(&format!("{prefix} ")))
                .unwrap()
        };
        assert!(
            row(up.prefix).contains(&format!(" {endpoint} ")),
            "{}",
            table.stdout
        );

        // show, and the prefixes it refuses.
        let shown: AllocationView = show(lab, up.prefix, &["--json"])?.json()?;
        assert_eq!(shown.state, Some(PeerState::Active));
        assert_eq!(shown.nft_contract, *nft);
        assert_eq!(shown.endpoint, Some(endpoint));
        let text = show(lab, up.prefix, &[])?;
        let line = format!("endpoint        {endpoint}");
        assert!(text.ok()?.lines().any(|l| l == line), "{}", text.stdout);
        let free = "2001:db8:100::ff00/120".parse()?;
        show(lab, free, &[])?.fails_with("no allocation has")?;
        show(lab, "2001:db8:100::101/120".parse()?, &[])?.fails_with("host bits set")?;
        show(lab, "2001:db8:200::/120".parse()?, &[])?.fails_with("not in the pool")?;

        // release: peer, route, NDP entry, database, once on chain.
        let gone = all
            .iter()
            .find(|v| v.state == Some(PeerState::Never))
            .unwrap();
        let released: Released = release(lab, gone.prefix, &["--json"])?.json()?;
        assert!(released.peer_removed && released.route_removed && released.ndp_entry_removed);
        assert!(
            matches!(released.on_chain, OnChainRelease::Sent { .. }),
            "{released:?}"
        );
        assert_eq!(lab.released_on_chain(gone.nft_contract).await?, 1);
        let (kernel_peers, routes, ndp) = lab.kernel_state()?;
        let left = lab.list_allocations(None)?;
        assert_eq!(left.len(), 2);
        assert_eq!(as_peers(&left), kernel_peers);
        assert!(!routes.contains(&gone.prefix));
        assert!(!ndp.contains(&gone.prefix));
        assert_eq!(lab.operator_status()?.pool.used, 2);
        release(lab, gone.prefix, &[])?.fails_with("no allocation has")?;

        // Another user: refused by the socket's mode, and by its
        // credentials when the mode lets it connect.
        lab.cli_as(Some(NOBODY), &["status"])?
            .fails_with("permission denied on")?;
        let socket = lab.config.broker.control_socket.clone().unwrap();
        let open = std::os::unix::fs::PermissionsExt::from_mode(0o666);
        std::fs::set_permissions(&socket, open)?;
        lab.cli_as(Some(NOBODY), &["status"])?
            .fails_with("refused: uid 65534")?;

        // No daemon: the database alone, read-only; no release.
        lab.stop_broker()?;
        assert!(!socket.exists(), "the socket outlived the daemon");
        let offline = lab.operator_status()?;
        assert!(!offline.daemon);
        assert_eq!(offline.pool.used, 2);
        assert_eq!(offline.contracts[0].requests.answered, 3);
        assert_eq!(
            (offline.chain, offline.wallet, offline.peers),
            (None, None, None)
        );
        let text = lab.cli(&["status"])?;
        assert!(
            text.ok()?
                .contains("not running: figures from the database")
        );
        let left_offline = lab.list_allocations(None)?;
        assert_eq!(as_peers(&left_offline), as_peers(&left));
        assert!(
            left_offline
                .iter()
                .all(|v| v.state.is_none() && v.endpoint.is_none())
        );
        let shown: AllocationView = show(lab, up.prefix, &["--json"])?.json()?;
        assert_eq!(shown.nft_contract, *nft);
        lab.cli(&["allocations", "list", "--state", "active"])?
            .fails_with("--state needs the daemon")?;
        release(lab, up.prefix, &[])?.fails_with("a release goes through the running daemon")?;
        Ok(())
    });
}

#[test]
fn a_release_killed_midway_finishes_once_after_a_restart() {
    operator_test("opk", async |lab: &mut Lab| {
        // Armed, but only a release reaches it: the tunnel's handshake
        // timeout (120 s) is longer than the test.
        lab.start_broker_serving(Some("after-release=return"))?;
        let (_, nft, _) = lab.request_from_new_server().await?;
        lab.wait_answered(1).await?;
        let prefix = lab.list_allocations(None)?[0].prefix;

        release(lab, prefix, &[])?.fails_with("closed the connection without an answer")?;
        let status_then = lab.broker()?.wait_exit(secs(10))?;
        assert!(killed_by_sigkill(status_then), "{status_then}");
        {
            // The release committed, with the on-chain release owed; the
            // kernel still has the tunnel.
            let db = Store::open(&lab.config.database.path, lab.config.broker.pool)?;
            assert_eq!(db.allocations()?, []);
            assert_eq!(db.owed_releases()?.len(), 1);
        }
        let (peers, _, ndp) = lab.kernel_state()?;
        assert_eq!((peers.len(), ndp), (1, vec![prefix]));
        assert_eq!(lab.released_on_chain(nft).await?, 0);

        // The restart removes the tunnel and sends the release, once.
        lab.start_broker_serving(None)?;
        lab.broker()?
            .wait_log(&["released on chain"], 1, secs(30))?;
        // The status is the snapshot published at the end of a poll: the
        // one after the release's may still be on its way.
        let deadline = Instant::now() + secs(10);
        while lab.operator_status()?.owed_releases != 0 {
            assert!(Instant::now() < deadline, "the owed release still shows");
            std::thread::sleep(Duration::from_millis(100));
        }
        lab.stop_broker()?;
        assert_eq!(lab.kernel_state()?, (vec![], vec![], vec![]));
        assert_eq!(lab.released_on_chain(nft).await?, 1);
        assert_eq!(lab.operator_status()?.pool.used, 0);
        Ok(())
    });
}
