//! The client's keys: the wallet that owns the NFT contract (read, never
//! written), the persistent `server.key` the broker encrypts its answers to,
//! and a fresh WireGuard key pair per request.

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
};

use alloy::signers::local::PrivateKeySigner;
use anyhow::Context as _;
use broker_contracts::{keys, protocol};
use wireguard_control::Key;

pub const SERVER_KEY_FILE: &str = "server.key";

/// The wallet signer from a key file that only its owner (and BlockHost's
/// group) can read.
pub fn wallet(path: &Path) -> anyhow::Result<PrivateKeySigner> {
    let what = || format!("wallet key {}", path.display());
    check_key_file(path).with_context(what)?;
    keys::read_signer(path).with_context(what)
}

/// The group BlockHost's components read its keys through.
const KEY_GROUP: &str = "blockhost";

/// Refuses a key file others can use. BlockHost installs its keys
/// (`deployer.key`, the wallet the field client is given, and `server.key`)
/// root:blockhost 0640, its components reading them through the group: that
/// is accepted, as 0600 is; any access for others, group write, or group
/// read for a group other than root's or blockhost's is not.
pub fn check_key_file(path: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    let gid = meta.gid();
    let trusted_group = gid == 0 || crate::files::group_id(KEY_GROUP) == Some(gid);
    if mode & 0o007 != 0 || mode & 0o030 != 0 || (mode & 0o070 != 0 && !trusted_group) {
        anyhow::bail!(
            "{} is readable by group or others (mode {mode:04o}, group {gid}): chmod 600 it (0640 is accepted only for group root or {KEY_GROUP})",
            path.display()
        );
    }
    Ok(())
}

/// The client's secp256k1 key pair (wire-protocol §3 `serverPubkey`).
pub struct ServerKey {
    pub secret: [u8; 32],
    pub public: [u8; 65],
}

impl ServerKey {
    /// `serverPubkey` as the request carries it: 130 lowercase hex digits.
    pub fn public_hex(&self) -> String {
        hex::encode(self.public)
    }
}

/// `CONFIG_DIR/server.key`, created (64 hex digits and a newline, mode 0600)
/// when missing, reused when present: answers to earlier requests stay
/// readable and the broker sees one server.
pub fn server_key(config_dir: &Path) -> anyhow::Result<ServerKey> {
    let path = config_dir.join(SERVER_KEY_FILE);
    let what = || format!("server key {}", path.display());
    if path.exists() {
        check_key_file(&path).with_context(what)?;
        let secret = keys::read_secret(&path).with_context(what)?;
        let public = protocol::public_key(&secret)
            .with_context(|| format!("{}: not a valid secp256k1 secret key", what()))?;
        return Ok(ServerKey { secret, public });
    }
    std::fs::create_dir_all(config_dir)
        .with_context(|| format!("creating {}", config_dir.display()))?;
    let (secret, public) = ecies::utils::generate_keypair();
    let key = ServerKey {
        secret: secret.serialize(),
        public: public.serialize(),
    };
    keys::write_secret(&path, &key.secret).with_context(|| format!("writing {}", what()))?;
    eprintln!("created {}", what());
    Ok(key)
}

/// A WireGuard key pair in `wg genkey` / `wg pubkey` form.
pub struct WgKeys {
    pub private: Key,
    pub public: Key,
}

impl WgKeys {
    pub fn generate() -> WgKeys {
        let private = Key::generate_private();
        let public = private.get_public();
        WgKeys { private, public }
    }
}

/// A 32-byte WireGuard key in standard base64, re-encoded (so whatever is
/// written from it is exactly 44 base64 characters, never other text).
pub fn parse_wg_key(what: &str, text: &str) -> anyhow::Result<Key> {
    Key::from_base64(text.trim())
        .ok()
        .with_context(|| format!("{what} is not a base64 WireGuard key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BlockHost's own layout (root:blockhost 0640) must work unchanged;
    /// wider modes must not.
    #[test]
    fn key_files_as_blockhost_installs_them_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deployer.key");
        std::fs::write(&path, "00").unwrap();
        let gid = std::fs::metadata(&path).unwrap().gid();
        let trusted = gid == 0 || crate::files::group_id(KEY_GROUP) == Some(gid);
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, trusted),
            (0o440, trusted),
            (0o660, false),
            (0o644, false),
            (0o604, false),
            (0o602, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(check_key_file(&path).is_ok(), ok, "{mode:o} (group {gid})");
        }
    }

    #[test]
    fn server_key_is_created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = server_key(dir.path()).unwrap();
        let path = dir.path().join(SERVER_KEY_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = server_key(dir.path()).unwrap();
        assert_eq!(first.secret, again.secret);
        assert_eq!(first.public_hex().len(), 130);
        assert!(first.public_hex().starts_with("04"));
    }

    #[test]
    fn an_open_server_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        server_key(dir.path()).unwrap();
        let path = dir.path().join(SERVER_KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = format!("{:#}", server_key(dir.path()).err().unwrap());
        assert!(e.contains("readable by group or others"), "{e}");
    }

    #[test]
    fn wg_keys_round_trip() {
        let k = WgKeys::generate();
        assert_eq!(k.public.to_base64().len(), 44);
        let parsed = parse_wg_key("key", &k.public.to_base64()).unwrap();
        assert_eq!(parsed.as_bytes(), k.public.as_bytes());
        assert!(parse_wg_key("key", "not a key\nPostUp = x").is_err());
    }
}
