//! Sessions: a cookie the server signs (HMAC-SHA256) with a key kept 0600
//! in the state directory, so a session outlives a restart of the daemon
//! and nothing about it lives only in memory. A logout is kept beside the
//! key ([`LOGOUTS_FILE`]) until the session would have ended, so that it
//! holds across a restart too.
//!
//! The cookie is `ID.ADDRESS.EXPIRES.MAC`: a random id, the admin's
//! address, the end of the session (seconds since the epoch), and the MAC
//! of the three. Its CSRF token is another MAC of the id: the page gets it
//! in JSON and sends it back in a header, which a cross-site form cannot.

use std::{
    collections::HashMap,
    io,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

use alloy::primitives::Address;
use broker_contracts::keys;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;
use thiserror::Error;

/// The key file's name in the state directory.
pub const KEY_FILE: &str = "manager-session.key";
/// The logged-out sessions (`ID EXPIRES` a line), so that a logout holds
/// across a restart of the daemon.
pub const LOGOUTS_FILE: &str = "manager-logouts";

#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("the manager's session key {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the manager's session key")]
    Key(#[from] keys::KeyError),
}

/// A checked session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub address: Address,
    pub expires: u64,
}

/// Why a cookie is not a session.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("not signed in")]
    Missing,
    #[error("the session cookie is not one this manager signed: sign in again")]
    Forged,
    #[error("the session ended: sign in again")]
    Expired,
    #[error("the session was logged out: sign in again")]
    LoggedOut,
}

pub struct Sessions {
    key: [u8; 32],
    /// Logged-out ids until they would have expired.
    ended: Mutex<HashMap<String, u64>>,
    /// Where they are kept (None: in memory only, for tests).
    logouts: Option<PathBuf>,
}

impl Sessions {
    /// The key in `dir`, made (0600, atomically) the first time.
    pub fn open(dir: &Path) -> Result<Sessions, KeyFileError> {
        let path = dir.join(KEY_FILE);
        // The daemon makes its state directory when it opens the database,
        // which is later: make it now, private to the daemon's user.
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| KeyFileError::Io {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        if !path.exists() {
            match keys::create_secret(&path, &rand::random()) {
                Ok(()) => {}
                // Made meanwhile by another start: read it.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(KeyFileError::Io { path, source }),
            }
        }
        keys::check_private(&path)?;
        let key = keys::read_secret(&path)?;
        let logouts = dir.join(LOGOUTS_FILE);
        let now = crate::store::now();
        let ended = match std::fs::read_to_string(&logouts) {
            Ok(text) => text
                .lines()
                .filter_map(|l| {
                    let (id, until) = l.split_once(' ')?;
                    Some((id.to_string(), until.parse::<u64>().ok()?))
                })
                .filter(|(_, until)| *until > now)
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => HashMap::new(),
            Err(source) => {
                return Err(KeyFileError::Io {
                    path: logouts,
                    source,
                });
            }
        };
        // Rewritten without the expired ones.
        write_logouts(&logouts, &ended).map_err(|source| KeyFileError::Io {
            path: logouts.clone(),
            source,
        })?;
        Ok(Sessions {
            key,
            ended: Mutex::new(ended),
            logouts: Some(logouts),
        })
    }

    /// Sessions signed with `key`, their logouts in memory only.
    pub fn with_key(key: [u8; 32]) -> Sessions {
        Sessions {
            key,
            ended: Mutex::new(HashMap::new()),
            logouts: None,
        }
    }

    fn mac(&self, parts: &[&str]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        for p in parts {
            // Lengths first: no two different part lists feed the same bytes.
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p.as_bytes());
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// A new session's cookie value.
    pub fn issue(&self, address: Address, expires: u64) -> (Session, String) {
        let id = hex::encode(rand::random::<[u8; 16]>());
        let address_text = format!("{address:#x}");
        let expires_text = expires.to_string();
        let mac = self.mac(&["session", &id, &address_text, &expires_text]);
        let value = format!("{id}.{address_text}.{expires_text}.{mac}");
        (
            Session {
                id,
                address,
                expires,
            },
            value,
        )
    }

    /// The session `value` (a cookie) is, at `now`.
    pub fn check(&self, value: Option<&str>, now: u64) -> Result<Session, SessionError> {
        let value = value.ok_or(SessionError::Missing)?;
        let parts: Vec<&str> = value.split('.').collect();
        let [id, address, expires, mac] = parts[..] else {
            return Err(SessionError::Forged);
        };
        let expected = self.mac(&["session", id, address, expires]);
        if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
            return Err(SessionError::Forged);
        }
        let (Ok(address), Ok(expires)) = (address.parse::<Address>(), expires.parse::<u64>())
        else {
            return Err(SessionError::Forged);
        };
        if now >= expires {
            return Err(SessionError::Expired);
        }
        let mut ended = self.ended.lock().expect("not poisoned");
        ended.retain(|_, until| *until > now);
        if ended.contains_key(id) {
            return Err(SessionError::LoggedOut);
        }
        Ok(Session {
            id: id.to_string(),
            address,
            expires,
        })
    }

    /// The session's CSRF token.
    pub fn csrf(&self, session: &Session) -> String {
        self.mac(&["csrf", &session.id])
    }

    /// Whether `presented` is the session's CSRF token.
    pub fn csrf_matches(&self, session: &Session, presented: Option<&str>) -> bool {
        let expected = self.csrf(session);
        presented.is_some_and(|p| bool::from(expected.as_bytes().ct_eq(p.as_bytes())))
    }

    /// Ends `session`: its cookie is refused from now on, after a restart
    /// too.
    pub fn end(&self, session: &Session) {
        let mut ended = self.ended.lock().expect("not poisoned");
        ended.insert(session.id.clone(), session.expires);
        if let Some(path) = &self.logouts {
            // Refused from now on either way; only a restart could forget it.
            if let Err(e) = write_logouts(path, &ended) {
                tracing::warn!("the manager's logouts {}: {e}", path.display());
            }
        }
    }
}

/// Replaces the logouts file (0600, atomically: a temporary file renamed).
fn write_logouts(path: &Path, ended: &HashMap<String, u64>) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    for (id, until) in ended {
        writeln!(file, "{id} {until}")?;
    }
    file.sync_all()?;
    std::fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_cookie_is_checked_by_its_mac_its_end_and_its_logout() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = Sessions::open(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let admin = Address::repeat_byte(0x11);
        let (session, cookie) = sessions.issue(admin, 1000);
        assert_eq!(sessions.check(Some(&cookie), 999), Ok(session.clone()));
        assert_eq!(
            sessions.check(Some(&cookie), 1000),
            Err(SessionError::Expired)
        );
        assert_eq!(sessions.check(None, 0), Err(SessionError::Missing));
        // Another address or a later end breaks the MAC.
        let other = cookie.replace(
            &format!("{admin:#x}"),
            &format!("{:#x}", Address::repeat_byte(0x22)),
        );
        assert_eq!(sessions.check(Some(&other), 0), Err(SessionError::Forged));
        let later = cookie.replace(".1000.", ".9000.");
        assert_eq!(sessions.check(Some(&later), 0), Err(SessionError::Forged));
        assert_eq!(sessions.check(Some("a.b"), 0), Err(SessionError::Forged));
        // The same key after a restart: the session holds.
        let reopened = Sessions::open(dir.path()).unwrap();
        assert_eq!(reopened.check(Some(&cookie), 0), Ok(session.clone()));
        // Another key: not.
        let stranger = Sessions::with_key([7; 32]);
        assert_eq!(stranger.check(Some(&cookie), 0), Err(SessionError::Forged));

        let csrf = sessions.csrf(&session);
        assert!(sessions.csrf_matches(&session, Some(&csrf)));
        assert!(!sessions.csrf_matches(&session, None));
        assert!(!sessions.csrf_matches(&session, Some(&csrf[1..])));
        let (second, _) = sessions.issue(admin, 1000);
        assert!(!sessions.csrf_matches(&second, Some(&csrf)));

        sessions.end(&session);
        assert_eq!(
            sessions.check(Some(&cookie), 0),
            Err(SessionError::LoggedOut)
        );
    }

    #[test]
    fn a_key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Sessions::open(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Sessions::open(dir.path()).is_err());
    }
}
