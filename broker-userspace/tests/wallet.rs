//! `blockhost-broker wallet` through the real binary: keys made and read
//! (no root, no network), balances read from a real anvil. Each test keeps
//! its files in a directory of its own, so the tests run in parallel.
//!
//! Every failure is one `error: …` line, exit status 1, nothing on stdout,
//! and never the key.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use alloy::primitives::{Address, U256};
use broker_contracts::{devchain::Anvil, keys};

fn wallet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blockhost-broker"))
        .arg("wallet")
        .args(args)
        .env_remove("BLOCKHOST_BROKER_CONFIG")
        .env_remove("BLOCKHOST_BROKER_LOG")
        .output()
        .expect("the binary runs")
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The one line on stdout of a success.
fn succeeds(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    lines[0].to_string()
}

/// Checks a failure and returns its error line.
fn fails(out: &Output, expected: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty(), "stdout on failure: {stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "more than one line:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].contains(expected),
        "expected {expected:?} in {stderr}"
    );
    lines[0].to_string()
}

fn key_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn generate_then_address_and_never_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("operator.key");
    let out = wallet(&["generate", "-o", path_str(&key)]);
    let address = succeeds(&out);
    let text = key_text(&key);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(&text), "the key was printed");
    assert_eq!(mode(&key), 0o600);
    assert_eq!(text.len(), 64);
    // A checksummed address, the key's.
    let parsed: Address = address.parse().unwrap();
    assert_eq!(address, parsed.to_checksum(None));
    assert_eq!(parsed, keys::read_signer(&key).unwrap().address());
    // Nothing else in the directory (no temporary file left).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    assert_eq!(
        succeeds(&wallet(&["address", "-k", path_str(&key)])),
        address
    );
    assert_eq!(
        succeeds(&wallet(&["address", "--key", path_str(&key)])),
        address
    );

    // An existing file is never overwritten without --force; the error
    // names the address that would be lost.
    let e = fails(
        &wallet(&["generate", "-o", path_str(&key)]),
        "pass --force to replace it",
    );
    assert!(e.contains(&address), "{e}");
    assert_eq!(key_text(&key), text);
    // Not even a file that holds no key.
    let other = dir.path().join("notes.txt");
    std::fs::write(&other, "keep me\n").unwrap();
    fails(&wallet(&["generate", "-o", path_str(&other)]), "exists");
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "keep me\n");

    let out = wallet(&["generate", "-o", path_str(&key), "--force"]);
    let replacement = succeeds(&out);
    assert_ne!(replacement, address);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("replaced the key of {address}")),
        "{stderr}"
    );
    assert_ne!(key_text(&key), text);
    assert_eq!(mode(&key), 0o600);
    assert_eq!(
        succeeds(&wallet(&["address", "-k", path_str(&key)])),
        replacement
    );
}

#[test]
fn generate_into_a_missing_directory_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("no/such/dir/operator.key");
    fails(
        &wallet(&["generate", "-o", path_str(&key)]),
        "No such file or directory",
    );
}

/// A key file in `dir` with `content` and `mode`.
fn key_file(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// anvil's third development key (public, see devchain::ANVIL_KEYS) and its
/// well-known address.
const DEV_KEY: &str = "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
const DEV_ADDRESS: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";

#[test]
fn address_refuses_bad_missing_and_open_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let good = key_file(d, "good.key", &format!("0x{DEV_KEY}\n"), 0o600);
    assert_eq!(
        succeeds(&wallet(&["address", "-k", path_str(&good)])),
        DEV_ADDRESS
    );

    let missing = d.join("missing.key");
    fails(
        &wallet(&["address", "-k", path_str(&missing)]),
        "No such file or directory",
    );

    for (name, mode) in [("group.key", 0o640), ("world.key", 0o604)] {
        let open = key_file(d, name, DEV_KEY, mode);
        let e = fails(
            &wallet(&["address", "-k", path_str(&open)]),
            "readable by group or others",
        );
        assert!(e.contains("chmod 600"), "{e}");
    }

    let secret_looking = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeX";
    let malformed = key_file(d, "malformed.key", secret_looking, 0o600);
    let e = fails(
        &wallet(&["address", "-k", path_str(&malformed)]),
        "not a 32-byte hex secret key",
    );
    assert!(!e.contains(secret_looking), "the content was echoed: {e}");

    let zero = key_file(d, "zero.key", &"0".repeat(64), 0o600);
    fails(
        &wallet(&["address", "-k", path_str(&zero)]),
        "not a valid secp256k1 secret key",
    );

    // The key itself where its file belongs: refused, never echoed.
    let e = fails(
        &wallet(&["address", "-k", DEV_KEY]),
        "looks like a key, not a file",
    );
    assert!(!e.contains(DEV_KEY), "{e}");
}

#[test]
fn help_explains_each_command() {
    let out = wallet(&["generate", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("mode 0600"), "{help}");
    assert!(help.contains("--force"), "{help}");
    let out = wallet(&["balance", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["--rpc-url", "--chain-id", "--config", "[onchain]"] {
        assert!(help.contains(word), "no {word} in:\n{help}");
    }
}

/// `wallet balance -k KEY --rpc-url URL --chain-id ID`.
fn balance(key: &Path, url: &str, chain_id: &str) -> Output {
    wallet(&[
        "balance",
        "-k",
        path_str(key),
        "--rpc-url",
        url,
        "--chain-id",
        chain_id,
    ])
}

fn balance_line(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].starts_with("address  0x"), "{stdout}");
    assert!(
        lines[1].starts_with("chain    31337 at http://127.0.0.1:"),
        "{stdout}"
    );
    lines[2].to_string()
}

#[tokio::test]
async fn balance_of_a_funded_an_exact_and_an_empty_account() {
    let anvil = Anvil::start().await.expect("anvil starts");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let funded = key_file(d, "funded.key", DEV_KEY, 0o600);
    let balance = |key: &Path| balance(key, &anvil.url, "31337");

    let out = balance(&funded);
    assert_eq!(
        balance_line(&out),
        "balance  10000 ETH (10000000000000000000000 wei)"
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("address  {DEV_ADDRESS}\n")));

    // A new key: nothing, then exactly what was given, to the last wei.
    let fresh = d.join("fresh.key");
    let address: Address = succeeds(&wallet(&["generate", "-o", path_str(&fresh)]))
        .parse()
        .unwrap();
    assert_eq!(balance_line(&balance(&fresh)), "balance  0 ETH (0 wei)");
    anvil
        .set_balance(address, U256::from(1_500_000_000_000_000_001u128))
        .await
        .unwrap();
    assert_eq!(
        balance_line(&balance(&fresh)),
        "balance  1.500000000000000001 ETH (1500000000000000001 wei)"
    );
    anvil.set_balance(address, U256::from(1)).await.unwrap();
    assert_eq!(
        balance_line(&balance(&fresh)),
        "balance  0.000000000000000001 ETH (1 wei)"
    );
}

#[tokio::test]
async fn balance_takes_the_chain_from_the_configuration() {
    let anvil = Anvil::start().await.expect("anvil starts");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = key_file(d, "funded.key", DEV_KEY, 0o600);
    // Only [onchain] is read: the rest of the file may be unfinished.
    let config = d.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\nupstream_interface = \"eth0\"\n\n[onchain]\nrpc_url = \"{}\"\nchain_id = 31337\n",
            anvil.url
        ),
    )
    .unwrap();
    let with_config = |extra: &[&str]| {
        let mut args = vec![
            "balance",
            "-k",
            path_str(&key),
            "--config",
            path_str(&config),
        ];
        args.extend(extra);
        wallet(&args)
    };
    assert_eq!(
        balance_line(&with_config(&[])),
        "balance  10000 ETH (10000000000000000000000 wei)"
    );
    // A flag wins over the file: another chain id is refused by the node's.
    fails(
        &with_config(&["--chain-id", "1"]),
        "wrong chain: http://127.0.0.1:",
    );
    // The environment names the configuration too, as for `run`.
    let out = Command::new(env!("CARGO_BIN_EXE_blockhost-broker"))
        .args(["wallet", "balance", "-k", path_str(&key)])
        .env("BLOCKHOST_BROKER_CONFIG", &config)
        .output()
        .unwrap();
    assert_eq!(
        balance_line(&out),
        "balance  10000 ETH (10000000000000000000000 wei)"
    );

    // No configuration and no flags; a configuration without the chain.
    let missing = d.join("missing.toml");
    let e = fails(
        &wallet(&[
            "balance",
            "-k",
            path_str(&key),
            "--config",
            path_str(&missing),
        ]),
        "No such file or directory",
    );
    assert!(e.contains("pass --rpc-url and --chain-id"), "{e}");
    std::fs::write(&config, format!("[onchain]\nrpc_url = \"{}\"\n", anvil.url)).unwrap();
    fails(&with_config(&[]), "no --chain-id, and");
    fails(&with_config(&[]), "has no [onchain] chain_id");
}

#[test]
fn balance_failures_are_one_line_and_hide_the_endpoints_path() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "k.key", DEV_KEY, 0o600);
    // Nothing listens on port 1; the path stands for a hosted endpoint's
    // API key, which no error may show.
    let e = fails(
        &balance(&key, "http://127.0.0.1:1/v3/SECRET-API-KEY", "1"),
        "cannot reach the RPC endpoint http://127.0.0.1:1",
    );
    assert!(!e.contains("SECRET-API-KEY"), "{e}");
    fails(&balance(&key, "ws://127.0.0.1:1", "1"), "invalid RPC URL");
    // A bad key file is found before anything goes on the wire.
    let open = key_file(dir.path(), "open.key", DEV_KEY, 0o644);
    fails(
        &balance(&open, "http://127.0.0.1:1", "1"),
        "readable by group or others",
    );
}
