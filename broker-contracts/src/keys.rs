//! Key files (wire-protocol §6): hex secret keys, with or without `0x`,
//! surrounding whitespace ignored. Secrets never leave these types in logs:
//! errors name the file, never its content.

use std::{
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use alloy::signers::local::PrivateKeySigner;
use thiserror::Error;

use crate::atomic_file::{self, FileSpec};

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
    /// Never echoes the argument: it is probably the secret itself.
    #[error(
        "this takes the path of a key file, and what was given looks like a key, not a file: \
         put the key in a file readable only by you (chmod 600), pass its path, and consider \
         the key exposed (shell history, process list)"
    )]
    KeyNotPath,
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

/// An Ethereum signer from a key file that only its owner can read: what a
/// command given a key file's path (`--operator-key`, `-k`) uses. A key
/// typed where its path belongs is refused without being echoed.
pub fn read_private_signer(path: &Path) -> Result<PrivateKeySigner, KeyError> {
    if !path.exists() && looks_like_a_key(path) {
        return Err(KeyError::KeyNotPath);
    }
    check_private(path)?;
    read_signer(path)
}

/// 64 hex digits, with or without 0x: a secret key given where its file
/// should be.
fn looks_like_a_key(arg: &Path) -> bool {
    let s = arg.to_string_lossy();
    let s = s.trim();
    let hex = s.strip_prefix("0x").unwrap_or(s);
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Writes `secret` as 64 lowercase hex digits and a newline, mode 0600 from
/// the start (never briefly readable by others), replacing `path`
/// atomically ([`atomic_file`]): a reader, or the file after a crash, holds
/// the old key or the new one, never a part of either.
pub fn write_secret(path: &Path, secret: &[u8; 32]) -> io::Result<()> {
    atomic_file::write(path, &secret_text(secret), FileSpec::private())
}

/// Like [`write_secret`], but never replaces a file: an existing `path`
/// fails with [`io::ErrorKind::AlreadyExists`], decided by the kernel when
/// the name is made (no window between a check and the write).
pub fn create_secret(path: &Path, secret: &[u8; 32]) -> io::Result<()> {
    atomic_file::write(path, &secret_text(secret), FileSpec::private().create_new())
}

fn secret_text(secret: &[u8; 32]) -> Vec<u8> {
    format!("{}\n", hex::encode(secret)).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(dir: &tempfile::TempDir, name: &str, content: &str, mode: u32) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn reads_hex_with_or_without_prefix_and_whitespace() {
        let dir = tempfile::tempdir().unwrap();
        let k = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
        for (i, text) in [k.to_string(), format!("0x{k}\n"), format!("  {k}  \n")]
            .iter()
            .enumerate()
        {
            let p = temp(&dir, &format!("ok{i}"), text, 0o600);
            assert_eq!(hex::encode(read_secret(&p).unwrap()), k);
            assert!(read_signer(&p).is_ok());
        }
    }

    #[test]
    fn rejects_malformed_and_invalid_keys_without_echoing_them() {
        let dir = tempfile::tempdir().unwrap();
        for (i, text) in ["", "abc", "zz", &"ab".repeat(33), &"0".repeat(63)]
            .iter()
            .enumerate()
        {
            let p = temp(&dir, &format!("bad{i}"), text, 0o600);
            let e = read_secret(&p).unwrap_err();
            assert!(matches!(e, KeyError::Malformed { .. }), "{text:?}: {e}");
            if !text.is_empty() {
                assert!(!e.to_string().contains(*text));
            }
        }
        let zero = temp(&dir, "zero", &"0".repeat(64), 0o600);
        assert!(matches!(read_signer(&zero), Err(KeyError::Invalid { .. })));
    }

    #[test]
    fn private_check_and_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = temp(&dir, "open", &"11".repeat(32), 0o644);
        assert!(matches!(
            check_private(&p),
            Err(KeyError::TooOpen { mode: 0o644, .. })
        ));
        write_secret(&p, &[0x11; 32]).unwrap();
        assert!(check_private(&p).is_ok());
        assert_eq!(read_secret(&p).unwrap(), [0x11; 32]);
    }

    #[test]
    fn create_never_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("new.key");
        create_secret(&p, &[0x22; 32]).unwrap();
        assert!(check_private(&p).is_ok());
        let e = create_secret(&p, &[0x33; 32]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(read_secret(&p).unwrap(), [0x22; 32]);
        write_secret(&p, &[0x33; 32]).unwrap();
        assert_eq!(read_secret(&p).unwrap(), [0x33; 32]);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["new.key"]);
    }

    #[test]
    fn a_key_given_as_a_path_is_refused_without_echo() {
        let k = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
        for arg in [k.to_string(), format!("0x{k}")] {
            let e = read_private_signer(Path::new(&arg)).unwrap_err();
            assert!(matches!(e, KeyError::KeyNotPath), "{e}");
            assert!(!e.to_string().contains(k));
        }
    }
}
