//! Key files (wire-protocol §6): hex secret keys, with or without `0x`,
//! surrounding whitespace ignored. Secrets never leave these types in logs:
//! errors name the file, never its content.

use std::{
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use alloy::signers::local::PrivateKeySigner;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path}: not a 32-byte hex secret key (64 hex digits, optional 0x)")]
    Malformed { path: PathBuf },
    #[error("key file {path}: not a valid secp256k1 secret key")]
    Invalid { path: PathBuf },
    #[error("key file {path} is readable by group or others (mode {mode:o}); chmod 600 it")]
    TooOpen { path: PathBuf, mode: u32 },
}

/// The 32 bytes of a hex secret key file.
pub fn read_secret(path: &Path) -> Result<[u8; 32], KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let hex_part = text.trim();
    let hex_part = hex_part.strip_prefix("0x").unwrap_or(hex_part);
    let mut secret = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut secret).map_err(|_| KeyError::Malformed {
        path: path.to_path_buf(),
    })?;
    Ok(secret)
}

/// Refuses a key file that group or others can read.
pub fn check_private(path: &Path) -> Result<(), KeyError> {
    let meta = std::fs::metadata(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// An Ethereum signer from a key file (the operator's or a wallet's).
pub fn read_signer(path: &Path) -> Result<PrivateKeySigner, KeyError> {
    let secret = read_secret(path)?;
    PrivateKeySigner::from_slice(&secret).map_err(|_| KeyError::Invalid {
        path: path.to_path_buf(),
    })
}

/// Writes `secret` as 64 lowercase hex digits and a newline, mode 0600 from
/// the start (never briefly readable by others).
pub fn write_secret(path: &Path, secret: &[u8; 32]) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    use std::io::Write as _;
    writeln!(file, "{}", hex::encode(secret))?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, content: &str, mode: u32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bbt-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn reads_hex_with_or_without_prefix_and_whitespace() {
        let k = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
        for (i, text) in [k.to_string(), format!("0x{k}\n"), format!("  {k}  \n")]
            .iter()
            .enumerate()
        {
            let p = temp(&format!("ok{i}"), text, 0o600);
            assert_eq!(hex::encode(read_secret(&p).unwrap()), k);
            assert!(read_signer(&p).is_ok());
        }
    }

    #[test]
    fn rejects_malformed_and_invalid_keys_without_echoing_them() {
        for (i, text) in ["", "abc", "zz", &"ab".repeat(33), &"0".repeat(63)]
            .iter()
            .enumerate()
        {
            let p = temp(&format!("bad{i}"), text, 0o600);
            let e = read_secret(&p).unwrap_err();
            assert!(matches!(e, KeyError::Malformed { .. }), "{text:?}: {e}");
            if !text.is_empty() {
                assert!(!e.to_string().contains(*text));
            }
        }
        let zero = temp("zero", &"0".repeat(64), 0o600);
        assert!(matches!(read_signer(&zero), Err(KeyError::Invalid { .. })));
    }

    #[test]
    fn private_check_and_write() {
        let p = temp("open", &"11".repeat(32), 0o644);
        assert!(matches!(
            check_private(&p),
            Err(KeyError::TooOpen { mode: 0o644, .. })
        ));
        write_secret(&p, &[0x11; 32]).unwrap();
        assert!(check_private(&p).is_ok());
        assert_eq!(read_secret(&p).unwrap(), [0x11; 32]);
    }
}
