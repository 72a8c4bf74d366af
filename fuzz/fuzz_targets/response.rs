//! A broker's on-chain answer as broker-client reads it (`response::decode`):
//! the 8-byte request id, then ECIES to the server's key, then JSON whose
//! fields go into a wg-quick configuration. Any broker, honest or not, can
//! answer anything.
//!
//! The first byte picks what the rest is: even, the framed answer as it lies
//! on chain; odd, the plaintext, framed with the expected id and encrypted to
//! the server's key here first, so that the fuzzer reaches the JSON and the
//! field checks.
#![no_main]

use std::net::Ipv6Addr;

use base64::Engine as _;
use blockhost_broker_fuzz::fixed_key;
use broker_client::{
    files::Allocation,
    install::conf_text,
    response::{Outcome, decode},
};
use broker_contracts::protocol;
use ipnet::Ipv6Net;
use libfuzzer_sys::fuzz_target;

const REQUEST_ID: u64 = 7;
/// The server's own network, which no answer may overlap.
const OWN: &str = "2001:db8:7::/64";
/// A WireGuard private key (the server's own, in the allocation file).
const WG_PRIVATE: &str = "aE3FDH0TQMnS9yRLbqcyBe1IgZ4Fd51mbHPaMxQn81A=";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (secret, public) = fixed_key(2);
    let own: [Ipv6Net; 1] = [OWN.parse().unwrap()];
    let encrypted = mode & 1 == 1;
    let framed = if encrypted {
        let ct = protocol::encrypt(&public, rest).expect("the server's key takes any plaintext");
        protocol::frame_response(REQUEST_ID, &ct)
    } else {
        rest.to_vec()
    };
    match decode(&framed, REQUEST_ID, &secret, &own) {
        Outcome::Answer(answer) => {
            let p = &answer.payload;
            let prefix = answer.prefix;
            assert_eq!(p.prefix.parse::<Ipv6Net>().ok(), Some(prefix));
            assert!(
                prefix.prefix_len() < 128,
                "{prefix}: room for the tunnel address"
            );
            assert_eq!(prefix.addr(), prefix.network(), "{prefix}: no host bits");
            let global: Ipv6Net = "2000::/3".parse().unwrap();
            assert!(global.contains(&prefix), "{prefix}: global unicast");
            assert!(
                !own[0].contains(&prefix) && !prefix.contains(&own[0]),
                "{prefix}: overlaps {OWN}"
            );
            p.gateway
                .parse::<Ipv6Addr>()
                .expect("gateway is an address");
            let key = base64::engine::general_purpose::STANDARD
                .decode(p.broker_pubkey.trim())
                .expect("brokerPubkey is base64");
            assert_eq!(key.len(), 32, "brokerPubkey is a WireGuard key");
            assert!(protocol::is_endpoint(&p.broker_endpoint));
            if let Some(zone) = &p.dns_zone {
                assert!(
                    zone.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b".-_".contains(&c)),
                    "{zone:?}"
                );
            }
            // An accepted answer always makes a tunnel configuration, and
            // one that says only what its lines say: nothing injected.
            let allocation = Allocation {
                prefix: prefix.to_string(),
                gateway: p.gateway.clone(),
                broker_pubkey: p.broker_pubkey.clone(),
                broker_endpoint: p.broker_endpoint.clone(),
                nft_contract: "0x5FbDB2315678afecb367f032d93F642f64180aa3".into(),
                request_id: REQUEST_ID,
                wg_private_key: WG_PRIVATE.into(),
                wg_public_key: String::new(),
                allocated_at: "2026-12-07T00:00:00+00:00".into(),
                broker_wallet: String::new(),
                dns_zone: p.dns_zone.clone().unwrap_or_default(),
            };
            let conf = conf_text(&allocation).expect("an accepted answer makes a configuration");
            let keys: Vec<&str> = conf
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
                .map(|l| l.split(" = ").next().unwrap())
                .collect();
            assert_eq!(
                keys,
                [
                    "PrivateKey",
                    "Address",
                    "PublicKey",
                    "Endpoint",
                    "AllowedIPs",
                    "PersistentKeepalive"
                ],
                "{conf}"
            );
            assert!(conf.contains(&format!("\nEndpoint = {}\n", p.broker_endpoint)));
        }
        Outcome::Stale(reason) => {
            assert!(!reason.trim().is_empty());
            assert!(!encrypted, "our own id and key: {reason}");
        }
        Outcome::Bad(reason) => assert!(!reason.trim().is_empty()),
        other @ (Outcome::Ended(_) | Outcome::Timeout) => {
            panic!("decode reads no chain: {other:?}")
        }
    }
});
