//! The control socket: a Unix socket the daemon serves (mode 0660, so its
//! owner and group only) and the operator's commands talk to, one JSON line
//! asked, one answered, per connection.
//!
//! Asked: `{"command": "status"}`, `{"command": "allocations"}`,
//! `{"command": "allocation", "prefix": P}`, `{"command": "release",
//! "prefix": P}`, and for the HTTP API's tokens `{"command": "tokens"}`,
//! `{"command": "create_token", "token": T}`, `{"command": "revoke_token",
//! "name": N}`. Answered: `{"ok": VALUE}` (a [`Status`], a list of
//! [`AllocationView`], one of them, a [`Released`], the tokens, null) or
//! `{"error": TEXT}`.
//!
//! Besides the file's mode, each connecting process is checked with
//! SO_PEERCRED: root, the daemon's own user, or a member of the socket's
//! group (by its primary group or the group database), so a socket whose
//! mode was opened by mistake still answers nobody else. A request line is
//! at most [`MAX_REQUEST`] bytes and must arrive within [`READ_TIMEOUT`].
//!
//! [`Status`]: super::Status
//! [`AllocationView`]: super::AllocationView
//! [`Released`]: super::Released

use std::{
    io::{self, BufRead as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;
use thiserror::Error;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{info, warn};

use super::{
    handle::{Handle, TokenChange},
    release,
};
use crate::{config::Config, ipam::Pool, store::tokens::Token};

/// Where the socket goes when the configuration names no path and systemd
/// gives no runtime directory.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/blockhost-broker";
const SOCKET_NAME: &str = "control.sock";
/// The longest request line.
pub const MAX_REQUEST: u64 = 4096;
/// How long a client has to send its request (and to read the answer).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    Allocations,
    Allocation {
        prefix: Ipv6Net,
    },
    Release {
        prefix: Ipv6Net,
    },
    /// The HTTP API's tokens (their names, modes and hashes).
    Tokens,
    /// A new API token, by the SHA-256 of its secret (the secret never
    /// leaves the command that made it).
    CreateToken {
        token: Token,
    },
    RevokeToken {
        name: String,
    },
}

/// The answer's value travels as JSON text, not a `serde_json::Value`:
/// a pool's counts are u128 (a /48 in /120s has 2^72 slots), which a
/// `Value` cannot hold.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Box<RawValue>),
    Error(String),
}

/// The socket's path: `[broker] control_socket`, else `control.sock` in
/// systemd's `$RUNTIME_DIRECTORY` (its first entry), else in
/// [`DEFAULT_RUNTIME_DIR`].
pub fn socket_path(config: &Config) -> PathBuf {
    let runtime_directory = std::env::var("RUNTIME_DIRECTORY").ok();
    socket_path_with(config.broker.control_socket.as_deref(), runtime_directory)
}

fn socket_path_with(configured: Option<&Path>, runtime_directory: Option<String>) -> PathBuf {
    if let Some(path) = configured {
        return path.to_path_buf();
    }
    let runtime_dir = runtime_directory
        .and_then(|dirs| dirs.split(':').next().map(PathBuf::from))
        .filter(|dir| dir.is_absolute())
        .unwrap_or_else(|| DEFAULT_RUNTIME_DIR.into());
    runtime_dir.join(SOCKET_NAME)
}

#[derive(Debug, Error)]
pub enum ControlError {
    #[error(
        "another process answers on the control socket {0} (another broker on this host? give each its own [broker] control_socket)"
    )]
    InUse(PathBuf),
    #[error("control socket {path}: {action}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The daemon's listening socket; removed when dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path` (mode 0660, its directory made 0755 when missing),
    /// replacing a stale socket; refuses when a process answers on it.
    pub fn bind(path: &Path) -> Result<ControlSocket, ControlError> {
        let io = |action| {
            let path = path.to_path_buf();
            move |source| ControlError::Io {
                path,
                action,
                source,
            }
        };
        if let Some(dir) = path.parent().filter(|d| !d.exists()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(io("creating its directory"))?;
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_path_buf()));
        }
        // Bound under another name and given its mode there, then renamed
        // into place: never reachable with the umask's mode.
        let fresh = path.with_extension("new");
        let _ = std::fs::remove_file(&fresh);
        let listener = UnixListener::bind(&fresh).map_err(io("binding"))?;
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o660))
            .map_err(io("setting its mode"))?;
        std::fs::rename(&fresh, path).map_err(io("moving it into place"))?;
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections (each in a task of its own) until the task
    /// running this is dropped.
    pub async fn serve(self, handle: Handle, pool: Pool) {
        info!(path = %self.path.display(), "control socket ready");
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!("control socket: accepting: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // The group is read at each connection: an operator may change
            // it (chgrp) without restarting the daemon.
            let group = std::fs::metadata(&self.path).map_or(u32::MAX, |m| m.gid());
            tokio::spawn(connection(stream, handle.clone(), pool, group));
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn connection(mut stream: UnixStream, handle: Handle, pool: Pool, group: u32) {
    let response = match allowed(&stream, group).await {
        Err(refusal) => {
            warn!("control socket: {refusal}");
            Response::Error(refusal)
        }
        Ok(()) => match read_request(&mut stream).await {
            Ok(request) => answer(request, &handle, &pool).await,
            Err(e) => Response::Error(e),
        },
    };
    let mut line = serde_json::to_vec(&response).expect("responses serialize");
    line.push(b'\n');
    // A client gone meanwhile (or too slow to read) loses its answer, nothing else.
    let _ = tokio::time::timeout(READ_TIMEOUT, stream.write_all(&line)).await;
}

/// Root, the daemon's own user, or a member of the socket's `group`.
async fn allowed(stream: &UnixStream, group: u32) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("reading the peer's credentials: {e}"))?;
    let (uid, gid) = (cred.uid(), cred.gid());
    // SAFETY: geteuid has no preconditions.
    let own = unsafe { libc::geteuid() };
    if uid == 0 || uid == own || gid == group {
        return Ok(());
    }
    // The group database may be slow (LDAP): off the daemon's thread.
    let member = tokio::task::spawn_blocking(move || member_of(uid, group))
        .await
        .unwrap_or(false);
    if member {
        return Ok(());
    }
    Err(format!(
        "refused: uid {uid} (pid {}) is not root, not the daemon's user, and not in the socket's group (gid {group})",
        cred.pid().unwrap_or(0)
    ))
}

/// Whether the user `uid` has `gid` as primary or supplementary group in
/// the user and group databases.
fn member_of(uid: u32, gid: u32) -> bool {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain data; getpwuid_r fills it with pointers into
    // `buf`, which outlives every use below.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found = std::ptr::null_mut();
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() {
        return false;
    }
    if pwd.pw_gid == gid {
        return true;
    }
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    for _ in 0..2 {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `groups` has room for `n` entries; pw_name points into `buf`.
        let rc =
            unsafe { libc::getgrouplist(pwd.pw_name, pwd.pw_gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            return groups[..n as usize].contains(&gid);
        }
        // Too small: `n` says how many there are.
        groups.resize(n.max(0) as usize + 1, 0);
    }
    false
}

async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let mut line = String::new();
    let mut reader = BufReader::new(stream).take(MAX_REQUEST + 1);
    match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => return Err(format!("no request within {READ_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(format!("reading the request: {e}")),
        Ok(Ok(_)) => {}
    }
    if line.len() as u64 > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    serde_json::from_str(line.trim()).map_err(|e| format!("malformed request: {e}"))
}

async fn answer(request: Request, handle: &Handle, pool: &Pool) -> Response {
    match request {
        Request::Status => ok(&handle.snapshot().status),
        Request::Allocations => match handle.allocations().await {
            Ok(all) => ok(&all),
            Err(e) => Response::Error(e),
        },
        Request::Allocation { prefix } => {
            if let Err(e) = release::slot_of(pool, prefix) {
                return Response::Error(e.to_string());
            }
            match handle.allocation(prefix).await {
                Ok(Some(view)) => ok(&view),
                Ok(None) => Response::Error(unknown(prefix)),
                Err(e) => Response::Error(e),
            }
        }
        Request::Release { prefix } => match handle.release(prefix).await {
            Ok(released) => ok(&released),
            Err(e) => Response::Error(e),
        },
        Request::Tokens => ok(&*handle.tokens()),
        Request::CreateToken { token } => token_change(handle, TokenChange::Create(token)).await,
        Request::RevokeToken { name } => token_change(handle, TokenChange::Revoke { name }).await,
    }
}

async fn token_change(handle: &Handle, change: TokenChange) -> Response {
    match handle.change_tokens(change).await {
        Ok(()) => ok(&()),
        Err(e) => Response::Error(e),
    }
}

fn ok(value: &impl Serialize) -> Response {
    match serde_json::value::to_raw_value(value) {
        Ok(raw) => Response::Ok(raw),
        Err(e) => Response::Error(format!("the daemon could not write its answer: {e}")),
    }
}

/// The error for a prefix of the pool that no allocation has.
pub fn unknown(prefix: Ipv6Net) -> String {
    format!("no allocation has {prefix}")
}

// ---------------------------------------------------------------- client

#[derive(Debug, Error)]
pub enum AskError {
    /// No socket, or nobody listening on it.
    #[error("no daemon answers on {path}")]
    NoDaemon { path: PathBuf },
    #[error("permission denied on {path}: run as root or as a member of the socket's group")]
    Denied { path: PathBuf },
    /// The daemon's answer was an error.
    #[error("{0}")]
    Refused(String),
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "control socket {path}: the daemon closed the connection without an answer (did it stop?)"
    )]
    NoAnswer { path: PathBuf },
    #[error("control socket {path}: unexpected answer: {reason}")]
    Protocol { path: PathBuf, reason: String },
}

/// Asks the daemon on `path` and waits at most `timeout` for its answer.
/// (Blocking: for the command line.)
pub fn ask<T: DeserializeOwned>(
    path: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<T, AskError> {
    let io = |source: io::Error| AskError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => AskError::NoDaemon {
            path: path.to_path_buf(),
        },
        io::ErrorKind::PermissionDenied => AskError::Denied {
            path: path.to_path_buf(),
        },
        _ => io(e),
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(READ_TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_vec(request).expect("requests serialize");
    line.push(b'\n');
    if let Err(e) = stream.write_all(&line) {
        // A refusing daemon answers and closes without reading the
        // request: its answer is still there to read.
        if !matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ) {
            return Err(io(e));
        }
    }
    let mut answer = String::new();
    io::BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(io)?;
    if answer.is_empty() {
        return Err(AskError::NoAnswer {
            path: path.to_path_buf(),
        });
    }
    let protocol = |reason: String| AskError::Protocol {
        path: path.to_path_buf(),
        reason,
    };
    match serde_json::from_str(&answer).map_err(|e| protocol(e.to_string()))? {
        Response::Ok(value) => {
            serde_json::from_str(value.get()).map_err(|e| protocol(e.to_string()))
        }
        Response::Error(message) => Err(AskError::Refused(message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_is_one_json_object_a_line() {
        let prefix: Ipv6Net = "2001:db8::100/120".parse().unwrap();
        let text = serde_json::to_string(&Request::Release { prefix }).unwrap();
        assert_eq!(
            text,
            r#"{"command":"release","prefix":"2001:db8::100/120"}"#
        );
        let status: Request = serde_json::from_str(r#"{"command":"status"}"#).unwrap();
        assert_eq!(status, Request::Status);
        let revoke: Request =
            serde_json::from_str(r#"{"command":"revoke_token","name":"ops"}"#).unwrap();
        assert_eq!(revoke, Request::RevokeToken { name: "ops".into() });
        // A new token travels as its hash, never its secret.
        let token = Token {
            name: "ops".into(),
            hash: [0xab; 32],
            read_only: true,
            created_at: 5,
        };
        let text = serde_json::to_string(&Request::CreateToken { token }).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"command":"create_token","token":{{"name":"ops","hash":"{}","read_only":true,"created_at":5}}}}"#,
                "ab".repeat(32)
            )
        );
        let error = serde_json::to_string(&Response::Error("no".into())).unwrap();
        assert_eq!(error, r#"{"error":"no"}"#);
    }

    #[test]
    fn the_socket_is_configured_or_in_the_runtime_directory() {
        let path = |configured: Option<&str>, runtime: Option<&str>| {
            socket_path_with(configured.map(Path::new), runtime.map(String::from))
        };
        let default = Path::new("/run/blockhost-broker/control.sock");
        assert_eq!(path(None, None), default);
        assert_eq!(
            path(Some("/x/c.sock"), Some("/run/b")),
            Path::new("/x/c.sock")
        );
        assert_eq!(
            path(None, Some("/run/b:/run/c")),
            Path::new("/run/b/control.sock")
        );
        assert_eq!(path(None, Some("relative")), default);
    }

    /// A snapshot with nothing in it.
    fn empty_snapshot() -> super::super::Snapshot {
        use super::super::status::{PoolStatus, Status};
        super::super::Snapshot {
            status: Status {
                version: "test".into(),
                taken_at: 1,
                daemon: true,
                pool: PoolStatus {
                    upstream_prefix: "2001:db8::/48".parse().unwrap(),
                    allocation_size: 120,
                    total: 1 << 72,
                    used: 0,
                    free: 1 << 72,
                },
                contracts: vec![],
                owed_releases: 0,
                last_poll: None,
                chain: None,
                wallet: None,
                ndp: None,
                peers: None,
                counters: None,
            },
            recent: vec![],
        }
    }

    #[tokio::test]
    async fn the_socket_answers_its_owner_bounded_and_goes_with_the_daemon() {
        use super::super::{Status, handle};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/control.sock");
        // A stale socket (no one listening) is replaced.
        drop(std::os::unix::net::UnixListener::bind(dir.path().join("stale")).unwrap());
        std::fs::create_dir(dir.path().join("run")).unwrap();
        std::fs::rename(dir.path().join("stale"), &path).unwrap();
        let socket = ControlSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert!(matches!(
            ControlSocket::bind(&path),
            Err(ControlError::InUse(_))
        ));

        let pool = Pool::new("2001:db8::/64".parse().unwrap(), 120).unwrap();
        let store = crate::store::Store::open(&dir.path().join("broker.redb"), pool).unwrap();
        let allocations = super::super::allocation::Reader::new(store.into(), pool, None);
        let (_publisher, handle) = handle::channel(empty_snapshot(), vec![], allocations);
        let server = tokio::spawn(socket.serve(handle, pool));
        let ask_path = path.clone();
        let blocking = move |request: Request| {
            let path = ask_path.clone();
            tokio::task::spawn_blocking(move || {
                ask::<Status>(&path, &request, Duration::from_secs(5))
            })
        };
        // Counts beyond u64 (a /48 in /120s) arrive whole.
        let status = blocking(Request::Status).await.unwrap().unwrap();
        assert_eq!(status.pool.total, 1 << 72);
        let prefix = "2001:db8::100/120".parse().unwrap();
        let e = blocking(Request::Allocation { prefix })
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.to_string(), "no allocation has 2001:db8::100/120");
        let prefix = "2001:db8::101/120".parse().unwrap();
        let e = blocking(Request::Allocation { prefix })
            .await
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("host bits"), "{e}");

        // A request line too long, or not JSON: an error, not a hang.
        let raw = |bytes: Vec<u8>| {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let _ = stream.write_all(&bytes);
                let mut answer = String::new();
                let _ = io::BufReader::new(stream).read_line(&mut answer);
                answer
            })
        };
        let long = raw(vec![b'x'; MAX_REQUEST as usize + 10]).await.unwrap();
        assert!(long.contains("longer than 4096 bytes"), "{long}");
        let bad = raw(b"{\"command\":\"launch\"}\n".to_vec()).await.unwrap();
        assert!(bad.contains("malformed request"), "{bad}");

        // The daemon gone: no socket, and the client says so.
        server.abort();
        let _ = server.await;
        assert!(!path.exists());
        let e = blocking(Request::Status).await.unwrap().unwrap_err();
        assert!(matches!(e, AskError::NoDaemon { .. }), "{e}");
    }

    #[test]
    fn root_is_a_member_of_its_own_group_and_nobody_of_root() {
        assert!(member_of(0, 0));
        // 65534: nobody / nogroup on Debian.
        assert!(!member_of(65534, 0));
        assert!(!member_of(4_000_000, 0), "an unknown user is in no group");
    }
}
