//! Waiting for the broker's answer to one request and reading it
//! (wire-protocol §4): the 8-byte big-endian request id, then ECIES to our
//! server key. An answer for another request id, or one we cannot decrypt,
//! is stale: the caller submits a new request.

use std::{
    net::Ipv6Addr,
    time::{Duration, Instant},
};

use alloy::primitives::{Address, U256};
use broker_contracts::{
    BrokerRequests,
    chain::Connection,
    protocol::{self, ResponsePayload},
};
use ipnet::Ipv6Net;

use crate::keys::parse_wg_key;

// BrokerRequests.RequestStatus
const PENDING: u8 = 0;
const APPROVED: u8 = 1;

/// How a wait ended.
#[derive(Debug)]
pub enum Outcome {
    /// A valid answer to our request.
    Answer(Answer),
    /// Not an answer to this request from this server: submit a new one.
    Stale(String),
    /// The request left the Pending state without an answer (expired,
    /// released, or overwritten by a newer request for the NFT contract).
    Ended(String),
    /// The broker answered with something no client can use.
    Bad(String),
    /// No answer in time.
    Timeout,
}

#[derive(Clone, Debug)]
pub struct Answer {
    pub payload: ResponsePayload,
    pub prefix: Ipv6Net,
}

pub struct Wait<'a> {
    pub chain: &'a Connection,
    pub requests: Address,
    pub request_id: u64,
    pub server_secret: &'a [u8; 32],
    pub timeout: Duration,
    pub poll: Duration,
    /// For progress lines ("broker #2").
    pub label: &'a str,
}

/// How often a progress line is printed while nothing happens.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

impl Wait<'_> {
    /// Polls `getRequest` until the request is answered or ended, or the
    /// timeout passes. RPC trouble while polling is reported and retried
    /// until the deadline (the endpoint, not the broker, is failing).
    pub async fn run(&self) -> Outcome {
        let contract = BrokerRequests::new(self.requests, self.chain.provider());
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut last_progress = started;
        eprintln!(
            "waiting for {} to answer request {} (up to {:.0}s)",
            self.label,
            self.request_id,
            self.timeout.as_secs_f64()
        );
        loop {
            match self
                .chain
                .view(
                    "getRequest",
                    contract.getRequest(U256::from(self.request_id)).call(),
                )
                .await
            {
                Ok(request) => {
                    let status = request.status;
                    if status == APPROVED {
                        return decode(
                            &request.responsePayload,
                            self.request_id,
                            self.server_secret,
                        );
                    }
                    if status != PENDING {
                        return Outcome::Ended(format!(
                            "request {} ended on chain without an answer (status {status}: expired, released, or overwritten by a newer request for the NFT contract)",
                            self.request_id
                        ));
                    }
                }
                Err(e) => eprintln!("  looking for the answer: {e}; retrying"),
            }
            let now = Instant::now();
            if now >= deadline {
                return Outcome::Timeout;
            }
            if now.duration_since(last_progress) >= PROGRESS_EVERY {
                eprintln!(
                    "  still waiting for {} ({:.0}s of {:.0}s)",
                    self.label,
                    now.duration_since(started).as_secs_f64(),
                    self.timeout.as_secs_f64()
                );
                last_progress = now;
            }
            tokio::time::sleep(self.poll.min(deadline - now)).await;
        }
    }
}

/// Reads an on-chain response to request `expected_id`.
pub fn decode(framed: &[u8], expected_id: u64, secret: &[u8; 32]) -> Outcome {
    let (id, ciphertext) = match protocol::unframe_response(framed) {
        Ok(parts) => parts,
        Err(_) => {
            return Outcome::Stale(format!(
                "the answer is {} bytes, shorter than a request id",
                framed.len()
            ));
        }
    };
    if id != expected_id {
        return Outcome::Stale(format!(
            "the answer carries request id {id}, not {expected_id}"
        ));
    }
    let plaintext = match protocol::decrypt(secret, ciphertext) {
        Ok(p) => p,
        // The only failure decrypt has for a well-formed key.
        Err(_) => {
            return Outcome::Stale("the answer does not decrypt with this server's key".into());
        }
    };
    let payload = match ResponsePayload::parse(&plaintext) {
        Ok(p) => p,
        Err(e) => return Outcome::Bad(e.to_string()),
    };
    match validate(&payload) {
        Ok(prefix) => Outcome::Answer(Answer { payload, prefix }),
        Err(reason) => Outcome::Bad(reason),
    }
}

/// The fields go into a wg-quick configuration and other components'
/// files: each must be exactly what it claims to be.
fn validate(p: &ResponsePayload) -> Result<Ipv6Net, String> {
    let prefix: Ipv6Net = p
        .prefix
        .parse()
        .map_err(|_| format!("prefix {:?} is not an IPv6 prefix", p.prefix))?;
    if prefix.prefix_len() >= 128 {
        return Err(format!(
            "prefix {} leaves no address for the tunnel",
            p.prefix
        ));
    }
    p.gateway
        .parse::<Ipv6Addr>()
        .map_err(|_| format!("gateway {:?} is not an IPv6 address", p.gateway))?;
    parse_wg_key("brokerPubkey", &p.broker_pubkey).map_err(|e| e.to_string())?;
    crate::install::check_endpoint(&p.broker_endpoint).map_err(|e| e.to_string())?;
    if let Some(zone) = &p.dns_zone
        && !zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    {
        return Err(format!("dnsZone {zone:?} is not a domain name"));
    }
    Ok(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::WgKeys;

    fn payload() -> ResponsePayload {
        ResponsePayload {
            prefix: "2001:db8:0:1::100/120".into(),
            gateway: "2001:db8:0:1::2".into(),
            broker_pubkey: WgKeys::generate().public.to_base64(),
            broker_endpoint: "203.0.113.10:51820".into(),
            dns_zone: None,
        }
    }

    fn answer(id: u64, to: &[u8; 65], p: &ResponsePayload) -> Vec<u8> {
        protocol::frame_response(id, &protocol::encrypt(to, p.to_json().as_bytes()).unwrap())
    }

    #[test]
    fn reads_an_answer_and_spots_stale_ones() {
        let (sk, pk) = ecies::utils::generate_keypair();
        let (_, other) = ecies::utils::generate_keypair();
        let secret = sk.serialize();
        for id in [0u64, 1, 255, 256, 0x1234_5678, u64::MAX] {
            match decode(&answer(id, &pk.serialize(), &payload()), id, &secret) {
                Outcome::Answer(a) => assert_eq!(a.prefix.to_string(), "2001:db8:0:1::100/120"),
                other => panic!("{id}: {other:?}"),
            }
        }
        let wrong_id = decode(&answer(5, &pk.serialize(), &payload()), 6, &secret);
        assert!(matches!(wrong_id, Outcome::Stale(ref r) if r.contains("request id 5")));
        let other_key = decode(&answer(6, &other.serialize(), &payload()), 6, &secret);
        assert!(matches!(other_key, Outcome::Stale(ref r) if r.contains("decrypt")));
        assert!(matches!(decode(&[0, 1], 1, &secret), Outcome::Stale(_)));
    }

    #[test]
    fn refuses_answers_that_would_inject_configuration() {
        let (sk, pk) = ecies::utils::generate_keypair();
        let bad = [
            ResponsePayload {
                broker_endpoint: "203.0.113.10:51820\nPostUp = touch /x".into(),
                ..payload()
            },
            ResponsePayload {
                broker_pubkey: "x\nPostUp = y".into(),
                ..payload()
            },
            ResponsePayload {
                prefix: "not a prefix".into(),
                ..payload()
            },
            ResponsePayload {
                gateway: "192.0.2.1".into(),
                ..payload()
            },
            ResponsePayload {
                dns_zone: Some("a b".into()),
                ..payload()
            },
        ];
        for p in bad {
            let out = decode(&answer(3, &pk.serialize(), &p), 3, &sk.serialize());
            assert!(matches!(out, Outcome::Bad(_)), "{p:?}: {out:?}");
        }
    }
}
