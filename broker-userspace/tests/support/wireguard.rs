//! wireguard-go interfaces of the tests, the broker's and the clients': unique
//! names (their sockets under /var/run/wireguard are shared by every
//! namespace), a guard that removes them, and a client end configured with
//! `wg` from a 0600 key file.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use broker_userspace::tunnel::socket_path;
use wireguard_control::Key;

use super::{
    netns::{Netns, run_bounded},
    pins::TEST_PREFIX,
};

/// `bbt-<pid in hex>-<n><tag>`: unique across test processes and calls, at
/// most 15 characters.
pub fn interface_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{TEST_PREFIX}{:x}-{n}{tag}", std::process::id());
    assert!(name.len() <= 15, "{name} is too long for an interface");
    name
}

/// Writes `content` and a newline to a new file of mode 0600 (never
/// readable by others, not even for a moment).
pub fn write_private(path: &Path, content: &str) {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| writeln!(f, "{content}"))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// A wireguard-go interface, whoever started it: on drop (also when the test
/// fails) the link is deleted and the socket removed, each of which stops
/// the daemon; one still running after that is killed.
pub struct WireguardGo {
    ns: String,
    name: String,
}

impl WireguardGo {
    pub fn guard(ns: &Netns, name: &str) -> Self {
        WireguardGo {
            ns: ns.name().into(),
            name: name.into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for WireguardGo {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", &self.ns, "link", "del", &self.name])
            .output();
        let _ = fs::remove_file(socket_path(&self.name));
        let deadline = Instant::now() + Duration::from_secs(2);
        while !daemons(&self.name).is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        for pid in daemons(&self.name) {
            eprintln!("killing wireguard-go {} (pid {pid})", self.name);
            // SAFETY: plain kill(2) of a process found by its command line.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Pids of the running `wireguard-go NAME` processes.
pub fn daemons(name: &str) -> Vec<i32> {
    let want = format!("wireguard-go\0{name}\0");
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
                cmdline.ends_with(want.as_bytes())
                    && (argv0 == b"wireguard-go" || argv0.ends_with(b"/wireguard-go"))
            })
        })
        .collect()
}

/// A client's tunnel: wireguard-go `name` in `ns` with `key` (from a 0600
/// file in `key_dir`), one peer — the broker at `endpoint`, allowed
/// `allowed_ips` — `address`/128 on the interface, and `route` through it.
pub struct ClientTunnel<'a> {
    pub ns: &'a Netns,
    pub name: &'a str,
    pub key_dir: &'a Path,
    pub endpoint: &'a str,
    pub allowed_ips: &'a str,
    pub route: &'a str,
}

impl ClientTunnel<'_> {
    /// Starts the interface (the caller holds its [`WireguardGo`] guard).
    pub fn start(&self, key: &Key, broker_public: &Key, address: &str) {
        let mut cmd = self.ns.command("wireguard-go");
        cmd.arg(self.name)
            .env_remove("WG_PROCESS_FOREGROUND")
            .env_remove("LOG_LEVEL");
        let (status, _, stderr) = run_bounded(cmd, Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "wireguard-go {}: {status:?} {stderr}",
            self.name
        );
        self.set_key(key, broker_public);
        self.ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{address}/128"),
            "dev",
            self.name,
            "nodad",
        ]);
        self.ns.ip(&["link", "set", self.name, "up"]);
        self.ns
            .ip(&["-6", "route", "add", self.route, "dev", self.name]);
    }

    /// Sets the private key (a new one after a rotation) and the broker peer.
    pub fn set_key(&self, key: &Key, broker_public: &Key) {
        let key_file = self.key_dir.join(format!(
            "{}-{}.key",
            self.name,
            &hex_of(&key.get_public().0)[..8]
        ));
        if !key_file.exists() {
            write_private(&key_file, &key.to_base64());
        }
        let out = self.ns.exec(
            "wg",
            &[
                "set",
                self.name,
                "private-key",
                key_file.to_str().expect("a UTF-8 path"),
                "peer",
                &broker_public.to_base64(),
                "endpoint",
                self.endpoint,
                "allowed-ips",
                self.allowed_ips,
                "persistent-keepalive",
                "25",
            ],
        );
        assert!(
            out.status.success(),
            "wg set {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `wg show NAME allowed-ips`: (public key, allowed IPs) per peer, sorted.
pub fn allowed_ips(ns: &Netns, name: &str) -> Vec<(String, String)> {
    let out = ns.exec("wg", &["show", name, "allowed-ips"]);
    assert!(
        out.status.success(),
        "wg show {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut peers: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (key, ips) = line.split_once('\t')?;
            Some((key.to_string(), ips.trim().to_string()))
        })
        .collect();
    peers.sort();
    peers
}
