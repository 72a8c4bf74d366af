//! The files other BlockHost components read (wire-protocol §7), written
//! atomically by the shared [`atomic_file`]: a temporary file in the same
//! directory, given its mode (and the `blockhost` group, where it exists)
//! before any content, synced, then renamed over the old one. A reader sees
//! the old file or the new one, never a half-written one, and a private key
//! is never readable by others for a moment.

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use alloy::primitives::Address;
use anyhow::Context as _;
use broker_contracts::{
    atomic_file::{self, FileSpec},
    error_text::one_line,
};
use serde::{Deserialize, Serialize};

pub const ALLOCATION_FILE: &str = "broker-allocation.json";
pub const CONTRACT_FILE: &str = "broker-contract.json";
/// It holds the WireGuard private key: root writes, the blockhost group reads.
pub const ALLOCATION_MODE: u32 = 0o640;
/// As the field client writes it.
pub const CONTRACT_MODE: u32 = 0o640;
/// The group of the BlockHost components that read the files.
const READER_GROUP: &str = "blockhost";

/// `broker-allocation.json`: these keys, in this order (the first four are
/// read by other components and must never be renamed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub prefix: String,
    pub gateway: String,
    pub broker_pubkey: String,
    pub broker_endpoint: String,
    pub nft_contract: String,
    pub request_id: u64,
    pub wg_private_key: String,
    pub wg_public_key: String,
    /// ISO-8601, UTC (`2026-11-03T18:34:23+00:00`).
    pub allocated_at: String,
    /// The account that sent the answer (the requests contract's owner).
    pub broker_wallet: String,
    /// Empty when the broker has none (as the field client writes it).
    #[serde(default)]
    pub dns_zone: String,
}

/// `broker-contract.json`: the broker to renew with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerContract {
    pub requests_contract: String,
    /// The broker's ECIES public key: 130 hex digits, no 0x.
    pub broker_pubkey: String,
    pub broker_id: u64,
}

pub fn allocation_path(config_dir: &Path) -> PathBuf {
    config_dir.join(ALLOCATION_FILE)
}

pub fn contract_path(config_dir: &Path) -> PathBuf {
    config_dir.join(CONTRACT_FILE)
}

pub fn write_allocation(config_dir: &Path, allocation: &Allocation) -> anyhow::Result<PathBuf> {
    let path = allocation_path(config_dir);
    write_json(&path, allocation, ALLOCATION_MODE)?;
    Ok(path)
}

pub fn write_contract(config_dir: &Path, contract: &BrokerContract) -> anyhow::Result<PathBuf> {
    let path = contract_path(config_dir);
    write_json(&path, contract, CONTRACT_MODE)?;
    Ok(path)
}

/// The allocation file, or None when there is none.
pub fn read_allocation(config_dir: &Path) -> anyhow::Result<Option<Allocation>> {
    read_json(&allocation_path(config_dir))
}

pub fn read_contract(config_dir: &Path) -> anyhow::Result<Option<BrokerContract>> {
    read_json(&contract_path(config_dir))
}

/// Parses a 0x address read from one of our files.
pub fn parse_address(what: &str, text: &str) -> anyhow::Result<Address> {
    text.parse::<Address>()
        .ok()
        .with_context(|| format!("{what} `{}` is not a 0x address", one_line(text)))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Option<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_str(&text)
        .map(Some)
        .with_context(|| format!("{} is not what this client writes", path.display()))
}

/// Pretty JSON (two-space indent, as the field client writes) and a newline.
fn write_json<T: Serialize>(path: &Path, value: &T, mode: u32) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("serializing")?;
    text.push('\n');
    write_atomic(path, text.as_bytes(), mode)
}

/// Replaces `path` with `content`, mode `mode`, atomically (see the module
/// comment), making its directory if missing.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let spec = FileSpec::mode(mode).group(group_id(READER_GROUP));
    atomic_file::write(path, content, spec).with_context(|| format!("writing {}", path.display()))
}

/// Removes `path`; true when it was there.
pub fn remove(path: &Path) -> anyhow::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

pub fn group_id(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam reads a NUL-terminated name and returns a pointer to
    // static storage (or null), read at once; nothing else in this program
    // calls the getgr* family, so no other thread overwrites it meanwhile.
    let group = unsafe { libc::getgrnam(name.as_ptr()) };
    if group.is_null() {
        None
    } else {
        // SAFETY: non-null, points to a valid `struct group`.
        Some(unsafe { (*group).gr_gid })
    }
}

/// Now, as `allocated_at` records it.
pub fn now_iso8601() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    iso8601_utc(secs)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SS+00:00` (the form
/// Python's `datetime.fromisoformat` reads in every version).
pub fn iso8601_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
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
    use super::*;

    #[test]
    fn iso8601_known_instants() {
        assert_eq!(iso8601_utc(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(iso8601_utc(951_782_400), "2000-02-29T00:00:00+00:00");
        assert_eq!(iso8601_utc(1_700_000_000), "2023-11-14T22:13:20+00:00");
        assert_eq!(iso8601_utc(4_107_542_399), "2100-02-28T23:59:59+00:00");
    }

    #[test]
    fn atomic_write_sets_the_mode_and_leaves_no_temporary_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        write_atomic(&path, b"new", 0o640).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.json")]);
    }

    #[test]
    fn allocation_keys_are_exactly_the_specified_ones_in_order() {
        let a = Allocation {
            prefix: "2001:db8:0:1::100/120".into(),
            gateway: "2001:db8:0:1::2".into(),
            broker_pubkey: "k".into(),
            broker_endpoint: "203.0.113.10:51820".into(),
            nft_contract: "0x".into(),
            request_id: 7,
            wg_private_key: "p".into(),
            wg_public_key: "q".into(),
            allocated_at: iso8601_utc(0),
            broker_wallet: "0x".into(),
            dns_zone: String::new(),
        };
        let text = serde_json::to_string_pretty(&a).unwrap();
        let keys: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix('"')?.split('"').next())
            .collect();
        assert_eq!(
            keys,
            [
                "prefix",
                "gateway",
                "broker_pubkey",
                "broker_endpoint",
                "nft_contract",
                "request_id",
                "wg_private_key",
                "wg_public_key",
                "allocated_at",
                "broker_wallet",
                "dns_zone"
            ]
        );
        assert!(text.contains("\"request_id\": 7"));
    }
}
