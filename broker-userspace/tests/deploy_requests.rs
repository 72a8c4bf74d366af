//! `blockhost-broker deploy-requests`, the real binary against a real anvil
//! (no root needed). Each test starts its own anvil on its own free port and
//! keeps its key files in its own directory, so the tests run in parallel.
//!
//! Every failure must be one `error: …` line naming its category, come after
//! nothing but progress lines, exit non-zero, print nothing on stdout and
//! never show the key file's content.

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use alloy::{
    network::TransactionBuilder as _,
    primitives::{Address, TxHash, U256},
    providers::Provider,
    rpc::types::TransactionRequest,
    signers::local::PrivateKeySigner,
};
use broker_contracts::{BrokerRequests, devchain::Anvil};

/// A directory of this test's own, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("bbt-deploy-requests-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str, content: &str, mode: u32) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// A fresh random key in a 0600 file: the signer and the file's text.
    fn key(&self, name: &str) -> (PrivateKeySigner, PathBuf, String) {
        let signer = PrivateKeySigner::random();
        let text = format!("0x{}\n", alloy::hex::encode(signer.to_bytes()));
        let path = self.file(name, &text, 0o600);
        (signer, path, text)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A URL where nothing listens.
fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn deploy(url: &str, chain_id: &str, key: &Path) -> Output {
    deploy_in(url, chain_id, key, None)
}

fn deploy_in(url: &str, chain_id: &str, key: &Path, dir: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_blockhost-broker"));
    cmd.args(["deploy-requests", "--rpc-url", url, "--chain-id", chain_id])
        .arg("--operator-key")
        .arg(key)
        .env_remove("BLOCKHOST_BROKER_LOG");
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    cmd.output().expect("the binary runs")
}

/// The progress lines the command may print on stderr before an error.
const PROGRESS: [&str; 5] = [
    "connecting to ",
    "chain ",
    "operator ",
    "sending ",
    "transaction ",
];

/// Where the failure was found: before any network traffic (stderr holds
/// the error line only) or after connecting (progress lines may precede it).
#[derive(PartialEq)]
enum Stage {
    Local,
    Network,
}

/// Checks a failure and returns its error line.
fn assert_fails(out: &Output, stage: Stage, category: &str, secrets: &[&str]) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got {}\n{stdout}\n{stderr}",
        out.status
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty(), "stdout on failure: {stdout}");
    for secret in secrets {
        let secret = secret.trim();
        let bare = secret.strip_prefix("0x").unwrap_or(secret);
        assert!(
            !stdout.contains(bare) && !stderr.contains(bare),
            "key material in the output:\n{stderr}"
        );
    }
    let lines: Vec<&str> = stderr.lines().collect();
    let error = *lines.last().expect("an error line");
    assert!(
        error.starts_with("error: "),
        "last line: {error:?}\n{stderr}"
    );
    assert!(
        error.contains(category),
        "expected {category:?} in {error:?}"
    );
    match stage {
        Stage::Local => assert_eq!(lines.len(), 1, "more than the error line:\n{stderr}"),
        Stage::Network => {
            for line in &lines[..lines.len() - 1] {
                assert!(
                    PROGRESS.iter().any(|p| line.starts_with(p)),
                    "not a progress line: {line:?}\n{stderr}"
                );
            }
        }
    }
    error.to_string()
}

fn field<'a>(stdout: &'a str, label: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{stdout}"))
        .split_whitespace()
        .next()
        .unwrap()
}

#[tokio::test]
async fn deploys_owned_by_the_operator_and_prints_the_config() {
    let anvil = Anvil::start().await.expect("anvil starts");
    let dir = TempDir::new("success");
    let (operator, key, key_text) = dir.key("operator.key");
    anvil
        .set_balance(operator.address(), U256::from(10u64).pow(U256::from(18)))
        .await
        .unwrap();

    // A relative key path, as an operator types it; the config names it
    // absolutely (the daemon runs from another directory).
    let out = deploy_in(&anvil.url, "31337", Path::new("operator.key"), Some(&dir.0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let bare_key = key_text.trim().trim_start_matches("0x");
    assert!(!stdout.contains(bare_key) && !stderr.contains(bare_key));

    let address: Address = field(&stdout, "contract:").parse().unwrap();
    let transaction: TxHash = field(&stdout, "transaction:").parse().unwrap();
    let provider = anvil.provider();
    let code = provider.get_code_at(address).await.unwrap();
    assert!(!code.is_empty(), "no code at {address}");
    assert_eq!(code, BrokerRequests::DEPLOYED_BYTECODE);
    let requests = BrokerRequests::new(address, &provider);
    assert_eq!(requests.owner().call().await.unwrap(), operator.address());
    let receipt = provider
        .get_transaction_receipt(transaction)
        .await
        .unwrap()
        .expect("the printed transaction exists");
    assert_eq!(receipt.contract_address, Some(address));
    assert_eq!(receipt.from, operator.address());
    assert_eq!(
        field(&stdout, "owner:").parse::<Address>().unwrap(),
        operator.address()
    );

    let snippet = format!(
        "[onchain]\nrpc_url = \"{}\"\nchain_id = 31337\nrequests_contract = \"{address}\"\noperator_key_file = \"{}\"\n",
        anvil.url,
        key.display()
    );
    assert!(stdout.contains(&snippet), "no\n{snippet}\nin\n{stdout}");
    assert!(stdout.contains("also needs ecies_key_file"));
    assert!(stdout.contains("registry owner") && stdout.contains("ECIES public key"));

    for step in [
        format!("connecting to {}", anvil.url),
        "chain 31337: ok".to_string(),
        format!("operator {}: balance 1 ETH", operator.address()),
        "sending the deployment transaction".to_string(),
        format!("transaction {transaction}: waiting for the receipt"),
    ] {
        assert!(stderr.contains(&step), "no {step:?} in:\n{stderr}");
    }
}

/// A hosted endpoint's API key (in its path or query) never reaches the
/// output, neither in the progress lines nor in the configuration printed,
/// whether the deployment succeeds or the endpoint cannot be reached.
#[tokio::test]
async fn the_rpc_url_is_printed_without_its_api_key() {
    const API_KEY: &str = "SECRET-api-key-0123456789";
    let anvil = Anvil::start().await.expect("anvil starts");
    let dir = TempDir::new("redacted");
    let (operator, key, _) = dir.key("operator.key");
    anvil
        .set_balance(operator.address(), U256::from(10u64).pow(U256::from(18)))
        .await
        .unwrap();
    // anvil answers on `/` whatever the query.
    let url = format!("{}/?apikey={API_KEY}", anvil.url);
    let out = deploy(&url, "31337", &key);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains(API_KEY) && !stderr.contains(API_KEY),
        "the API key is in the output:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "connecting to {} (expecting chain 31337)",
            anvil.url
        )),
        "{stderr}"
    );
    assert!(
        stdout.contains(&format!(
            "rpc_url = \"{}\"  # complete it: the URL's path and query (they may hold an API key) are not printed\n",
            anvil.url
        )),
        "{stdout}"
    );

    let url = format!("{}/v3/{API_KEY}", dead_url());
    let out = deploy(&url, "31337", &key);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains(API_KEY), "{stderr}");
    assert!(
        stderr.contains("cannot reach the RPC endpoint http://127.0.0.1:"),
        "{stderr}"
    );
}

#[test]
fn unreachable_rpc() {
    let dir = TempDir::new("unreachable");
    let (_, key, text) = dir.key("operator.key");
    let url = dead_url();
    let error = assert_fails(
        &deploy(&url, "31337", &key),
        Stage::Network,
        &format!("cannot reach the RPC endpoint {url}"),
        &[&text],
    );
    assert!(error.contains("Connection refused"), "{error}");
}

/// An https:// endpoint is spoken to in TLS (the binary has TLS built in):
/// the first bytes on the wire are a TLS handshake record.
#[test]
fn https_endpoints_get_tls() {
    let dir = TempDir::new("https");
    let (_, key, text) = dir.key("operator.key");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut first = [0u8; 3];
        conn.read_exact(&mut first).unwrap();
        first
    });
    let url = format!("https://127.0.0.1:{port}");
    assert_fails(
        &deploy(&url, "31337", &key),
        Stage::Network,
        "cannot reach the RPC endpoint",
        &[&text],
    );
    // Unblocks the server if the binary never connected (it then reads
    // this instead of a handshake and the test fails rather than hangs).
    let _ = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| s.write_all(b"no!"));
    let first = server.join().unwrap();
    assert_eq!(first[0], 0x16, "not a TLS handshake record: {first:02x?}");
    assert_eq!(first[1], 0x03);
}

#[tokio::test]
async fn wrong_chain_id() {
    let anvil = Anvil::start().await.expect("anvil starts");
    let dir = TempDir::new("wrong-chain");
    let (operator, key, text) = dir.key("operator.key");
    anvil
        .set_balance(operator.address(), U256::from(10u64).pow(U256::from(18)))
        .await
        .unwrap();
    assert_fails(
        &deploy(&anvil.url, "11155111", &key),
        Stage::Network,
        &format!(
            "wrong chain: {} serves chain 31337, not chain 11155111",
            anvil.url
        ),
        &[&text],
    );
    let nonce = anvil
        .provider()
        .get_transaction_count(operator.address())
        .await
        .unwrap();
    assert_eq!(nonce, 0, "something was sent");
}

#[tokio::test]
async fn empty_wallet() {
    let anvil = Anvil::start().await.expect("anvil starts");
    let dir = TempDir::new("empty");
    let (operator, key, text) = dir.key("operator.key");
    assert_fails(
        &deploy(&anvil.url, "31337", &key),
        Stage::Network,
        &format!(
            "no funds: {} has a balance of 0 on chain 31337; the deployment needs up to ",
            operator.address()
        ),
        &[&text],
    );
    assert_eq!(anvil.provider().get_block_number().await.unwrap(), 0);
}

#[tokio::test]
async fn wallet_too_poor_for_the_gas() {
    let anvil = Anvil::start().await.expect("anvil starts");
    let dir = TempDir::new("poor");
    let (operator, key, text) = dir.key("operator.key");
    anvil
        .set_balance(operator.address(), U256::from(1000))
        .await
        .unwrap();
    assert_fails(
        &deploy(&anvil.url, "31337", &key),
        Stage::Network,
        &format!(
            "insufficient funds: {} holds 0.000000000000001 ETH (1000 wei) on chain 31337; the deployment needs up to ",
            operator.address()
        ),
        &[&text],
    );
    assert_eq!(anvil.provider().get_block_number().await.unwrap(), 0);
}

/// The balance check covers exactly what the node requires (gas limit × max
/// fee per gas): one wei less is refused before sending — also when it is
/// more than gas × the current gas price, which a node still rejects — and
/// exactly enough deploys.
#[tokio::test]
async fn balance_check_is_exact() {
    let anvil = Anvil::start().await.expect("anvil starts");
    let dir = TempDir::new("exact");
    let (operator, key, text) = dir.key("operator.key");
    let provider = anvil.provider();
    let creation = TransactionRequest::default()
        .with_from(operator.address())
        .with_deploy_code(BrokerRequests::BYTECODE.clone());
    let gas = provider.estimate_gas(creation).await.unwrap();
    let fees = provider.estimate_eip1559_fees().await.unwrap();
    let gas_price = provider.get_gas_price().await.unwrap();
    let needed = U256::from(gas) * U256::from(fees.max_fee_per_gas);
    assert!(U256::from(gas) * U256::from(gas_price) < needed - U256::from(1));

    anvil
        .set_balance(operator.address(), needed - U256::from(1))
        .await
        .unwrap();
    assert_fails(
        &deploy(&anvil.url, "31337", &key),
        Stage::Network,
        &format!("insufficient funds: {} holds ", operator.address()),
        &[&text],
    );
    assert_eq!(provider.get_block_number().await.unwrap(), 0);

    anvil.set_balance(operator.address(), needed).await.unwrap();
    let out = deploy(&anvil.url, "31337", &key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn malformed_key_file() {
    let dir = TempDir::new("malformed");
    let url = dead_url();
    for (name, text, category) in [
        (
            "words.key",
            "not a key at all 0123456789abcdef\n",
            "not a 32-byte hex secret key",
        ),
        (
            "short.key",
            "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff",
            "not a 32-byte hex secret key",
        ),
        ("empty.key", "", "not a 32-byte hex secret key"),
        (
            "zero.key",
            &"0".repeat(64),
            "not a valid secp256k1 secret key",
        ),
    ] {
        let key = dir.file(name, text, 0o600);
        let error = assert_fails(&deploy(&url, "31337", &key), Stage::Local, category, &[]);
        assert!(error.contains(&key.display().to_string()), "{error}");
        if !text.is_empty() {
            assert!(!error.contains(text.trim()), "{error}");
            assert!(!error.contains(&text[4..20]), "{error}");
        }
    }
}

#[test]
fn missing_key_file() {
    let dir = TempDir::new("missing");
    let key = dir.0.join("nowhere.key");
    let error = assert_fails(
        &deploy(&dead_url(), "31337", &key),
        Stage::Local,
        &format!("key file {}", key.display()),
        &[],
    );
    assert_eq!(
        error.matches("No such file or directory").count(),
        1,
        "{error}"
    );
}

/// A key given where its file belongs is refused without being echoed.
#[test]
fn key_instead_of_key_file() {
    let signer = PrivateKeySigner::random();
    let secret = format!("0x{}", alloy::hex::encode(signer.to_bytes()));
    assert_fails(
        &deploy(&dead_url(), "31337", Path::new(&secret)),
        Stage::Local,
        "--operator-key: this takes the path of a key file",
        &[&secret],
    );
}

/// Checked before any network traffic: the URL here has nothing behind it.
#[test]
fn world_readable_key_file() {
    let dir = TempDir::new("open");
    let (_, key, text) = dir.key("operator.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_fails(
        &deploy(&dead_url(), "31337", &key),
        Stage::Local,
        &format!(
            "key file {} is readable by group or others (mode 644)",
            key.display()
        ),
        &[&text],
    );
}

#[test]
fn invalid_url() {
    let dir = TempDir::new("bad-url");
    let (_, key, text) = dir.key("operator.key");
    for url in [
        "not a url",
        "localhost:8545",
        "ws://127.0.0.1:8545",
        "http://",
    ] {
        assert_fails(
            &deploy(url, "31337", &key),
            Stage::Local,
            &format!("invalid RPC URL `{url}`"),
            &[&text],
        );
    }
}

#[test]
fn help_explains_the_command_and_the_next_step() {
    let out = Command::new(env!("CARGO_BIN_EXE_blockhost-broker"))
        .args(["deploy-requests", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for text in [
        "BrokerRequests",
        "--rpc-url <URL>",
        "--chain-id <N>",
        "--operator-key <FILE>",
        "mode 0600",
        "balance",
        "[onchain]",
        "registry owner",
        "ECIES public",
    ] {
        assert!(help.contains(text), "--help lacks {text:?}:\n{help}");
    }
}
