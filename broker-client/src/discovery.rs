//! Which BrokerRegistry to use when none is named: the registry file, as
//! the field client reads it (`{"registry_contract": "0x…", "chain_id": N,
//! "network": "…"}`), from CONFIG_DIR/registry.json when the operator put
//! one there, else from --registry-url (the published file by default).
//!
//! A file fetched over the network is only as trustworthy as whoever can
//! change it, so the address used last is remembered per chain in
//! CONFIG_DIR/known-registry.json and a different one is refused unless
//! the operator says so (--accept-new-registry, or naming the registry):
//! a tampered file cannot silently move a server to another broker network.

use std::{
    collections::BTreeMap,
    io::Read as _,
    path::{Path, PathBuf},
    time::Duration,
};

use alloy::primitives::Address;
use anyhow::{Context as _, bail};
use broker_contracts::error_text::one_line;
use serde::{Deserialize, Serialize};

use crate::{cli::Global, files};

/// The field client's `REGISTRY_CONFIG_URL`.
pub const PUBLISHED_URL: &str =
    "https://raw.githubusercontent.com/mwaddip/blockhost-broker/main/registry.json";
/// An operator's own registry file, preferred to the URL.
pub const LOCAL_FILE: &str = "registry.json";
/// The registries this server used, by chain id.
pub const KNOWN_FILE: &str = "known-registry.json";
/// The published file is ~120 bytes; anything near this is not one.
const MAX_BYTES: usize = 16 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const KNOWN_MODE: u32 = 0o644;

/// Where the registry address came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// --registry-contract or its environment variables.
    Named,
    /// A registry file: its path or URL.
    File(String),
    /// CONFIG_DIR/known-registry.json (commands that only need a registry
    /// they used before, and fetch nothing).
    Known,
}

#[derive(Clone, Debug)]
pub struct Registry {
    pub address: Address,
    pub origin: Origin,
}

impl Registry {
    /// For progress lines.
    pub fn describe(&self) -> String {
        match &self.origin {
            Origin::Named => format!("registry {}", self.address),
            Origin::File(from) => format!("registry {} (from {from})", self.address),
            Origin::Known => format!("registry {} (used before)", self.address),
        }
    }
}

/// The registry file's fields (unknown ones are ignored).
#[derive(Debug, Deserialize)]
struct RegistryFile {
    registry_contract: String,
    chain_id: u64,
    #[serde(default)]
    network: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct KnownEntry {
    registry_contract: String,
    /// Where it came from (a path, a URL, or "--registry-contract").
    source: String,
    recorded_at: String,
}

/// The registry to use on chain `chain_id`: the named one, else the
/// registry file's, checked against the one used before.
pub async fn resolve(global: &Global, chain_id: u64) -> anyhow::Result<Registry> {
    if let Some(address) = global.explicit_registry()? {
        return Ok(Registry {
            address,
            origin: Origin::Named,
        });
    }
    let local = global.config_dir.join(LOCAL_FILE);
    let (from, bytes) = match read_local(&local)? {
        Some(bytes) => (local.display().to_string(), bytes),
        None => {
            eprintln!("reading the registry file {}", global.registry_url);
            let bytes = fetch(&global.registry_url).await?;
            (global.registry_url.clone(), bytes)
        }
    };
    let address = parse(&from, &bytes, chain_id)?;
    if let Some(known) = known_entry(&global.config_dir, chain_id)? {
        let before: Address =
            files::parse_address("registry_contract", &known.registry_contract)
                .with_context(|| known_path(&global.config_dir).display().to_string())?;
        if before != address && !global.accept_new_registry {
            bail!(
                "the registry file {from} names {address}, not {before} used before: refused unless --accept-new-registry (or --registry-contract) says the change is genuine (a changed file could move this server to another broker network; {} records the one used)",
                known_path(&global.config_dir).display()
            );
        }
        if before != address {
            eprintln!(
                "note: the registry changed from {before} to {address} (--accept-new-registry)"
            );
        }
    }
    Ok(Registry {
        address,
        origin: Origin::File(from),
    })
}

/// The named registry, else the one this server used last on the chain
/// (nothing is fetched); None when there is neither.
pub fn named_or_known(global: &Global, chain_id: u64) -> anyhow::Result<Option<Registry>> {
    if let Some(address) = global.explicit_registry()? {
        return Ok(Some(Registry {
            address,
            origin: Origin::Named,
        }));
    }
    let Some(known) = known_entry(&global.config_dir, chain_id)? else {
        return Ok(None);
    };
    let address = files::parse_address("registry_contract", &known.registry_contract)
        .with_context(|| known_path(&global.config_dir).display().to_string())?;
    Ok(Some(Registry {
        address,
        origin: Origin::Known,
    }))
}

/// Records `registry` as the one used on `chain_id` (once the chain showed
/// a contract there). A server that cannot write its config dir (a user
/// listing brokers) is told, not stopped.
pub fn remember(config_dir: &Path, chain_id: u64, registry: &Registry) {
    if let Err(e) = try_remember(config_dir, chain_id, registry) {
        eprintln!(
            "note: could not record the registry in {}: {}",
            known_path(config_dir).display(),
            one_line(&format!("{e:#}"))
        );
    }
}

fn try_remember(config_dir: &Path, chain_id: u64, registry: &Registry) -> anyhow::Result<()> {
    let mut all = read_known(config_dir)?;
    let key = chain_id.to_string();
    if all
        .get(&key)
        .is_some_and(|e| e.registry_contract.parse::<Address>().ok() == Some(registry.address))
    {
        return Ok(());
    }
    let source = match &registry.origin {
        Origin::Named => "--registry-contract".to_string(),
        Origin::File(from) => from.clone(),
        Origin::Known => return Ok(()),
    };
    all.insert(
        key,
        KnownEntry {
            registry_contract: registry.address.to_string(),
            source,
            recorded_at: files::now_iso8601(),
        },
    );
    let mut text = serde_json::to_string_pretty(&all)?;
    text.push('\n');
    files::write_atomic(&known_path(config_dir), text.as_bytes(), KNOWN_MODE)
}

pub fn known_path(config_dir: &Path) -> PathBuf {
    config_dir.join(KNOWN_FILE)
}

fn known_entry(config_dir: &Path, chain_id: u64) -> anyhow::Result<Option<KnownEntry>> {
    Ok(read_known(config_dir)?.remove(&chain_id.to_string()))
}

fn read_known(config_dir: &Path) -> anyhow::Result<BTreeMap<String, KnownEntry>> {
    let path = known_path(config_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not what this client writes", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The local registry file, at most MAX_BYTES of it; None when absent.
fn read_local(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut bytes = Vec::new();
    file.take(MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() > MAX_BYTES {
        bail!(
            "{} is larger than {MAX_BYTES} bytes: not a registry file",
            path.display()
        );
    }
    Ok(Some(bytes))
}

/// GETs `url` (http or https), at most MAX_BYTES, within FETCH_TIMEOUT.
async fn fetch(url: &str) -> anyhow::Result<Vec<u8>> {
    let what = || format!("reading the registry file {}", one_line(url));
    let parsed = reqwest::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .with_context(|| {
            format!(
                "--registry-url {:?} is not an http or https URL",
                one_line(url)
            )
        })?;
    let client = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .with_context(what)?;
    let mut response = client
        .get(parsed)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", error_chain(&e)))
        .with_context(what)?;
    let status = response.status();
    if !status.is_success() {
        bail!("{}: the server answered {status}", what());
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BYTES as u64)
    {
        bail!("{}: larger than {MAX_BYTES} bytes", what());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| anyhow::anyhow!("{}", error_chain(&e)))
        .with_context(what)?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BYTES {
            bail!("{}: larger than {MAX_BYTES} bytes", what());
        }
    }
    Ok(body)
}

/// reqwest's error and its causes ("error sending request" alone says
/// nothing).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The registry address of a registry file read from `from`, which must
/// be for chain `chain_id`.
fn parse(from: &str, bytes: &[u8], chain_id: u64) -> anyhow::Result<Address> {
    let file: RegistryFile = serde_json::from_slice(bytes).with_context(|| {
        format!("the registry file {from} is not JSON with registry_contract and chain_id")
    })?;
    if file.chain_id != chain_id {
        bail!(
            "the registry file {from} is for chain {}{}, not chain {chain_id} (give --chain-id / ETH_CHAIN_ID, or --registry-url for this chain)",
            file.chain_id,
            file.network
                .as_deref()
                .map(|n| format!(" ({})", one_line(n)))
                .unwrap_or_default()
        );
    }
    files::parse_address(
        &format!("registry_contract in the registry file {from}"),
        &file.registry_contract,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_files_must_be_for_the_chain_in_use() {
        let text = br#"{"registry_contract": "0x4e020bf35a1b2939E359892D22d96B4A2DAEb93e", "chain_id": 11155111, "network": "sepolia"}"#;
        assert_eq!(
            parse("f", text, 11_155_111).unwrap().to_string(),
            "0x4e020bf35a1b2939E359892D22d96B4A2DAEb93e"
        );
        let e = parse("f", text, 1).unwrap_err().to_string();
        assert!(
            e.contains("for chain 11155111 (sepolia), not chain 1"),
            "{e}"
        );
        for bad in [
            &br#"{"registry_contract": "0x12", "chain_id": 1}"#[..],
            br#"{"chain_id": 1}"#,
            br#"{"registry_contract": "0x4e020bf35a1b2939E359892D22d96B4A2DAEb93e"}"#,
            b"<html>",
        ] {
            assert!(
                parse("f", bad, 1).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_large_local_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCAL_FILE);
        std::fs::write(&path, vec![b' '; MAX_BYTES + 1]).unwrap();
        let e = read_local(&path).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        assert!(read_local(&dir.path().join("none")).unwrap().is_none());
    }
}
