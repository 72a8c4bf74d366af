//! The login: a nonce bound to a short-lived cookie, the message built
//! around it, and every check of what comes back signed.

use std::{collections::HashMap, sync::Mutex};

use alloy::primitives::Address;
use thiserror::Error;

use super::siwe::{self, Message, SiweError};

/// How long a nonce (and the message around it) may wait for its
/// signature.
pub const NONCE_SECS: u64 = 300;
/// Nonces waiting at most: past it the oldest are dropped, so a flood of
/// requests (already rate-limited) cannot grow the map without end.
const MAX_PENDING: usize = 10_000;

/// Why a login is refused; each says what to do.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("the manager is closed: no wallet is listed in [manager] admins")]
    Closed,
    #[error(transparent)]
    Siwe(#[from] SiweError),
    #[error("the message names {claimed} but was signed by {signer}")]
    SignerMismatch { claimed: Address, signer: Address },
    #[error("{0} is not listed in [manager] admins")]
    NotAdmin(Address),
    #[error(
        "the message was made for {got}, not for this manager at {expected}: a site relaying this manager's login?"
    )]
    WrongDomain { got: String, expected: String },
    #[error("the message's URI {got} is not this manager's ({expected})")]
    WrongUri { got: String, expected: String },
    #[error("the message is for chain {got}, and this broker's chain is {expected}")]
    WrongChain { got: u64, expected: u64 },
    #[error("the message expired at {}: sign in again", siwe::rfc3339(*.0))]
    Expired(u64),
    #[error(
        "this browser was not given the message's nonce (no login cookie, or another one): sign in again from this page"
    )]
    NotThisBrowser,
    #[error("the message's nonce was used already: a signature logs in once; sign in again")]
    Replayed,
    #[error("the message's nonce is unknown or expired: sign in again")]
    UnknownNonce,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Nonce {
    /// Issued, until the time given.
    Pending(u64),
    /// Used, remembered until it would have expired (to say "replayed").
    Used(u64),
}

/// What a login is checked against.
pub struct Expected<'a> {
    pub domain: &'a str,
    pub uri: &'a str,
    pub chain_id: u64,
    pub admins: &'a [Address],
    pub now: u64,
    /// The nonce in the browser's login cookie.
    pub cookie_nonce: Option<&'a str>,
}

#[derive(Default)]
pub struct Logins {
    nonces: Mutex<HashMap<String, Nonce>>,
}

impl Logins {
    /// A new nonce, valid from `now` for [`NONCE_SECS`].
    pub fn issue(&self, now: u64) -> String {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let mut nonces = self.nonces.lock().expect("not poisoned");
        nonces.retain(|_, n| match n {
            Nonce::Pending(until) | Nonce::Used(until) => *until > now,
        });
        if nonces.len() >= MAX_PENDING {
            // Oldest first out.
            let mut by_age: Vec<_> = nonces.iter().map(|(k, n)| (*n, k.clone())).collect();
            by_age.sort_by_key(|(n, _)| match n {
                Nonce::Pending(t) | Nonce::Used(t) => *t,
            });
            for (_, k) in by_age.into_iter().take(MAX_PENDING / 10) {
                nonces.remove(&k);
            }
        }
        nonces.insert(nonce.clone(), Nonce::Pending(now + NONCE_SECS));
        nonce
    }

    /// The admin who signed `text` with `signature`, or why not. Only a
    /// login that passes every check spends its nonce: a refused attempt
    /// (a relayed message, say) cannot burn the admin's own.
    pub fn verify(&self, text: &str, signature: &str, e: &Expected) -> Result<Address, Refusal> {
        if e.admins.is_empty() {
            return Err(Refusal::Closed);
        }
        let message = Message::parse(text)?;
        let signer = siwe::signer(text, signature)?;
        if signer != message.address {
            return Err(Refusal::SignerMismatch {
                claimed: message.address,
                signer,
            });
        }
        if !e.admins.contains(&signer) {
            return Err(Refusal::NotAdmin(signer));
        }
        if message.domain != e.domain {
            return Err(Refusal::WrongDomain {
                got: message.domain,
                expected: e.domain.to_string(),
            });
        }
        if message.uri != e.uri {
            return Err(Refusal::WrongUri {
                got: message.uri,
                expected: e.uri.to_string(),
            });
        }
        if message.chain_id != e.chain_id {
            return Err(Refusal::WrongChain {
                got: message.chain_id,
                expected: e.chain_id,
            });
        }
        if e.now >= message.expiration {
            return Err(Refusal::Expired(message.expiration));
        }
        if e.cookie_nonce != Some(message.nonce.as_str()) {
            return Err(Refusal::NotThisBrowser);
        }
        let mut nonces = self.nonces.lock().expect("not poisoned");
        match nonces.get(&message.nonce).copied() {
            Some(Nonce::Pending(until)) if until > e.now => {
                nonces.insert(message.nonce, Nonce::Used(until));
                Ok(signer)
            }
            Some(Nonce::Used(_)) => Err(Refusal::Replayed),
            _ => Err(Refusal::UnknownNonce),
        }
    }
}

#[cfg(test)]
mod tests {
    use alloy::signers::{SignerSync as _, local::PrivateKeySigner};

    use super::*;

    fn signed(key: &PrivateKeySigner, m: &Message) -> (String, String) {
        let text = m.text();
        let sig = key.sign_message_sync(text.as_bytes()).unwrap();
        (text, format!("0x{}", hex::encode(sig.as_bytes())))
    }

    #[test]
    fn each_refusal_is_its_own() {
        let admin = PrivateKeySigner::random();
        let stranger = PrivateKeySigner::random();
        let logins = Logins::default();
        let now = 1_000_000;
        let nonce = logins.issue(now);
        let admins = [admin.address()];
        let expected = Expected {
            domain: "broker.example:8080",
            uri: "https://broker.example:8080/manager/",
            chain_id: 31337,
            admins: &admins,
            now,
            cookie_nonce: Some(&nonce),
        };
        let message = Message {
            domain: expected.domain.into(),
            address: admin.address(),
            uri: expected.uri.into(),
            chain_id: 31337,
            nonce: nonce.clone(),
            issued_at: now,
            expiration: now + NONCE_SECS,
        };
        let refused = |key: &PrivateKeySigner, m: &Message, e: &Expected| {
            let (text, sig) = signed(key, m);
            logins.verify(&text, &sig, e).unwrap_err()
        };
        let closed = Expected {
            admins: &[],
            ..expected
        };
        assert_eq!(refused(&admin, &message, &closed), Refusal::Closed);
        let theirs = Message {
            address: stranger.address(),
            ..message.clone()
        };
        assert_eq!(
            refused(&stranger, &theirs, &expected),
            Refusal::NotAdmin(stranger.address())
        );
        assert!(matches!(
            refused(&stranger, &message, &expected),
            Refusal::SignerMismatch { .. }
        ));
        let phished = Message {
            domain: "evil.example".into(),
            ..message.clone()
        };
        assert!(matches!(
            refused(&admin, &phished, &expected),
            Refusal::WrongDomain { .. }
        ));
        let elsewhere = Message {
            uri: "https://evil.example/".into(),
            ..message.clone()
        };
        assert!(matches!(
            refused(&admin, &elsewhere, &expected),
            Refusal::WrongUri { .. }
        ));
        let mainnet = Message {
            chain_id: 1,
            ..message.clone()
        };
        assert_eq!(
            refused(&admin, &mainnet, &expected),
            Refusal::WrongChain {
                got: 1,
                expected: 31337
            }
        );
        let stale = Message {
            expiration: now,
            ..message.clone()
        };
        assert_eq!(refused(&admin, &stale, &expected), Refusal::Expired(now));
        let no_cookie = Expected {
            cookie_nonce: None,
            ..expected
        };
        assert_eq!(
            refused(&admin, &message, &no_cookie),
            Refusal::NotThisBrowser
        );
        let made_up = logins.issue(now).replace(|c: char| c.is_ascii_digit(), "f");
        let unknown = Message {
            nonce: made_up.clone(),
            ..message.clone()
        };
        let cookie = Expected {
            cookie_nonce: Some(&made_up),
            ..expected
        };
        assert_eq!(refused(&admin, &unknown, &cookie), Refusal::UnknownNonce);
        // The nonce outlived: refused even if the message says otherwise.
        let later = Expected {
            now: now + NONCE_SECS,
            ..expected
        };
        let long = Message {
            expiration: now + 10 * NONCE_SECS,
            ..message.clone()
        };
        assert_eq!(refused(&admin, &long, &later), Refusal::UnknownNonce);

        // None of those spent the nonce; the admin's login does, once.
        let (text, sig) = signed(&admin, &message);
        assert_eq!(logins.verify(&text, &sig, &expected), Ok(admin.address()));
        assert_eq!(
            logins.verify(&text, &sig, &expected),
            Err(Refusal::Replayed)
        );
    }
}
