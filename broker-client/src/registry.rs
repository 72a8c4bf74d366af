//! The brokers of the registry: reading them, choosing the ones worth a
//! request (wire-protocol §8: active, `getAvailableCapacity() > 0`), and the
//! `list-brokers` table.

use alloy::primitives::{Address, U256};
use broker_contracts::{BrokerRegistry, BrokerRequests, chain::Connection};
use serde::Serialize;

/// One registry entry, with its requests contract's free capacity.
#[derive(Clone, Debug, Serialize)]
pub struct Broker {
    pub id: u64,
    #[serde(serialize_with = "checksummed")]
    pub operator: Address,
    #[serde(serialize_with = "checksummed")]
    pub requests_contract: Address,
    /// 0x04‖X‖Y, 130 hex digits (no 0x), as broker-contract.json records it.
    pub encryption_pubkey: String,
    pub region: String,
    pub active: bool,
    /// Advertised in the registry (0 = unlimited).
    pub capacity: String,
    pub current_load: String,
    /// `getAvailableCapacity()` of the requests contract, "unlimited" for
    /// uint256 max; None when it could not be read.
    pub available: Option<String>,
    /// Why the capacity could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    pub available_raw: Option<U256>,
}

/// Addresses in JSON as everywhere else: EIP-55 mixed case.
fn checksummed<S: serde::Serializer>(a: &Address, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&a.to_string())
}

impl Broker {
    /// The ECIES key when it is a valid uncompressed secp256k1 point.
    pub fn ecies_key(&self) -> Option<[u8; 65]> {
        ecies_key_from_hex(&self.encryption_pubkey)
    }
}

pub fn ecies_key_from_hex(text: &str) -> Option<[u8; 65]> {
    let text = text.trim();
    let text = text.strip_prefix("0x").unwrap_or(text);
    let mut key = [0u8; 65];
    hex::decode_to_slice(text, &mut key).ok()?;
    (key[0] == 4 && ecies::PublicKey::parse_slice(&key, None).is_ok()).then_some(key)
}

/// Every broker of the registry, in id order.
pub async fn list(chain: &Connection, registry: Address) -> anyhow::Result<Vec<Broker>> {
    chain.require_contract("the registry", registry).await?;
    let contract = BrokerRegistry::new(registry, chain.provider());
    let count = chain
        .view_u64(
            "getBrokerCount",
            "broker count",
            contract.getBrokerCount().call(),
        )
        .await?;
    let mut brokers = Vec::new();
    for id in 1..=count {
        let b = chain
            .view("getBroker", contract.getBroker(U256::from(id)).call())
            .await?;
        let (available_raw, error) = if b.active {
            let requests = BrokerRequests::new(b.requestsContract, chain.provider());
            match chain
                .view(
                    "getAvailableCapacity",
                    requests.getAvailableCapacity().call(),
                )
                .await
            {
                Ok(v) => (Some(v), None),
                Err(e) => (None, Some(e.to_string())),
            }
        } else {
            (None, None)
        };
        brokers.push(Broker {
            id,
            operator: b.operator,
            requests_contract: b.requestsContract,
            encryption_pubkey: hex::encode(&b.encryptionPubkey),
            region: b.region,
            active: b.active,
            capacity: b.capacity.to_string(),
            current_load: b.currentLoad.to_string(),
            available: available_raw.map(show_available),
            error,
            available_raw,
        });
    }
    Ok(brokers)
}

fn show_available(v: U256) -> String {
    if v == U256::MAX {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

/// The brokers worth a request, in registry order, and why the others are
/// not (or why there are none at all).
pub fn candidates(
    brokers: &[Broker],
    region: Option<&str>,
    broker_id: Option<u64>,
) -> anyhow::Result<(Vec<Broker>, Vec<String>)> {
    let mut skipped = Vec::new();
    let mut chosen = Vec::new();
    for b in brokers {
        if broker_id.is_some_and(|id| id != b.id) {
            continue;
        }
        if region.is_some_and(|r| r != b.region) {
            skipped.push(format!("#{} is in region {:?}", b.id, b.region));
            continue;
        }
        let reason = if !b.active {
            Some("inactive".to_string())
        } else if b.ecies_key().is_none() {
            Some("its encryption key is not a secp256k1 point".into())
        } else if let Some(e) = &b.error {
            Some(format!("capacity unknown ({e})"))
        } else if b.available_raw.is_some_and(|v| v.is_zero()) {
            Some("no free capacity".into())
        } else {
            None
        };
        match reason {
            Some(r) => skipped.push(format!("#{} {r}", b.id)),
            None => chosen.push(b.clone()),
        }
    }
    if chosen.is_empty() {
        let filter = match (region, broker_id) {
            (_, Some(id)) if !brokers.iter().any(|b| b.id == id) => {
                anyhow::bail!(
                    "no broker #{id} in the registry ({} registered)",
                    brokers.len()
                )
            }
            (Some(r), _) => format!(" in region {r:?}"),
            _ => String::new(),
        };
        anyhow::bail!(
            "no active broker with free capacity{filter} in the registry{}",
            if skipped.is_empty() {
                " (it lists none)".to_string()
            } else {
                format!(": {}", skipped.join("; "))
            }
        );
    }
    Ok((chosen, skipped))
}

/// The `list-brokers` table.
pub fn table(brokers: &[Broker]) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "OPERATOR".into(),
        "REQUESTS CONTRACT".into(),
        "REGION".into(),
        "ACTIVE".into(),
        "CAPACITY".into(),
        "LOAD".into(),
        "AVAILABLE".into(),
    ]];
    for b in brokers {
        rows.push([
            b.id.to_string(),
            b.operator.to_string(),
            b.requests_contract.to_string(),
            if b.region.is_empty() {
                "-".into()
            } else {
                b.region.clone()
            },
            if b.active { "yes" } else { "no" }.into(),
            if b.capacity == "0" {
                "unlimited".into()
            } else {
                b.capacity.clone()
            },
            b.current_load.clone(),
            match (&b.available, &b.error, b.active) {
                (Some(a), _, _) => a.clone(),
                (None, Some(_), _) => "error".into(),
                (None, None, _) => "-".into(),
            },
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(id: u64, region: &str, active: bool, available: Option<U256>) -> Broker {
        let (_, pk) = ecies::utils::generate_keypair();
        Broker {
            id,
            operator: Address::ZERO,
            requests_contract: Address::ZERO,
            encryption_pubkey: hex::encode(pk.serialize()),
            region: region.into(),
            active,
            capacity: "0".into(),
            current_load: "0".into(),
            available: available.map(show_available),
            error: None,
            available_raw: available,
        }
    }

    #[test]
    fn chooses_active_brokers_with_capacity_in_order() {
        let all = vec![
            broker(1, "eu", false, None),
            broker(2, "eu", true, Some(U256::ZERO)),
            broker(3, "us", true, Some(U256::MAX)),
            broker(4, "eu", true, Some(U256::from(2))),
        ];
        let ids = |v: (Vec<Broker>, Vec<String>)| v.0.iter().map(|b| b.id).collect::<Vec<_>>();
        assert_eq!(ids(candidates(&all, None, None).unwrap()), [3, 4]);
        assert_eq!(ids(candidates(&all, Some("eu"), None).unwrap()), [4]);
        assert_eq!(ids(candidates(&all, None, Some(3)).unwrap()), [3]);
        let e = candidates(&all, None, Some(2)).unwrap_err().to_string();
        assert!(e.contains("#2 no free capacity"), "{e}");
        let e = candidates(&all, None, Some(9)).unwrap_err().to_string();
        assert!(e.contains("no broker #9"), "{e}");
        let e = candidates(&all, Some("ap"), None).unwrap_err().to_string();
        assert!(e.contains("in region \"ap\""), "{e}");
        let e = candidates(&[], None, None).unwrap_err().to_string();
        assert!(e.contains("lists none"), "{e}");
    }

    #[test]
    fn table_has_a_header_and_a_row_per_broker() {
        let t = table(&[broker(1, "", true, Some(U256::MAX))]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID  OPERATOR"));
        assert!(lines[1].contains("unlimited"));
        assert_eq!(lines.len(), 2);
    }
}
