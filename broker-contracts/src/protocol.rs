//! What travels inside the contracts' `bytes` fields (wire-protocol §3–5):
//! the ECIES-encrypted request and response payloads and the request-id
//! framing of responses. Byte for byte what the clients in the field send
//! and expect.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// ECIES overhead: ephemeral public key (65) + nonce (16) + tag (16).
pub const ECIES_OVERHEAD: usize = 65 + 16 + 16;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("the ciphertext does not decrypt with this key")]
    Undecryptable,
    #[error("the public key is not an uncompressed secp256k1 point")]
    BadPublicKey,
    #[error("the response is shorter than its 8-byte request id")]
    ShortFrame,
    #[error("the payload is not the expected JSON: {0}")]
    BadJson(String),
    #[error("wgPubkey is not a 32-byte base64 WireGuard key")]
    BadWireguardKey,
    #[error("serverPubkey is not 130 hex digits of an uncompressed secp256k1 point")]
    BadServerKey,
}

/// ECIES-encrypts `plaintext` to `receiver` (65 bytes, uncompressed SEC1).
pub fn encrypt(receiver: &[u8; 65], plaintext: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    ecies::encrypt(receiver, plaintext).map_err(|_| ProtocolError::BadPublicKey)
}

/// Decrypts an ECIES ciphertext with a 32-byte secret key.
pub fn decrypt(secret: &[u8; 32], ciphertext: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    if ciphertext.len() < ECIES_OVERHEAD {
        return Err(ProtocolError::Undecryptable);
    }
    ecies::decrypt(secret, ciphertext).map_err(|_| ProtocolError::Undecryptable)
}

/// The uncompressed public key of a secp256k1 secret key.
pub fn public_key(secret: &[u8; 32]) -> Option<[u8; 65]> {
    let sk = ecies::SecretKey::parse_slice(secret).ok()?;
    Some(ecies::PublicKey::from_secret_key(&sk).serialize())
}

/// The on-chain response: the request id, big-endian, then the ciphertext.
pub fn frame_response(request_id: u64, ciphertext: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(8 + ciphertext.len());
    framed.extend_from_slice(&request_id.to_be_bytes());
    framed.extend_from_slice(ciphertext);
    framed
}

/// Splits an on-chain response into its request id and ciphertext.
pub fn unframe_response(framed: &[u8]) -> Result<(u64, &[u8]), ProtocolError> {
    let (id, rest) = framed
        .split_first_chunk::<8>()
        .ok_or(ProtocolError::ShortFrame)?;
    Ok((u64::from_be_bytes(*id), rest))
}

/// A client's request (§3), as it decrypts.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct RequestPayload {
    #[serde(rename = "wgPubkey")]
    pub wg_pubkey: String,
    /// The client's copy; the on-chain `Request.nftContract` is authoritative.
    #[serde(rename = "nftContract", default)]
    pub nft_contract: String,
    #[serde(rename = "serverPubkey")]
    pub server_pubkey: String,
}

/// A request that passed every check: keys decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidRequest {
    pub wg_pubkey: [u8; 32],
    pub server_pubkey: [u8; 65],
}

impl RequestPayload {
    /// Parses decrypted bytes; unknown keys are ignored (§3).
    pub fn parse(plaintext: &[u8]) -> Result<Self, ProtocolError> {
        serde_json::from_slice(plaintext).map_err(|e| ProtocolError::BadJson(e.to_string()))
    }

    /// The JSON clients in the field send: Python's default separators.
    pub fn to_json(&self) -> String {
        let s = |v: &str| serde_json::to_string(v).expect("strings serialize");
        format!(
            "{{\"wgPubkey\": {}, \"nftContract\": {}, \"serverPubkey\": {}}}",
            s(&self.wg_pubkey),
            s(&self.nft_contract),
            s(&self.server_pubkey)
        )
    }

    /// Checks the keys: a 32-byte WireGuard key (not all zero: that is no
    /// key anyone holds) and a valid uncompressed secp256k1 point, with an
    /// optional `0x` tolerated (§3).
    pub fn validate(&self) -> Result<ValidRequest, ProtocolError> {
        use base64::Engine as _;
        let wg = base64::engine::general_purpose::STANDARD
            .decode(self.wg_pubkey.trim())
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .filter(|k| k != &[0u8; 32])
            .ok_or(ProtocolError::BadWireguardKey)?;
        let hex_key = self.server_pubkey.trim();
        let hex_key = hex_key.strip_prefix("0x").unwrap_or(hex_key);
        let mut server = [0u8; 65];
        if hex_key.len() != 130 || hex::decode_to_slice(hex_key, &mut server).is_err() {
            return Err(ProtocolError::BadServerKey);
        }
        if server[0] != 4 || ecies::PublicKey::parse_slice(&server, None).is_err() {
            return Err(ProtocolError::BadServerKey);
        }
        Ok(ValidRequest {
            wg_pubkey: wg,
            server_pubkey: server,
        })
    }
}

/// What the broker does with a request's `encryptedPayload`: decrypts it
/// with its ECIES secret, parses the JSON and checks the keys. The one path
/// from an outsider's bytes to a [`ValidRequest`] (the daemon's and the
/// fuzz target's).
pub fn read_request(secret: &[u8; 32], ciphertext: &[u8]) -> Result<ValidRequest, ProtocolError> {
    let plaintext = decrypt(secret, ciphertext)?;
    RequestPayload::parse(&plaintext)?.validate()
}

/// The broker's answer (§4), serialized compact in this key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponsePayload {
    pub prefix: String,
    pub gateway: String,
    #[serde(rename = "brokerPubkey")]
    pub broker_pubkey: String,
    #[serde(rename = "brokerEndpoint")]
    pub broker_endpoint: String,
    #[serde(rename = "dnsZone", default, skip_serializing_if = "Option::is_none")]
    pub dns_zone: Option<String>,
}

impl ResponsePayload {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("strings serialize")
    }

    pub fn parse(plaintext: &[u8]) -> Result<Self, ProtocolError> {
        serde_json::from_slice(plaintext).map_err(|e| ProtocolError::BadJson(e.to_string()))
    }
}

/// Whether `s` is what `brokerEndpoint` may hold: `host:port`, the host a
/// name or an address (IPv6 in brackets), and nothing else (the client
/// writes it into a WireGuard configuration as it is). The broker checks its
/// configured endpoint with it, the client every endpoint it receives.
pub fn is_endpoint(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// wire-protocol §5's test vector.
    #[test]
    fn decrypts_the_reference_vector() {
        let secret: [u8; 32] =
            hex::decode("e520872701d9ec44dbac2eab85512ad14ad0c42e01de56d7b528abd8524fcb47")
                .unwrap()
                .try_into()
                .unwrap();
        let ciphertext = hex::decode(
            "047be1885aeb48d4d4db0c992996725d3264784fef88c5b60782f8d0f940c213227fc3f904f846d5ec3d0fba6653754501e8ebadc421aa3892a20fef33cff0206047058a4cfb4efbeae96b2d019b4ab2edce33328748a0d008a69c8f5816b72d45bd9b5a41bb6ea0127ab23057ec6fcd",
        )
        .unwrap();
        assert_eq!(
            decrypt(&secret, &ciphertext).unwrap(),
            "hello world🌍".as_bytes()
        );
        let mut tampered = ciphertext.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            decrypt(&secret, &tampered),
            Err(ProtocolError::Undecryptable)
        );
        assert_eq!(
            decrypt(&secret, &ciphertext[..50]),
            Err(ProtocolError::Undecryptable)
        );
    }

    #[test]
    fn round_trips_with_the_documented_layout() {
        let (sk, pk) = ecies::utils::generate_keypair();
        let ct = encrypt(&pk.serialize(), b"payload").unwrap();
        assert_eq!(ct.len(), ECIES_OVERHEAD + 7);
        assert_eq!(ct[0], 4, "uncompressed ephemeral key first");
        assert_eq!(decrypt(&sk.serialize(), &ct).unwrap(), b"payload");
        assert_eq!(public_key(&sk.serialize()), Some(pk.serialize()));
    }

    #[test]
    fn frames_request_ids_big_endian() {
        for id in [
            0u64,
            1,
            255,
            256,
            0x1234_5678,
            (1 << 32) - 1,
            1 << 32,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let framed = frame_response(id, b"ct");
            assert_eq!(&framed[..8], &id.to_be_bytes());
            assert_eq!(unframe_response(&framed).unwrap(), (id, &b"ct"[..]));
        }
        assert_eq!(frame_response(256, b"")[..8], [0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(unframe_response(&[1, 2, 3]), Err(ProtocolError::ShortFrame));
    }

    fn valid_payload() -> RequestPayload {
        let (_, pk) = ecies::utils::generate_keypair();
        RequestPayload {
            wg_pubkey: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=".into(),
            nft_contract: "0x5FbDB2315678afecb367f032d93F642f64180aa3".into(),
            server_pubkey: hex::encode(pk.serialize()),
        }
    }

    #[test]
    fn request_json_matches_the_clients_in_the_field() {
        let p = valid_payload();
        let json = p.to_json();
        assert!(json.starts_with("{\"wgPubkey\": \"xTIBA5"), "{json}");
        assert!(json.contains("\", \"nftContract\": \""), "{json}");
        assert_eq!(RequestPayload::parse(json.as_bytes()).unwrap(), p);
        // Compact JSON, unknown keys and a 0x prefix are accepted too.
        let compact = format!(
            "{{\"serverPubkey\":\"0x{}\",\"wgPubkey\":\"{}\",\"extra\":1}}",
            p.server_pubkey, p.wg_pubkey
        );
        let parsed = RequestPayload::parse(compact.as_bytes()).unwrap();
        assert!(parsed.validate().is_ok());
    }

    #[test]
    fn rejects_bad_keys_and_json() {
        let ok = valid_payload();
        assert!(ok.validate().is_ok());
        for wg in [
            "",
            "AAAA",
            "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8D",
            &"A".repeat(43),
        ] {
            let p = RequestPayload {
                wg_pubkey: wg.into(),
                ..ok.clone()
            };
            assert_eq!(p.validate(), Err(ProtocolError::BadWireguardKey), "{wg:?}");
        }
        let zero = RequestPayload {
            wg_pubkey: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
            ..ok.clone()
        };
        assert_eq!(zero.validate(), Err(ProtocolError::BadWireguardKey));
        let not_on_curve = format!("04{}", "11".repeat(64));
        let compressed = format!("02{}", &ok.server_pubkey[2..]);
        for server in [
            String::new(),
            "04".into(),
            not_on_curve,
            compressed,
            "zz".repeat(65),
        ] {
            let p = RequestPayload {
                server_pubkey: server.clone(),
                ..ok.clone()
            };
            assert_eq!(p.validate(), Err(ProtocolError::BadServerKey), "{server}");
        }
        for bad in [&b"not json"[..], b"[]", b"{\"wgPubkey\": 1}", b"{}"] {
            assert!(matches!(
                RequestPayload::parse(bad),
                Err(ProtocolError::BadJson(_))
            ));
        }
    }

    #[test]
    fn response_json_is_compact_in_spec_order() {
        let r = ResponsePayload {
            prefix: "2001:db8:0:1::100/120".into(),
            gateway: "2001:db8:0:1::2".into(),
            broker_pubkey: "b64".into(),
            broker_endpoint: "203.0.113.10:51820".into(),
            dns_zone: None,
        };
        assert_eq!(
            r.to_json(),
            r#"{"prefix":"2001:db8:0:1::100/120","gateway":"2001:db8:0:1::2","brokerPubkey":"b64","brokerEndpoint":"203.0.113.10:51820"}"#
        );
        let with_zone = ResponsePayload {
            dns_zone: Some("z.example".into()),
            ..r
        };
        assert!(with_zone.to_json().ends_with(r#","dnsZone":"z.example"}"#));
        assert_eq!(
            ResponsePayload::parse(with_zone.to_json().as_bytes()).unwrap(),
            with_zone
        );
    }
}
