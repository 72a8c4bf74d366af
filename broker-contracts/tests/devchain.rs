//! DevChain against a real anvil: the three deployment phases leave the
//! chain as a real network would be after them, and what runs on chain is
//! what the committed artifacts (and so the bindings) hold.
//!
//! Every test starts its own anvil on its own free port, so they run in
//! parallel.

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf, process::Command};

use alloy::{
    primitives::{Address, Bytes, U256},
    providers::{Provider, ProviderBuilder},
};
use broker_contracts::{
    BrokerRegistry, BrokerRequests,
    devchain::{self, DevChain},
    keys,
};

fn provider(chain: &DevChain) -> impl Provider + Clone {
    ProviderBuilder::new().connect_http(chain.rpc_url.parse().unwrap())
}

fn artifact_code(name: &str, field: &str) -> Bytes {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../contracts/artifacts")
        .join(format!("{name}.json"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let hex = json[field]["object"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no {field}.object", path.display()));
    hex.parse().unwrap()
}

#[tokio::test]
async fn three_phases_register_the_broker_with_its_contract_and_key() {
    let chain = DevChain::start(&devchain::Options::default())
        .await
        .unwrap();
    let provider = provider(&chain);
    let registry = BrokerRegistry::new(chain.registry, &provider);
    let requests = BrokerRequests::new(chain.requests, &provider);

    assert_eq!(
        registry.owner().call().await.unwrap(),
        chain.deployer.address()
    );
    assert_eq!(
        registry.getBrokerCount().call().await.unwrap(),
        U256::from(1)
    );
    assert_eq!(chain.broker_id, U256::from(1), "broker ids are 1-based");

    let broker = registry.getBroker(chain.broker_id).call().await.unwrap();
    assert_eq!(broker.operator, chain.operator.address());
    assert_eq!(broker.requestsContract, chain.requests);
    assert_eq!(broker.encryptionPubkey.len(), 65);
    assert_eq!(broker.encryptionPubkey[0], 0x04, "uncompressed SEC1");
    assert_eq!(
        broker.encryptionPubkey.as_ref(),
        chain.ecies_public.as_slice()
    );
    assert!(broker.active);
    assert_eq!(broker.region, "dev");
    assert_eq!(broker.capacity, U256::ZERO);
    assert!(broker.registeredAt > U256::ZERO);

    // The ECIES secret the chain hands out belongs to the registered key.
    let secret = ecies::SecretKey::parse_slice(&chain.ecies_secret).unwrap();
    assert_eq!(
        ecies::PublicKey::from_secret_key(&secret).serialize(),
        chain.ecies_public
    );

    assert_eq!(
        requests.owner().call().await.unwrap(),
        chain.operator.address()
    );
    assert_eq!(
        registry
            .requestsContractToBrokerId(chain.requests)
            .call()
            .await
            .unwrap(),
        chain.broker_id
    );
    assert!(
        registry
            .isOperator(chain.operator.address())
            .call()
            .await
            .unwrap()
    );
    assert_ne!(chain.deployer.address(), chain.operator.address());
}

#[tokio::test]
async fn options_reach_the_registry_entry() {
    let chain = DevChain::start(&devchain::Options {
        region: "eu-test".into(),
        capacity: 7,
        ..Default::default()
    })
    .await
    .unwrap();
    let provider = provider(&chain);
    let broker = BrokerRegistry::new(chain.registry, &provider)
        .getBroker(chain.broker_id)
        .call()
        .await
        .unwrap();
    assert_eq!(broker.region, "eu-test");
    assert_eq!(broker.capacity, U256::from(7));
}

/// The code anvil runs is byte for byte the committed artifacts'
/// `deployedBytecode`: the bindings deploy the committed `bytecode`, and the
/// two halves of each artifact belong together.
#[tokio::test]
async fn deployed_code_is_the_committed_artifacts() {
    let chain = DevChain::start(&devchain::Options::default())
        .await
        .unwrap();
    let provider = provider(&chain);
    for (name, address) in [
        ("BrokerRequests", chain.requests),
        ("BrokerRegistry", chain.registry),
    ] {
        let on_chain = provider.get_code_at(address).await.unwrap();
        assert!(!on_chain.is_empty(), "{name}: no code at {address}");
        assert_eq!(
            on_chain,
            artifact_code(name, "deployedBytecode"),
            "{name}: the code on chain is not the artifact's deployedBytecode"
        );
    }
    assert_eq!(
        BrokerRequests::BYTECODE,
        artifact_code("BrokerRequests", "bytecode")
    );
    assert_eq!(
        BrokerRegistry::BYTECODE,
        artifact_code("BrokerRegistry", "bytecode")
    );
    assert_eq!(provider.get_code_at(Address::ZERO).await.unwrap().len(), 0);
}

/// The devchain binary (what `cargo xtask chain` runs) with --exit: prints
/// the addresses and a config snippet, writes both keys with mode 0600, and
/// stops its anvil.
#[test]
fn devchain_binary_writes_keys_and_prints_the_config() {
    let dir = std::env::temp_dir().join(format!("bbt-devchain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_devchain"))
        .arg("--dir")
        .arg(&dir)
        .arg("--exit")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");

    let operator_key = dir.join("operator.key");
    let ecies_key = dir.join("ecies.key");
    for key in [&operator_key, &ecies_key] {
        let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
        keys::check_private(key).unwrap();
    }
    let operator = keys::read_signer(&operator_key).unwrap();
    assert_eq!(operator.address(), devchain::anvil_signer(1).address());
    assert!(stdout.contains(&format!("operator:          {}", operator.address())));
    for line in [
        "[onchain]".to_string(),
        "chain_id = 31337".to_string(),
        format!("operator_key_file = \"{}\"", operator_key.display()),
        format!("ecies_key_file = \"{}\"", ecies_key.display()),
    ] {
        assert!(stdout.contains(&line), "missing {line:?} in:\n{stdout}");
    }
    for key in ["rpc_url = ", "registry_contract = ", "requests_contract = "] {
        assert!(stdout.contains(key), "missing {key:?} in:\n{stdout}");
    }
    // The secrets are only in the files.
    let secret = std::fs::read_to_string(&ecies_key).unwrap();
    assert!(!stdout.contains(secret.trim()) && !stderr.contains(secret.trim()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn devchain_binary_help_and_bad_arguments() {
    let help = Command::new(env!("CARGO_BIN_EXE_devchain"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for word in ["--dir", "--port", "--exit", "Ctrl-C", "three phases"] {
        assert!(text.contains(word), "--help lacks {word:?}:\n{text}");
    }
    let missing_dir = Command::new(env!("CARGO_BIN_EXE_devchain"))
        .arg("--exit")
        .output()
        .unwrap();
    assert!(!missing_dir.status.success());
    assert!(String::from_utf8_lossy(&missing_dir.stderr).contains("--dir"));
}
