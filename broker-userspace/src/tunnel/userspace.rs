//! wireguard-go: starting it, and talking to it over its UAPI socket (the
//! text protocol of <https://www.wireguard.com/xplatform/>).
//!
//! The protocol is spoken here rather than through wireguard-control's
//! userspace backend, which drops wireguard-go's errno (a listen port in
//! use becomes a bare "invalid input" and a line on stdout) and has no
//! timeouts.

use std::{
    fs,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::SocketAddr,
    os::{fd::AsRawFd as _, unix::net::UnixStream},
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use ipnet::IpNet;

use super::{Peer, TunnelError};

/// Where wireguard-go (and `wg`) keep one socket per interface. It is not
/// per network namespace: interface names must be unique across them.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

const PROGRAM: &str = "wireguard-go";
/// For each exchange on the socket.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// For the starting process to create the device and daemonize.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// For the daemon to answer on its socket afterwards.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

pub fn socket_path(name: &str) -> PathBuf {
    PathBuf::from(SOCKET_DIR).join(format!("{name}.sock"))
}

/// Starts `wireguard-go NAME` in the calling thread's network namespace and
/// waits (blocking, at most 15 s) until the daemon it leaves behind answers
/// on its socket. The daemon is not our child and outlives us: tunnels
/// survive a broker restart.
pub(super) fn start(name: &str) -> Result<(), TunnelError> {
    let (mut output, writer) = io::pipe().map_err(|source| start_error(name, source))?;
    let mut cmd = Command::new(PROGRAM);
    cmd.arg(name)
        // Set, it would stay in the foreground; LOG_LEVEL would make the
        // daemon keep our pipe (and write into it); the FDs would make it
        // take over descriptors of ours instead of making its own.
        .env_remove("WG_PROCESS_FOREGROUND")
        .env_remove("LOG_LEVEL")
        .env_remove("WG_TUN_FD")
        .env_remove("WG_UAPI_FD")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(
            writer
                .try_clone()
                .map_err(|source| start_error(name, source))?,
        )
        .stderr(writer);
    let spawned = cmd.spawn();
    // Our copies of the pipe's write end go with the command.
    drop(cmd);
    let mut child = spawned.map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => TunnelError::WireguardGoMissing,
        _ => start_error(name, source),
    })?;

    let deadline = Instant::now() + START_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(TunnelError::WireguardGoHung {
                    name: name.into(),
                    secs: START_TIMEOUT.as_secs(),
                });
            }
            Err(source) => return Err(start_error(name, source)),
        }
    };
    if !status.success() {
        return Err(TunnelError::WireguardGoFailed {
            name: name.into(),
            status,
            output: read_what_is_there(&mut output),
        });
    }

    let uapi = Uapi::new(name);
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        match uapi.get() {
            Ok(_) => return Ok(()),
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Err(source) => {
                return Err(TunnelError::WireguardGoSilent {
                    name: name.into(),
                    socket: uapi.path,
                    secs: ANSWER_TIMEOUT.as_secs(),
                    source,
                });
            }
        }
    }
}

/// Stops the wireguard-go serving `name`: it exits when its socket is
/// removed, taking the interface with it.
pub(super) fn stop(name: &str) -> io::Result<()> {
    fs::remove_file(socket_path(name))
}

fn start_error(name: &str, source: io::Error) -> TunnelError {
    TunnelError::WireguardGoStart {
        name: name.into(),
        source,
    }
}

/// What an exited wireguard-go wrote, without its "you have a kernel module"
/// banner, on one line. Reads without blocking: a daemon holding the pipe
/// must not hang us.
fn read_what_is_there(pipe: &mut io::PipeReader) -> String {
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = pipe.read(&mut buf) {
        bytes.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['│', '┌', '└']))
        .collect();
    if lines.is_empty() {
        "no output".into()
    } else {
        lines.join("; ")
    }
}

/// A device as `get=1` reports it. Its private key is read past, never kept.
pub(super) struct Device {
    pub listen_port: Option<u16>,
    pub peers: Vec<Peer>,
}

/// The UAPI socket of one wireguard-go interface.
#[derive(Debug)]
pub(super) struct Uapi {
    path: PathBuf,
}

impl Uapi {
    pub fn new(name: &str) -> Uapi {
        Uapi {
            path: socket_path(name),
        }
    }

    /// True when something answers `get` on the socket.
    pub fn answers(&self) -> bool {
        self.get().is_ok()
    }

    pub fn get(&self) -> io::Result<Device> {
        let mut reader = self.exchange("get=1\n\n")?;
        let mut device = Device {
            listen_port: None,
            peers: Vec::new(),
        };
        let mut handshake = (0u64, 0u32);
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the UAPI answer ended early",
                ));
            }
            let line = line.trim_end_matches('\n');
            let Some((key, value)) = line.split_once('=') else {
                return Err(invalid(line));
            };
            match key {
                "listen_port" => {
                    device.listen_port = Some(value.parse().map_err(|_| invalid(key))?)
                }
                "public_key" => {
                    finish_peer(&mut device.peers, &mut handshake);
                    device.peers.push(Peer {
                        public_key: parse_key(value)?,
                        allowed_ips: Vec::new(),
                        last_handshake: None,
                        endpoint: None,
                    });
                }
                "allowed_ip" => {
                    let net: IpNet = value.parse().map_err(|_| invalid(key))?;
                    let peer = device.peers.last_mut().ok_or_else(|| invalid(key))?;
                    if let IpNet::V6(net) = net {
                        peer.allowed_ips.push(net);
                    }
                }
                "endpoint" => {
                    let peer = device.peers.last_mut().ok_or_else(|| invalid(key))?;
                    peer.endpoint = Some(parse_endpoint(value).ok_or_else(|| invalid(key))?);
                }
                "last_handshake_time_sec" => {
                    handshake.0 = value.parse().map_err(|_| invalid(key))?;
                }
                "last_handshake_time_nsec" => {
                    handshake.1 = value.parse().map_err(|_| invalid(key))?;
                }
                "errno" => {
                    finish_peer(&mut device.peers, &mut handshake);
                    errno(value)?;
                    return Ok(device);
                }
                // private_key, fwmark, byte counters, keepalive,
                // protocol_version, and whatever later versions add.
                _ => {}
            }
        }
    }

    /// Sends `set=1`, then `body` (lines ending in '\n'), and returns
    /// wireguard-go's errno as an error when it is not 0.
    pub fn set(&self, body: &str) -> io::Result<()> {
        let mut reader = self.exchange(&format!("set=1\n{body}\n"))?;
        let mut line = String::new();
        reader.read_line(&mut line)?;
        match line.trim_end().split_once('=') {
            Some(("errno", value)) => errno(value),
            _ => Err(invalid(line.trim_end())),
        }
    }

    fn exchange(&self, request: &str) -> io::Result<BufReader<UnixStream>> {
        let mut stream = UnixStream::connect(&self.path)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.write_all(request.as_bytes())?;
        Ok(BufReader::new(stream))
    }
}

/// A peer's handshake time arrives after its other fields.
fn finish_peer(peers: &mut [Peer], handshake: &mut (u64, u32)) {
    if let Some(peer) = peers.last_mut()
        && *handshake != (0, 0)
    {
        peer.last_handshake =
            Some(SystemTime::UNIX_EPOCH + Duration::new(handshake.0, handshake.1.min(999_999_999)));
    }
    *handshake = (0, 0);
}

fn parse_key(hex_key: &str) -> io::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut key).map_err(|_| invalid("public_key"))?;
    Ok(key)
}

/// `ip:port` or `[v6]:port`, as wireguard-go writes a peer's endpoint. A
/// link-local address comes with its zone by name (`[fe80::1%eth0]:51820`),
/// which `SocketAddr` cannot hold: the name is dropped, the address kept.
fn parse_endpoint(value: &str) -> Option<SocketAddr> {
    if let Ok(endpoint) = value.parse() {
        return Some(endpoint);
    }
    let (address, rest) = value.strip_prefix('[')?.split_once('%')?;
    let (_zone, port) = rest.split_once(']')?;
    format!("[{address}]{port}").parse().ok()
}

/// wireguard-go answers `errno=0`, or a negative errno.
fn errno(value: &str) -> io::Result<()> {
    match value.parse::<i32>() {
        Ok(0) => Ok(()),
        Ok(code) => Err(io::Error::from_raw_os_error(code.abs())),
        Err(_) => Err(invalid("errno")),
    }
}

/// Names the offending key only: values may be keys.
fn invalid(what: &str) -> io::Error {
    let what = what.split('=').next().unwrap_or_default();
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed UAPI answer (at `{what}`)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_read_as_wireguard_go_writes_them() {
        let parsed = |s: &str| parse_endpoint(s).map(|e| e.to_string());
        assert_eq!(
            parsed("203.0.113.2:40000").as_deref(),
            Some("203.0.113.2:40000")
        );
        assert_eq!(
            parsed("[2001:db8::2]:51820").as_deref(),
            Some("[2001:db8::2]:51820")
        );
        assert_eq!(
            parsed("[fe80::1%eth0]:51820").as_deref(),
            Some("[fe80::1]:51820")
        );
        for bad in [
            "",
            "203.0.113.2",
            "[fe80::1%eth0]",
            "[fe80::1%eth0]:x",
            "host:1",
        ] {
            assert_eq!(parsed(bad), None, "{bad:?}");
        }
    }
}
