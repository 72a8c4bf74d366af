//! `install` for real, as root, in network namespaces: a "broker" namespace
//! with a wireguard-go interface standing in for the broker (its WireGuard
//! key, the gateway address, a route to the allocated prefix), joined by a
//! veth to a "server" namespace where the client runs `install` (wg-quick,
//! falling back to wireguard-go without the kernel module) from an
//! allocation file, then `release`-free clean-up through the guards.

mod support;

use std::{os::unix::fs::PermissionsExt as _, path::Path, time::Instant};

use broker_lab::{
    files::write_private,
    names::interface_name,
    netns::{End, Netns, run, veth},
    wireguard::{self, WireguardGo},
};
use support::{CLIENT_BIN, Run, write_new};
use wireguard_control::Key;

const PREFIX: &str = "2001:db8:0:1::100/120";
const GATEWAY: &str = "2001:db8:0:1::2";

/// `cargo xtask setup` installs them; a missing one fails the test.
fn check_tools() {
    for tool in ["ip", "wg", "wg-quick", "wireguard-go", "ping"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        assert!(found, "{tool} is not installed: run `cargo xtask setup`");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_brings_the_tunnel_up_and_the_gateway_answers() {
    check_tools();
    let started = Instant::now();
    let broker_ns = Netns::unique("b").unwrap();
    let server_ns = Netns::unique("s").unwrap();
    let veth_b = "veth-b";
    veth(End::new(&broker_ns, veth_b), End::new(&server_ns, "veth-s")).unwrap();
    broker_ns
        .ip(&["-6", "addr", "add", "fd00:bb::1/64", "dev", veth_b])
        .unwrap();
    server_ns
        .ip(&["-6", "addr", "add", "fd00:bb::2/64", "dev", "veth-s"])
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let broker_key = Key::generate_private();
    let client_key = Key::generate_private();

    // The broker's end: wireguard-go, its key from a 0600 file, the client
    // as a peer allowed the prefix, the gateway address, a route.
    let broker_if = interface_name("b");
    let _broker_wg = WireguardGo::guard(&broker_ns, &broker_if);
    wireguard::start(&broker_ns, &broker_if).unwrap();
    let key_file = dir.path().join("broker-wg.key");
    write_private(&key_file, &broker_key.to_base64()).unwrap();
    run(broker_ns.command("wg").args([
        "set",
        &broker_if,
        "listen-port",
        "51820",
        "private-key",
        key_file.to_str().unwrap(),
        "peer",
        &client_key.get_public().to_base64(),
        "allowed-ips",
        PREFIX,
    ]))
    .unwrap();
    for args in [
        &[
            "-6",
            "addr",
            "add",
            &format!("{GATEWAY}/128"),
            "dev",
            &broker_if,
        ][..],
        &["link", "set", &broker_if, "up"],
        &["-6", "route", "add", PREFIX, "dev", &broker_if],
    ] {
        broker_ns.ip(args).unwrap();
    }

    // The server's end: the allocation file as `request` writes it.
    let config_dir = dir.path().join("etc");
    std::fs::create_dir(&config_dir).unwrap();
    let allocation = serde_json::json!({
        "prefix": PREFIX,
        "gateway": GATEWAY,
        "broker_pubkey": broker_key.get_public().to_base64(),
        "broker_endpoint": "[fd00:bb::1]:51820",
        "nft_contract": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
        "request_id": 1,
        "wg_private_key": client_key.to_base64(),
        "wg_public_key": client_key.get_public().to_base64(),
        "allocated_at": "2026-11-03T18:34:23+00:00",
        "broker_wallet": "",
        "dns_zone": "",
    });
    write_new(
        &config_dir.join("broker-allocation.json"),
        &serde_json::to_string_pretty(&allocation).unwrap(),
        0o640,
    )
    .unwrap();
    let wg_dir = dir.path().join("wireguard");
    let client_if = interface_name("s");
    let _client_wg = WireguardGo::guard(&server_ns, &client_if);

    let mut cmd = server_ns.command(CLIENT_BIN);
    support::clean_env(&mut cmd);
    cmd.args(["install", "--interface", &client_if])
        .arg("--config-dir")
        .arg(&config_dir)
        .arg("--wg-config-dir")
        .arg(&wg_dir)
        .args(["--service-manager", "direct", "--check-timeout", "20"]);
    let installed: Run = support::run(cmd).await;
    let out = installed.ok().json();
    assert_eq!(out["mode"], "direct");
    assert_eq!(out["gateway_answers"], true, "{}", installed.stderr);
    assert_eq!(out["address"], "2001:db8:0:1::101");
    assert!(installed.stderr.contains("brought"), "{}", installed.stderr);

    let conf = wg_dir.join(format!("{client_if}.conf"));
    assert_eq!(mode(&conf), 0o600);
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains("Address = 2001:db8:0:1::101/128"), "{text}");
    assert!(text.contains("AllowedIPs = ::/0"), "{text}");
    assert!(text.contains("PersistentKeepalive = 25"), "{text}");
    // The tunnel address is on the interface, and the broker saw a handshake.
    let addrs = server_ns
        .ip(&["-6", "addr", "show", "dev", &client_if])
        .unwrap();
    assert!(addrs.contains("2001:db8:0:1::101/128"), "{addrs}");
    let handshakes = run(broker_ns
        .command("wg")
        .args(["show", &broker_if, "latest-handshakes"]))
    .unwrap();
    let handshakes = String::from_utf8_lossy(&handshakes.stdout);
    assert!(
        handshakes
            .split_whitespace()
            .nth(1)
            .is_some_and(|t| t != "0"),
        "{handshakes}"
    );

    // Installing again replaces the running tunnel (as after `renew`).
    let mut again = server_ns.command(CLIENT_BIN);
    again
        .args(["install", "--interface", &client_if])
        .arg("--config-dir")
        .arg(&config_dir)
        .arg("--wg-config-dir")
        .arg(&wg_dir)
        .args(["--service-manager", "direct", "--check-timeout", "20"]);
    let again = support::run(again).await;
    assert_eq!(again.ok().json()["gateway_answers"], true);
    eprintln!(
        "install_brings_the_tunnel_up_and_the_gateway_answers: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}
