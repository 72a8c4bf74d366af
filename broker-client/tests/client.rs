//! The client binary against real anvil chains (no root needed). Each test
//! starts its own chain with the contracts (`DevChain`), so they run in
//! parallel; brokers are answered by a test-side responder speaking the
//! real protocol (see support/mod.rs).

mod support;

use std::os::unix::fs::PermissionsExt as _;

use alloy::primitives::U256;
use broker_contracts::protocol::RequestPayload;
use serde_json::Value;
use support::{ENDPOINT, Env, Reply, Responder, write_new};
use wireguard_control::Key;

const APPROVED: u8 = 1;
const EXPIRED: u8 = 3;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The top-level keys of a flat, pretty-printed JSON file, in file order.
fn keys_in_order(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("  \""))
        .map(|l| l.split('"').next().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_brokers_shows_every_registry_entry() {
    let env = Env::start().await;
    let second = env.add_broker("eu-west").await;
    env.fill(&second).await;

    let table = env.run(&["list-brokers"]).await;
    table.ok();
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", table.stdout);
    assert!(lines[0].starts_with("ID"), "{}", lines[0]);
    assert!(lines[1].starts_with("1 ") && lines[1].contains("dev"));
    assert!(lines[1].contains(&env.dev.requests.to_string()));
    assert!(lines[1].ends_with("unlimited"), "{}", lines[1]);
    assert!(lines[2].starts_with("2 ") && lines[2].contains("eu-west"));
    assert!(lines[2].ends_with(" 0"), "{}", lines[2]);

    let json = env.run(&["list-brokers", "--json"]).await;
    let brokers = json.ok().json();
    let brokers = brokers.as_array().unwrap();
    assert_eq!(brokers.len(), 2);
    assert_eq!(brokers[0]["id"], 1);
    assert_eq!(
        brokers[0]["operator"],
        env.dev.operator.address().to_string()
    );
    assert_eq!(
        brokers[0]["encryption_pubkey"],
        hex::encode(env.dev.ecies_public)
    );
    assert_eq!(brokers[0]["available"], "unlimited");
    assert_eq!(brokers[1]["available"], "0");
    assert_eq!(brokers[1]["active"], true);
    env.done("list_brokers_shows_every_registry_entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_writes_the_files_of_section_7() {
    let env = Env::start().await;
    let broker = env.first_broker();
    let responder = Responder::start(&env.dev.rpc_url, &broker, |_| Reply::Proper);
    let nft = env.nft.to_string();

    let run = env.request(&[]).await;
    let summary = run.ok().json();
    assert_eq!(summary["prefix"], "2001:db8:0:1::100/120");
    assert_eq!(summary["tunnel_address"], "2001:db8:0:1::101");
    assert_eq!(summary["broker_id"], 1);
    assert_eq!(summary["request_id"], 1);

    // The request on chain is §3's JSON, with the field clients' separators.
    let seen = responder.seen();
    assert_eq!(seen.len(), 1);
    let (id, text) = &seen[0];
    assert_eq!(*id, 1);
    assert!(text.starts_with("{\"wgPubkey\": \""), "{text}");
    assert!(text.contains("\", \"nftContract\": \""), "{text}");
    let payload = RequestPayload::parse(text.as_bytes()).unwrap();
    payload.validate().unwrap();
    assert_eq!(payload.nft_contract, nft);

    // server.key: 64 hex digits and a newline, 0600; its public key is the
    // request's serverPubkey.
    let server_key = env.config_dir().join("server.key");
    assert_eq!(mode(&server_key), 0o600);
    let secret_text = std::fs::read_to_string(&server_key).unwrap();
    assert_eq!(secret_text.len(), 65);
    let secret: [u8; 32] = hex::decode(secret_text.trim()).unwrap().try_into().unwrap();
    assert_eq!(
        payload.server_pubkey,
        hex::encode(broker_contracts::protocol::public_key(&secret).unwrap())
    );

    let alloc_path = env.config_dir().join("broker-allocation.json");
    assert_eq!(mode(&alloc_path), 0o640);
    let a = read_json(&alloc_path);
    assert_eq!(
        keys_in_order(&alloc_path),
        [
            "prefix",
            "gateway",
            "broker_pubkey",
            "broker_endpoint",
            "nft_contract",
            "request_id",
            "wg_private_key",
            "wg_public_key",
            "allocated_at",
            "broker_wallet",
            "dns_zone"
        ]
    );
    assert_eq!(a["prefix"], "2001:db8:0:1::100/120");
    assert_eq!(a["gateway"], "2001:db8:0:1::2");
    assert_eq!(a["broker_pubkey"], broker.wg.to_base64());
    assert_eq!(a["broker_endpoint"], ENDPOINT);
    assert_eq!(a["nft_contract"], nft);
    assert_eq!(a["request_id"], 1);
    assert_eq!(a["broker_wallet"], env.dev.operator.address().to_string());
    assert_eq!(a["dns_zone"], "");
    let private = Key::from_base64(a["wg_private_key"].as_str().unwrap()).unwrap();
    assert_eq!(
        private.get_public().to_base64(),
        a["wg_public_key"].as_str().unwrap()
    );
    assert_eq!(a["wg_public_key"].as_str().unwrap(), payload.wg_pubkey);
    let at = a["allocated_at"].as_str().unwrap();
    assert_eq!(at.len(), 25, "{at}");
    assert!(at.ends_with("+00:00") && at.as_bytes()[10] == b'T', "{at}");

    let contract_path = env.config_dir().join("broker-contract.json");
    assert_eq!(mode(&contract_path), 0o640);
    let c = read_json(&contract_path);
    assert_eq!(
        keys_in_order(&contract_path),
        ["requests_contract", "broker_pubkey", "broker_id"]
    );
    assert_eq!(c["requests_contract"], env.dev.requests.to_string());
    assert_eq!(c["broker_pubkey"], hex::encode(env.dev.ecies_public));
    assert_eq!(c["broker_pubkey"].as_str().unwrap().len(), 130);
    assert_eq!(c["broker_id"], 1);
    // No temporary files left behind.
    let mut names: Vec<String> = std::fs::read_dir(env.config_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "broker-allocation.json",
            "broker-contract.json",
            // The registry used (named here: recorded, never checked).
            "known-registry.json",
            "server.key"
        ]
    );

    let status = env.run(&["status", "--json"]).await;
    let status = status.ok().json();
    assert_eq!(status["allocation"]["prefix"], "2001:db8:0:1::100/120");
    assert_eq!(status["onchain"]["status"], "approved");
    assert_eq!(status["onchain"]["is_current"], true);
    let text = env.run(&["status"]).await;
    assert!(text.ok().stdout.contains("prefix: 2001:db8:0:1::100/120"));

    // Run again (as an installer re-run does): the allocation it holds is
    // still the answered one on chain, so nothing is sent and it succeeds.
    let before = std::fs::read_to_string(&alloc_path).unwrap();
    let again = env.request(&[]).await;
    assert_eq!(again.ok().json()["request_id"], 1, "{}", again.stderr);
    assert!(
        again.stderr.contains("already allocated"),
        "{}",
        again.stderr
    );
    assert_eq!(responder.seen().len(), 1);
    assert_eq!(std::fs::read_to_string(&alloc_path).unwrap(), before);
    // For another NFT contract it is refused.
    let other = env.dev.requests.to_string();
    let wallet = env.wallet_key.to_str().unwrap();
    let refused = env
        .run(&["request", "--nft-contract", &other, "--wallet-key", wallet])
        .await;
    let line = refused.one_line_error();
    assert!(
        line.contains("for NFT contract") && line.contains("use `renew`"),
        "{line}"
    );
    env.done("request_writes_the_files_of_section_7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_answers_make_the_client_request_again() {
    let env = Env::start().await;
    let broker = env.first_broker();
    let responder = Responder::start(&env.dev.rpc_url, &broker, |n| match n {
        0 => Reply::WrongId,
        1 => Reply::OtherKey,
        _ => Reply::Proper,
    });
    let run = env.request(&[]).await;
    let summary = run.ok().json();
    assert_eq!(summary["request_id"], 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("carries request id 1001, not 1"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("does not decrypt"), "{}", run.stderr);
    assert_eq!(responder.seen().len(), 3);
    let a = read_json(&env.config_dir().join("broker-allocation.json"));
    assert_eq!(a["request_id"], 3);
    // The same WireGuard key throughout: the answer matches the file.
    let keys: Vec<String> = responder
        .seen()
        .iter()
        .map(|(_, t)| RequestPayload::parse(t.as_bytes()).unwrap().wg_pubkey)
        .collect();
    assert!(
        keys.iter()
            .all(|k| k == a["wg_public_key"].as_str().unwrap())
    );
    assert_eq!(env.request_status(env.dev.requests, 1).await, EXPIRED);
    assert_eq!(env.request_status(env.dev.requests, 3).await, APPROVED);
    env.done("stale_answers_make_the_client_request_again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_stale_answers_end_in_a_one_line_error() {
    let env = Env::start().await;
    let broker = env.first_broker();
    let _responder = Responder::start(&env.dev.rpc_url, &broker, |_| Reply::WrongId);
    let run = env.request(&["--attempts", "2"]).await;
    let line = run.one_line_error();
    assert!(line.contains("2 requests, no valid answer"), "{line}");
    assert!(!env.config_dir().join("broker-allocation.json").exists());
    // The last one was withdrawn: nothing is left pending for the NFT.
    assert_eq!(env.current_request(env.dev.requests).await, 0);
    env.done("only_stale_answers_end_in_a_one_line_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_without_capacity_or_answer_are_skipped() {
    let env = Env::start().await;
    let full = env.first_broker();
    env.fill(&full).await;
    let silent = env.add_broker("dev").await;
    let good = env.add_broker("dev").await;
    let _full = Responder::start(&env.dev.rpc_url, &full, |_| Reply::Proper);
    let silent_seen = Responder::start(&env.dev.rpc_url, &silent, |_| Reply::Silent);
    let _good = Responder::start(&env.dev.rpc_url, &good, |_| Reply::Proper);

    let run = env.request(&["--timeout", "3"]).await;
    let summary = run.ok().json();
    assert_eq!(summary["broker_id"], good.id, "{}", run.stderr);
    assert!(
        run.stderr.contains("skipping broker #1 no free capacity"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("broker #{} failed: no answer", silent.id)),
        "{}",
        run.stderr
    );
    // The silent broker got one request, withdrawn when the client moved on.
    assert_eq!(silent_seen.seen().len(), 1);
    assert_eq!(env.request_status(silent.requests, 1).await, EXPIRED);
    assert_eq!(env.current_request(silent.requests).await, 0);
    let c = read_json(&env.config_dir().join("broker-contract.json"));
    assert_eq!(c["broker_id"], good.id);
    assert_eq!(c["requests_contract"], good.requests.to_string());
    assert_eq!(c["broker_pubkey"], hex::encode(good.ecies_public));

    // --broker-id naming the full one: a clear refusal.
    std::fs::remove_file(env.config_dir().join("broker-allocation.json")).unwrap();
    let run = env.request(&["--broker-id", "1"]).await;
    let line = run.one_line_error();
    assert!(line.contains("#1 no free capacity"), "{line}");
    env.done("brokers_without_capacity_or_answer_are_skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_keeps_the_prefix_under_a_new_key() {
    let env = Env::start().await;
    let broker = env.first_broker();
    let _responder = Responder::start(&env.dev.rpc_url, &broker, |_| Reply::Proper);
    let wallet = env.wallet_key.to_str().unwrap();
    env.request(&[]).await.ok();
    let path = env.config_dir().join("broker-allocation.json");
    let before = read_json(&path);
    let contract_before =
        std::fs::read_to_string(env.config_dir().join("broker-contract.json")).unwrap();

    let run = env.run(&["renew", "--wallet-key", wallet]).await;
    let summary = run.ok().json();
    assert_eq!(summary["prefix_kept"], true);
    assert_eq!(summary["previous_request_id"], 1);
    assert_eq!(summary["request_id"], 2);

    let after = read_json(&path);
    assert_eq!(mode(&path), 0o640);
    assert_eq!(keys_in_order(&path).len(), 11);
    assert_eq!(after["prefix"], before["prefix"]);
    assert_eq!(after["nft_contract"], before["nft_contract"]);
    assert_eq!(after["request_id"], 2);
    assert_ne!(after["wg_private_key"], before["wg_private_key"]);
    assert_ne!(after["wg_public_key"], before["wg_public_key"]);
    let private = Key::from_base64(after["wg_private_key"].as_str().unwrap()).unwrap();
    assert_eq!(
        private.get_public().to_base64(),
        after["wg_public_key"].as_str().unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(env.config_dir().join("broker-contract.json")).unwrap(),
        contract_before
    );
    assert_eq!(env.request_status(env.dev.requests, 1).await, EXPIRED);
    assert_eq!(env.current_request(env.dev.requests).await, 2);
    env.done("renew_keeps_the_prefix_under_a_new_key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_frees_the_allocation_on_chain_and_locally() {
    let env = Env::start().await;
    let broker = env.first_broker();
    let _responder = Responder::start(&env.dev.rpc_url, &broker, |_| Reply::Proper);
    let wallet = env.wallet_key.to_str().unwrap();
    env.request(&[]).await.ok();
    // An installed-looking tunnel configuration for --cleanup-wg to remove
    // (no interface of that name exists, so nothing is taken down).
    std::fs::create_dir_all(env.wg_dir()).unwrap();
    let conf = env.wg_dir().join("bbt-none0.conf");
    write_new(&conf, "[Interface]", 0o600).unwrap();

    let run = env
        .run(&[
            "release",
            "--wallet-key",
            wallet,
            "--cleanup-wg",
            "--interface", // our name, an alias of --wg-interface
            "bbt-none0",
            "--service-manager",
            "direct",
        ])
        .await;
    let out = run.ok().json();
    assert_eq!(out["released"], true);
    assert_eq!(out["request_id"], 1);
    assert!(!env.config_dir().join("broker-allocation.json").exists());
    assert!(!conf.exists());
    assert_eq!(env.request_status(env.dev.requests, 1).await, EXPIRED);
    assert_eq!(env.current_request(env.dev.requests).await, 0);
    let released = broker_contracts::BrokerRequests::new(
        env.dev.requests,
        support::provider(&env.dev.rpc_url, env.dev.deployer.clone()),
    )
    .AllocationReleased_filter()
    .from_block(0)
    .query()
    .await
    .unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].0.requestId, U256::from(1));
    assert_eq!(
        released[0].0.by,
        broker_contracts::devchain::anvil_signer(support::CLIENT).address()
    );

    // Nothing left to release: a one-line error, no change.
    let again = env.run(&["release", "--wallet-key", wallet]).await;
    assert!(again.one_line_error().contains("no allocation"));
    env.done("release_frees_the_allocation_on_chain_and_locally");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_end_in_one_line_errors() {
    let env = Env::start().await;
    let nft = env.nft.to_string();
    let wallet = env.wallet_key.to_str().unwrap().to_string();
    let open_key = env.dir.path().join("open.key");
    write_new(
        &open_key,
        broker_contracts::devchain::ANVIL_KEYS[support::CLIENT],
        0o644,
    )
    .unwrap();
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let missing = env.dir.path().join("missing.key");
    let request = |nft: &str, key: &str| {
        vec![
            "request".to_string(),
            "--nft-contract".into(),
            nft.into(),
            "--wallet-key".into(),
            key.into(),
        ]
    };
    // (arguments, environment changes ("" removes), expected text, exit code)
    type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, &'a str, i32);
    let cases: Vec<Case> = vec![
        (
            request("0x1234", &wallet),
            vec![],
            "invalid value '0x1234'",
            2,
        ),
        (
            request(&nft, missing.to_str().unwrap()),
            vec![],
            "missing.key",
            1,
        ),
        (
            request(&nft, open_key.to_str().unwrap()),
            vec![],
            "readable by group or others",
            1,
        ),
        (
            request(&nft, &wallet),
            vec![("BLOCKHOST_RPC_URL", "http://127.0.0.1:9")],
            "cannot reach the RPC endpoint http://127.0.0.1:9",
            1,
        ),
        (
            request(&nft, &wallet),
            vec![("BLOCKHOST_RPC_URL", "ftp://127.0.0.1:9")],
            "the scheme must be http or https",
            1,
        ),
        (
            request(&nft, &wallet),
            vec![("BLOCKHOST_CHAIN_ID", "1")],
            "wrong chain",
            1,
        ),
        (
            request(&nft, &wallet),
            vec![("BLOCKHOST_REGISTRY_CONTRACT", "")],
            "reading the registry file http://127.0.0.1:9/registry.json",
            1,
        ),
        (
            request(&nft, &wallet),
            vec![
                ("BLOCKHOST_REGISTRY_CONTRACT", ""),
                ("BLOCKHOST_REGISTRY_URL", "ftp://127.0.0.1:9/registry.json"),
            ],
            "is not an http or https URL",
            1,
        ),
        (
            request(&nft, &wallet),
            vec![("BLOCKHOST_CHAIN_ID", ""), ("ETH_CHAIN_ID", "sepolia")],
            "ETH_CHAIN_ID \"sepolia\" is not a chain id",
            1,
        ),
        (
            {
                let mut v = request(&nft, &wallet);
                v.extend([
                    "--requests-contract".to_string(),
                    env.dev.requests.to_string(),
                ]);
                v
            },
            vec![],
            "--broker-pubkey",
            2,
        ),
        (
            {
                let mut v = request(&nft, &wallet);
                v.extend([
                    "--requests-contract".to_string(),
                    env.dev.requests.to_string(),
                    "--broker-pubkey".into(),
                    "04abcd".into(),
                ]);
                v
            },
            vec![],
            "--broker-pubkey \"04abcd\" is not a secp256k1 public key",
            1,
        ),
        (
            {
                let mut v = request(&nft, &wallet);
                v.extend(["--region".to_string(), "nowhere".into()]);
                v
            },
            vec![],
            "no active broker with free capacity in region \"nowhere\"",
            1,
        ),
        (
            request(&env.dev.requests.to_string(), &wallet),
            vec![("BLOCKHOST_TIMEOUT", "2")],
            "Not an ERC721 contract",
            1,
        ),
        (
            request("0x00000000000000000000000000000000000000bb", &wallet),
            vec![],
            "(the NFT contract) on this chain",
            1,
        ),
        (vec!["install".into()], vec![], "no allocation", 1),
        (
            vec!["renew".into(), "--wallet-key".into(), wallet.clone()],
            vec![],
            "no allocation",
            1,
        ),
        (
            vec!["list-brokers".into()],
            vec![(
                "BLOCKHOST_REGISTRY_CONTRACT",
                "0x00000000000000000000000000000000000000aa",
            )],
            "no contract at",
            1,
        ),
    ];
    for (args, envs, expect, code) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = env.command(&args);
        for (k, v) in &envs {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let run = support::run(cmd).await;
        let line = run.one_line_error();
        let all: Vec<&str> = run.stderr.lines().collect();
        assert!(
            line.contains(expect),
            "{args:?}: expected {expect:?} in {line:?}"
        );
        assert_eq!(run.code, Some(code), "{args:?}: {}", run.stderr);
        // Progress lines may come first; the error is the last and only
        // error line.
        assert_eq!(
            all.iter()
                .filter(|l| l.starts_with("broker-client:"))
                .count(),
            1,
            "{args:?}: {}",
            run.stderr
        );
    }
    assert!(!env.config_dir().join("broker-allocation.json").exists());
    assert_eq!(env.current_request(env.dev.requests).await, 0);
    env.done("bad_inputs_end_in_one_line_errors");
}

/// Where the chain comes from: flag > BLOCKHOST_* > ETH_* > the default
/// (the default is never contacted: a wrong higher one must win).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_flags_then_blockhost_then_eth_variables() {
    let env = Env::start().await;
    let good = env.dev.rpc_url.clone();
    let good_id = env.dev.chain_id.to_string();
    let bad = "http://127.0.0.1:9";
    let registry = env.dev.registry.to_string();
    // (arguments, environment ("" removes), expected: Ok or the error text)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, Result<(), &'a str>);
    let cases: Vec<Case> = vec![
        (
            vec![],
            vec![("BLOCKHOST_RPC_URL", ""), ("ETH_RPC_URL", &good)],
            Ok(()),
        ),
        (vec![], vec![("ETH_RPC_URL", bad)], Ok(())),
        (
            vec!["--rpc-url", &good],
            vec![("BLOCKHOST_RPC_URL", bad), ("ETH_RPC_URL", bad)],
            Ok(()),
        ),
        (
            vec![],
            vec![("BLOCKHOST_RPC_URL", bad), ("ETH_RPC_URL", &good)],
            Err("cannot reach the RPC endpoint http://127.0.0.1:9"),
        ),
        (
            vec![],
            vec![("BLOCKHOST_CHAIN_ID", ""), ("ETH_CHAIN_ID", &good_id)],
            Ok(()),
        ),
        (vec![], vec![("ETH_CHAIN_ID", "1")], Ok(())),
        (
            vec!["--chain-id", &good_id],
            vec![("BLOCKHOST_CHAIN_ID", "1"), ("ETH_CHAIN_ID", "1")],
            Ok(()),
        ),
        (
            vec![],
            vec![("BLOCKHOST_CHAIN_ID", ""), ("ETH_CHAIN_ID", "1")],
            Err("wrong chain"),
        ),
        // No chain id anywhere: Sepolia's, which this chain is not.
        (vec![], vec![("BLOCKHOST_CHAIN_ID", "")], Err("11155111")),
        // The field client's name for the registry.
        (
            vec![],
            vec![
                ("BLOCKHOST_REGISTRY_CONTRACT", ""),
                ("BROKER_REGISTRY_CONTRACT", &registry),
            ],
            Ok(()),
        ),
        (
            vec![],
            vec![(
                "BROKER_REGISTRY_CONTRACT",
                "0x00000000000000000000000000000000000000aa",
            )],
            Ok(()),
        ),
    ];
    for (extra, vars, expect) in cases {
        let mut args = vec!["list-brokers", "--json"];
        args.extend(extra);
        let mut cmd = env.command(&args);
        for (k, v) in &vars {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let run = support::run(cmd).await;
        match expect {
            Ok(()) => {
                let brokers = run.ok().json();
                assert_eq!(brokers[0]["id"], 1, "{args:?} {vars:?}");
            }
            Err(text) => {
                let line = run.one_line_error();
                assert!(line.contains(text), "{args:?} {vars:?}: {line}");
            }
        }
    }
    env.done("settings_come_from_flags_then_blockhost_then_eth_variables");
}

/// The registry file: read once, remembered, a changed one refused, a
/// local one preferred (served here from a file: URL-less, by the local
/// path; the HTTP path is the lab's drop-in test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_registry_file_is_refused_unless_accepted() {
    let env = Env::start().await;
    let file = |address: &str, chain: u64| {
        format!(
            "{{\"registry_contract\": \"{address}\", \"chain_id\": {chain}, \"network\": \"dev\"}}"
        )
    };
    let local = env.config_dir().join("registry.json");
    let registry = env.dev.registry.to_string();
    let list = |extra: &'static [&'static str]| {
        let mut args = vec!["list-brokers", "--json"];
        args.extend_from_slice(extra);
        let mut cmd = env.command(&args);
        cmd.env_remove("BLOCKHOST_REGISTRY_CONTRACT");
        cmd
    };
    write_new(&local, &file(&registry, env.dev.chain_id), 0o644).unwrap();
    let first = support::run(list(&[])).await;
    assert_eq!(first.ok().json()[0]["id"], 1);
    let known: Value = read_json(&env.config_dir().join("known-registry.json"));
    let entry = &known[env.dev.chain_id.to_string()];
    assert_eq!(entry["registry_contract"], registry);
    assert_eq!(entry["source"], local.display().to_string());

    // Another chain's file: refused whatever the address.
    std::fs::write(&local, file(&registry, 1)).unwrap();
    let line = support::run(list(&[])).await.one_line_error();
    assert!(line.contains("is for chain 1 (dev), not chain"), "{line}");

    let other = "0x00000000000000000000000000000000000000aa";
    std::fs::write(&local, file(other, env.dev.chain_id)).unwrap();
    let line = support::run(list(&[])).await.one_line_error();
    assert!(line.contains("--accept-new-registry"), "{line}");
    assert!(
        line.contains(&format!(
            "names {}, not {registry} used before",
            other.parse::<alloy::primitives::Address>().unwrap()
        )),
        "{line}"
    );
    // Accepted: the new address is used (and has no contract here).
    let line = support::run(list(&["--accept-new-registry"]))
        .await
        .one_line_error();
    assert!(line.contains("no contract at"), "{line}");
    // Naming a registry needs no file and no acceptance.
    let named = env.run(&["list-brokers", "--json"]).await;
    assert_eq!(named.ok().json()[0]["id"], 1);
    env.done("a_changed_registry_file_is_refused_unless_accepted");
}
