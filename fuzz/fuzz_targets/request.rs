//! A request's `encryptedPayload` as the daemon reads it: decrypted with the
//! broker's ECIES key, parsed and checked (`protocol::read_request`, which
//! `daemon/examine.rs` calls). Anyone can submit any bytes.
//!
//! The first byte picks what the rest is: even, the ciphertext as submitted;
//! odd, a plaintext, encrypted to the broker's key here first, so that the
//! fuzzer reaches the JSON and the key checks behind the cipher.
#![no_main]

use base64::Engine as _;
use blockhost_broker_fuzz::fixed_key;
use broker_contracts::protocol::{self, ProtocolError, RequestPayload};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (secret, public) = fixed_key(1);
    let encrypted = mode & 1 == 1;
    let ciphertext = if encrypted {
        let ct = protocol::encrypt(&public, rest).expect("the broker's key takes any plaintext");
        assert_eq!(protocol::decrypt(&secret, &ct).as_deref(), Ok(rest));
        ct
    } else {
        rest.to_vec()
    };
    match protocol::read_request(&secret, &ciphertext) {
        Ok(valid) => {
            // Everything the check claims of an accepted request.
            let plaintext = protocol::decrypt(&secret, &ciphertext).expect("accepted: decrypts");
            let payload = RequestPayload::parse(&plaintext).expect("accepted: parses");
            let wg = base64::engine::general_purpose::STANDARD
                .decode(payload.wg_pubkey.trim())
                .expect("accepted: wgPubkey is base64");
            assert_eq!(wg, valid.wg_pubkey, "the key is the one sent");
            assert_ne!(valid.wg_pubkey, [0; 32], "no all-zero WireGuard key");
            let hex_key = payload.server_pubkey.trim();
            let hex_key = hex_key.strip_prefix("0x").unwrap_or(hex_key);
            assert_eq!(
                hex::decode(hex_key).as_deref(),
                Ok(&valid.server_pubkey[..])
            );
            assert_eq!(valid.server_pubkey[0], 4, "uncompressed");
            ecies::PublicKey::parse_slice(&valid.server_pubkey, None).expect("on the curve");
            // The broker's next step: its answer is encrypted to that key.
            protocol::encrypt(&valid.server_pubkey, b"{}").expect("a checked key takes an answer");
        }
        Err(e) => {
            assert!(!e.to_string().trim().is_empty(), "{e:?} says nothing");
            if encrypted {
                assert_ne!(e, ProtocolError::Undecryptable, "encrypted to our key");
            }
        }
    }
});
