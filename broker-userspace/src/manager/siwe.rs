//! Sign-In with Ethereum (EIP-4361): the message the server builds, read
//! back from what the wallet signed, and the address that signed it.
//!
//! Only the fields this server writes are accepted, in the order EIP-4361
//! gives them; anything else is a malformed message rather than a field
//! silently ignored.

use alloy::primitives::{Address, Signature};
use thiserror::Error;

/// The sentence the wallet shows under the address.
pub const STATEMENT: &str = "Sign in to the blockhost-broker manager.";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The host (and port) the page was served from.
    pub domain: String,
    pub address: Address,
    pub uri: String,
    pub chain_id: u64,
    pub nonce: String,
    /// Seconds since the epoch.
    pub issued_at: u64,
    pub expiration: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SiweError {
    #[error("the signed text is not a sign-in message from this manager: {0}")]
    Malformed(String),
    #[error("the signature is not 65 bytes of hex (0x…): {0}")]
    BadSignature(String),
    #[error("no address can be recovered from the signature: {0}")]
    Unrecoverable(String),
}

impl Message {
    /// The text the wallet signs (EIP-4361's layout).
    pub fn text(&self) -> String {
        format!(
            "{domain} wants you to sign in with your Ethereum account:\n\
             {address}\n\
             \n\
             {STATEMENT}\n\
             \n\
             URI: {uri}\n\
             Version: 1\n\
             Chain ID: {chain_id}\n\
             Nonce: {nonce}\n\
             Issued At: {issued}\n\
             Expiration Time: {expires}",
            domain = self.domain,
            address = self.address.to_checksum(None),
            uri = self.uri,
            chain_id = self.chain_id,
            nonce = self.nonce,
            issued = rfc3339(self.issued_at),
            expires = rfc3339(self.expiration),
        )
    }

    /// `text` read back, as [`Message::text`] writes it.
    pub fn parse(text: &str) -> Result<Message, SiweError> {
        let bad = |m: &str| SiweError::Malformed(m.to_string());
        let mut lines = text.split('\n');
        let mut next = |what: &str| lines.next().ok_or_else(|| bad(&format!("no {what} line")));
        let domain = next("first")?
            .strip_suffix(" wants you to sign in with your Ethereum account:")
            .ok_or_else(|| bad("the first line does not name a domain"))?
            .to_string();
        let address = next("address")?;
        let address: Address = address
            .parse()
            .map_err(|_| bad(&format!("{address:?} is not an address")))?;
        if !next("blank")?.is_empty()
            || next("statement")? != STATEMENT
            || !next("blank")?.is_empty()
        {
            return Err(bad("the statement is not this manager's"));
        }
        let mut field = |name: &str| -> Result<String, SiweError> {
            let line = next(name)?;
            line.strip_prefix(&format!("{name}: "))
                .map(str::to_string)
                .ok_or_else(|| bad(&format!("expected {name}, found {line:?}")))
        };
        let uri = field("URI")?;
        if field("Version")? != "1" {
            return Err(bad("Version is not 1"));
        }
        let chain_id = field("Chain ID")?;
        let chain_id = chain_id
            .parse()
            .map_err(|_| bad(&format!("Chain ID {chain_id:?} is not a number")))?;
        let nonce = field("Nonce")?;
        let issued_at = field("Issued At")?;
        let issued_at =
            parse_rfc3339(&issued_at).ok_or_else(|| bad(&format!("Issued At {issued_at:?}")))?;
        let expiration = field("Expiration Time")?;
        let expiration = parse_rfc3339(&expiration)
            .ok_or_else(|| bad(&format!("Expiration Time {expiration:?}")))?;
        if lines.next().is_some() {
            return Err(bad("there are lines after Expiration Time"));
        }
        Ok(Message {
            domain,
            address,
            uri,
            chain_id,
            nonce,
            issued_at,
            expiration,
        })
    }
}

/// Who signed `text` with `personal_sign` (EIP-191), given the signature
/// as the wallet returns it (0x and 130 hex digits).
pub fn signer(text: &str, signature: &str) -> Result<Address, SiweError> {
    let bytes = hex::decode(signature.trim().trim_start_matches("0x"))
        .map_err(|e| SiweError::BadSignature(e.to_string()))?;
    let signature = Signature::try_from(bytes.as_slice())
        .map_err(|e| SiweError::BadSignature(e.to_string()))?;
    signature
        .recover_address_from_msg(text.as_bytes())
        .map_err(|e| SiweError::Unrecoverable(e.to_string()))
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (UTC only, as this server writes).
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let time = time.split_once('.').map_or(time, |(t, fraction)| {
        if fraction.bytes().all(|b| b.is_ascii_digit()) {
            t
        } else {
            ""
        }
    });
    let num = |s: &str, len: usize| -> Option<u64> {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next()?, 4)?, num(d.next()?, 2)?, num(d.next()?, 2)?);
    let mut t = time.split(':');
    let (h, min, s) = (num(t.next()?, 2)?, num(t.next()?, 2)?, num(t.next()?, 2)?);
    if d.next().is_some() || t.next().is_some() {
        return None;
    }
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(y as i64, m as u32, day as u32);
    // The day must exist (no 31 February): it must read back the same.
    if civil_from_days(days) != (y as i64, m as u32, day as u32) || days < 0 {
        return None;
    }
    Some(days as u64 * 86_400 + h * 3600 + min * 60 + s)
}

// Howard Hinnant's algorithms (proleptic Gregorian calendar).

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use alloy::signers::{SignerSync as _, local::PrivateKeySigner};

    use super::*;

    fn message(address: Address) -> Message {
        Message {
            domain: "127.0.0.1:8080".into(),
            address,
            uri: "http://127.0.0.1:8080/manager/".into(),
            chain_id: 31337,
            nonce: "a1b2c3d4e5f60718".into(),
            issued_at: 1_796_637_600,
            expiration: 1_796_637_900,
        }
    }

    #[test]
    fn the_message_reads_back_and_its_signer_is_recovered() {
        let key = PrivateKeySigner::random();
        let m = message(key.address());
        let text = m.text();
        assert!(
            text.starts_with("127.0.0.1:8080 wants you to sign in with your Ethereum account:\n0x")
        );
        assert!(
            text.contains("\nChain ID: 31337\nNonce: a1b2c3d4e5f60718\nIssued At: 2026-12-07T"),
            "{text}"
        );
        assert_eq!(Message::parse(&text), Ok(m));
        let signature = key.sign_message_sync(text.as_bytes()).unwrap();
        let hex = format!("0x{}", hex::encode(signature.as_bytes()));
        assert_eq!(signer(&text, &hex), Ok(key.address()));
        // Another text, another signer.
        let other = text.replace("31337", "1");
        assert_ne!(signer(&other, &hex), Ok(key.address()));
        assert!(matches!(
            signer(&text, "0x1234"),
            Err(SiweError::BadSignature(_))
        ));
    }

    #[test]
    fn anything_but_the_managers_layout_is_malformed() {
        let text = message(Address::ZERO).text();
        for broken in [
            text.replace("wants you", "would like you"),
            text.replace("Version: 1", "Version: 2"),
            text.replace("Chain ID: 31337", "Chain ID: x"),
            text.replace("Z\n", "+01:00\n"),
            format!("{text}\nResources:"),
            text.replace(STATEMENT, "Send all your funds."),
            text.lines().take(5).collect::<Vec<_>>().join("\n"),
        ] {
            assert!(
                matches!(Message::parse(&broken), Err(SiweError::Malformed(_))),
                "{broken}"
            );
        }
    }

    #[test]
    fn times_are_utc_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_687_999), "2026-12-07T23:59:59Z");
        for secs in [0, 951_782_400, 1_796_687_999, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(secs)), Some(secs));
        }
        assert_eq!(
            parse_rfc3339("2026-12-07T10:00:00.123Z"),
            Some(1_796_637_600)
        );
        for bad in [
            "2026-02-30T00:00:00Z",
            "2026-12-07 10:00:00Z",
            "2026-12-07T10:00:00",
            "26-12-07T10:00:00Z",
            "2026-13-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
