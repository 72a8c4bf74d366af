//! What setup writes, with the owner and mode each file needs: keys 0600
//! owned by the daemon's user, the configuration 0640 readable by its
//! group, the state directory 0750 its own. Every file is written whole or
//! not at all (a temporary file renamed into place).

use std::{fs, os::unix::fs::DirBuilderExt as _, path::Path};

use anyhow::Context as _;
use broker_contracts::{
    atomic_file::{self, FileSpec},
    keys, protocol,
};
use broker_userspace::config::Config;
use nix::unistd::{Gid, Uid, chown};
use wireguard_control::Key;

/// The package's system user, the default owner when it exists.
const PACKAGE_USER: &str = "blockhost-broker";

/// The user the daemon runs as.
pub struct User {
    pub name: String,
    uid: Uid,
    gid: Gid,
}

/// The daemon's user for `--user NAME` (which must exist), else the
/// package's user if it exists; None leaves the files to whoever runs setup.
pub fn owner(name: Option<&str>) -> anyhow::Result<Option<User>> {
    let lookup = |name: &str| {
        nix::unistd::User::from_name(name).with_context(|| format!("looking up the user {name}"))
    };
    let user = match name {
        Some(name) => Some(lookup(name)?.with_context(|| {
            format!("--user {name}: no such user (the package creates {PACKAGE_USER})")
        })?),
        None => lookup(PACKAGE_USER)?,
    };
    Ok(user.map(|u| User {
        name: u.name,
        uid: u.uid,
        gid: u.gid,
    }))
}

/// Makes `dir` (and its parents) if missing, with `mode`; owned by `owner`
/// when given.
pub fn create_dir(dir: &Path, mode: u32, owner: Option<&User>) -> anyhow::Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    give(dir, owner)
}

/// Gives `path` to `owner` (user and group), if one is given.
pub fn give(path: &Path, owner: Option<&User>) -> anyhow::Result<()> {
    if let Some(user) = owner {
        chown(path, Some(user.uid), Some(user.gid))
            .with_context(|| format!("giving {} to {}", path.display(), user.name))?;
    }
    Ok(())
}

/// The broker's ECIES key at `path`: kept when it exists (requests already
/// encrypted to it stay readable), else made. Its public key.
pub fn ecies_key(path: &Path, owner: Option<&User>) -> anyhow::Result<[u8; 65]> {
    let secret = match keys::read_secret(path) {
        Ok(secret) => secret,
        Err(_) if !path.exists() => {
            let (secret, _) = ecies::utils::generate_keypair();
            let secret = secret.serialize();
            keys::create_secret(path, &secret)
                .with_context(|| format!("writing {}", path.display()))?;
            secret
        }
        Err(e) => return Err(e).with_context(|| format!("the ECIES key {}", path.display())),
    };
    give(path, owner)?;
    protocol::public_key(&secret)
        .with_context(|| format!("{} is not a secp256k1 secret key", path.display()))
}

/// The broker's WireGuard key at `path` (`wg genkey` format): kept when it
/// exists (clients' configurations name its public key), else made. Its
/// public key.
pub fn wireguard_key(path: &Path, owner: Option<&User>) -> anyhow::Result<Key> {
    let key = if path.exists() {
        keys::check_private(path)
            .with_context(|| format!("the WireGuard key {}", path.display()))?;
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Key::from_base64(text.trim()).map_err(|_| {
            anyhow::anyhow!(
                "{} does not hold a WireGuard key (`wg genkey` format)",
                path.display()
            )
        })?
    } else {
        let key = Key::generate_private();
        // Never replaces a key made meanwhile (its public key may be out).
        write_whole(
            path,
            format!("{}\n", key.to_base64()).as_bytes(),
            FileSpec::private().create_new(),
        )?;
        key
    };
    give(path, owner)?;
    Ok(key.get_public())
}

/// Writes `config` to `path`, mode 0640, its group the daemon's.
pub fn write_config(path: &Path, config: &Config, owner: Option<&User>) -> anyhow::Result<()> {
    let text = format!(
        "# Written by `blockhost-broker setup`; `blockhost-broker check-config` checks it.\n{}",
        toml::to_string(config).context("serialising the configuration")?
    );
    // The group is given before the file has its name: the daemon can read
    // whatever configuration is there, even after a crash.
    write_whole(
        path,
        text.as_bytes(),
        FileSpec::mode(0o640).group(owner.map(|u| u.gid.as_raw())),
    )
}

/// Writes `bytes` to `path` as `spec` says, its mode set before any byte,
/// whole or not at all (the shared [`atomic_file`]).
fn write_whole(path: &Path, bytes: &[u8], spec: FileSpec) -> anyhow::Result<()> {
    atomic_file::write(path, bytes, spec).with_context(|| format!("writing {}", path.display()))
}
