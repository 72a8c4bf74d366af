//! The operator's surface end to end: `blockhost-broker status` and
//! `allocations list|show|release` against the real daemon, through its
//! control socket, and against the database alone when no daemon runs (the
//! lab: tests/support/lab.rs).

mod support;

use std::{os::unix::fs::PermissionsExt as _, time::Instant};

use broker_userspace::{
    ipam::Pool,
    operator::{AllocationView, PeerState, Released},
    store::Store,
};
use ipnet::Ipv6Net;
use support::{
    daemon::killed_by_sigkill,
    lab::{ALLOCATION_SIZE, GATEWAY, LOW_BALANCE_ETH, Lab, UPSTREAM, as_peers, lab_test, secs},
};
use wireguard_control::Key;
#[test]
fn status_list_show_and_release_agree_with_the_database_the_kernel_and_the_chain() {
    lab_test("ops", async |lab: &mut Lab| {
        lab.start_daemon(None);
        let keys: Vec<Key> = (0..3).map(|_| Key::generate_private()).collect();
        let mut nfts = Vec::new();
        for key in &keys {
            nfts.push(lab.request(key).await);
        }
        lab.wait_answered(3).await;
        let all = lab.list(None);
        assert_eq!(all.len(), 3, "{all:?}");
        let up = all
            .iter()
            .find(|v| v.wireguard_key == keys[0].get_public().to_base64())
            .unwrap()
            .clone();
        assert_eq!(up.nft_contract, nfts[0]);
        lab.bring_up_tunnel(&keys[0], up.prefix);
        // The daemon's next poll sees the handshake.
        let deadline = Instant::now() + secs(30);
        while lab.status().peers.unwrap().active == 0 {
            assert!(Instant::now() < deadline, "no handshake seen");
            lab.server.ping(GATEWAY);
        }

        // status: the database, the kernel, the chain.
        let status = lab.status();
        assert!(status.daemon);
        // A /64 in /120s; the first is the broker's.
        assert_eq!((status.pool.used, status.pool.total), (3, (1 << 56) - 1));
        assert_eq!(status.pool.free, status.pool.total - 3);
        let requests = status.contracts[0].requests;
        assert_eq!(
            (requests.seen, requests.answered, requests.pending),
            (3, 3, 0)
        );
        let peers = status.peers.unwrap();
        assert_eq!((peers.active, peers.idle, peers.never), (1, 0, 2));
        let (kernel_peers, routes, ndp) = lab.kernel();
        let ndp_status = status.ndp.as_ref().unwrap();
        assert_eq!(ndp_status.prefixes, ndp.len());
        assert_eq!(ndp_status.interface.as_deref(), Some("b0"));
        assert_eq!(ndp_status.mode.as_deref(), Some("generic"));
        let chain = status.chain.as_ref().unwrap();
        assert!(
            chain.head >= chain.confirmed && chain.confirmed > 0,
            "{chain:?}"
        );
        let wallet = status.wallet.unwrap();
        assert_eq!(wallet.address, lab.dev.operator.address());
        assert!(wallet.low, "{LOW_BALANCE_ETH} ETH is more than anvil gives");
        let text = lab.cli(&["status"]);
        assert!(
            text.ok().contains("LOW: below 1000000 ETH"),
            "{}",
            text.stdout
        );
        assert!(text.ok().contains("1 active, 0 idle, 2 never connected"));

        // list: the kernel's peers, routes and NDP entries, and the filters.
        let all = lab.list(None);
        assert_eq!(as_peers(&all), kernel_peers);
        let mut prefixes: Vec<Ipv6Net> = all.iter().map(|v| v.prefix).collect();
        prefixes.sort();
        assert_eq!(ndp, prefixes);
        assert_eq!(routes.len(), 3);
        let active = lab.list(Some("active"));
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].prefix, up.prefix);
        assert!(active[0].last_handshake.is_some());
        assert_eq!(lab.list(Some("never")).len(), 2);
        assert_eq!(lab.list(Some("idle")), []);
        let table = lab.cli(&["allocations", "list"]);
        assert!(table.ok().starts_with("PREFIX"), "{}", table.stdout);
        assert_eq!(table.ok().lines().count(), 4);

        // show, and the prefixes it refuses.
        let shown: AllocationView = lab
            .cli(&["allocations", "show", &up.prefix.to_string(), "--json"])
            .json();
        assert_eq!(shown.state, Some(PeerState::Active));
        assert_eq!(shown.nft_contract, nfts[0]);
        let free = "2001:db8:100::ff00/120";
        lab.cli(&["allocations", "show", free])
            .fails_with("no allocation has");
        lab.cli(&["allocations", "show", "2001:db8:100::101/120"])
            .fails_with("host bits set");
        lab.cli(&["allocations", "show", "2001:db8:200::/120"])
            .fails_with("not in the pool");

        // release: peer, route, NDP entry, database, once on chain.
        let gone = all
            .iter()
            .find(|v| v.state == Some(PeerState::Never))
            .unwrap();
        let nft = gone.nft_contract;
        let released: Released = lab
            .cli(&["allocations", "release", &gone.prefix.to_string(), "--json"])
            .json();
        assert!(released.peer_removed && released.route_removed && released.ndp_entry_removed);
        assert!(
            matches!(
                released.on_chain,
                broker_userspace::operator::OnChainRelease::Sent { .. }
            ),
            "{released:?}"
        );
        assert_eq!(lab.released_on_chain(nft).await, 1);
        let (kernel_peers, routes, ndp) = lab.kernel();
        let left = lab.list(None);
        assert_eq!(left.len(), 2);
        assert_eq!(as_peers(&left), kernel_peers);
        assert!(!routes.contains(&gone.prefix.to_string()));
        assert!(!ndp.contains(&gone.prefix));
        assert_eq!(lab.status().pool.used, 2);
        lab.cli(&["allocations", "release", &gone.prefix.to_string()])
            .fails_with("no allocation has");

        // Another user: refused by the socket's mode, and by its
        // credentials when the mode lets it connect.
        let nobody = Some("65534");
        lab.cli_as(nobody, &["status"])
            .fails_with("permission denied on");
        let open = std::fs::Permissions::from_mode(0o666);
        std::fs::set_permissions(&lab.socket, open).unwrap();
        lab.cli_as(nobody, &["status"])
            .fails_with("refused: uid 65534");

        // No daemon: the database alone, read-only; no release.
        lab.daemon().stop();
        assert!(!lab.socket.exists(), "the socket outlived the daemon");
        let offline = lab.status();
        assert!(!offline.daemon);
        assert_eq!(offline.pool.used, 2);
        assert_eq!(offline.contracts[0].requests.answered, 3);
        assert_eq!(
            (offline.chain, offline.wallet, offline.peers),
            (None, None, None)
        );
        let text = lab.cli(&["status"]);
        assert!(text.ok().contains("not running: figures from the database"));
        let left_offline = lab.list(None);
        assert_eq!(as_peers(&left_offline), as_peers(&left));
        assert!(left_offline.iter().all(|v| v.state.is_none()));
        let shown: AllocationView = lab
            .cli(&["allocations", "show", &up.prefix.to_string(), "--json"])
            .json();
        assert_eq!(shown.nft_contract, nfts[0]);
        lab.cli(&["allocations", "list", "--state", "active"])
            .fails_with("--state needs the daemon");
        lab.cli(&["allocations", "release", &up.prefix.to_string()])
            .fails_with("a release goes through the running daemon");
    });
}

#[test]
fn a_release_killed_midway_finishes_once_after_a_restart() {
    lab_test("opk", async |lab: &mut Lab| {
        // Armed, but only a release reaches it: the tunnel's handshake
        // timeout (120 s) is longer than the test.
        lab.start_daemon(Some("after-release=return"));
        let nft = lab.request(&Key::generate_private()).await;
        lab.wait_answered(1).await;
        let prefix = lab.list(None)[0].prefix;

        let run = lab.cli(&["allocations", "release", &prefix.to_string()]);
        run.fails_with("closed the connection without an answer");
        let status = lab.daemon().wait_exit(secs(10));
        assert!(killed_by_sigkill(status), "{status}");
        {
            // The release committed, with the on-chain release owed; the
            // kernel still has the tunnel.
            let pool = Pool::new(UPSTREAM.parse().unwrap(), ALLOCATION_SIZE).unwrap();
            let db = Store::open(&lab.db_path, pool).unwrap();
            assert_eq!(db.allocations().unwrap(), []);
            assert_eq!(db.owed_releases().unwrap().len(), 1);
        }
        let (peers, _, ndp) = lab.kernel();
        assert_eq!((peers.len(), ndp), (1, vec![prefix]));
        assert_eq!(lab.released_on_chain(nft).await, 0);

        // The restart removes the tunnel and sends the release, once.
        lab.start_daemon(None);
        lab.daemon().wait_log("released on chain", 1, secs(30));
        assert_eq!(lab.status().owed_releases, 0);
        lab.daemon().stop();
        assert_eq!(lab.kernel(), (vec![], vec![], vec![]));
        assert_eq!(lab.released_on_chain(nft).await, 1);
        assert_eq!(lab.status().pool.used, 0);
    });
}
