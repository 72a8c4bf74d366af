//! wireguard-go interfaces (this machine has no WireGuard module): a guard
//! that stops one whoever started it, and a client's end of a tunnel set up
//! with `wg` from a 0600 key file. Their UAPI sockets under
//! /var/run/wireguard are shared by every namespace, so interface names must
//! be unique (see [`crate::names::interface_name`]).

use std::{
    fs,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use broker_userspace::tunnel::socket_path;
use wireguard_control::Key;

use crate::{
    files::write_private,
    netns::{Netns, run},
    process::run_bounded,
};

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
        stop(&self.name);
    }
}

/// Stops the wireguard-go daemon of interface `name`, wherever it runs:
/// removes its socket (it exits then), and kills it if it still runs 2 s
/// later.
pub fn stop(name: &str) {
    let _ = fs::remove_file(socket_path(name));
    let deadline = Instant::now() + Duration::from_secs(2);
    while !daemons(name).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    for pid in daemons(name) {
        eprintln!("killing wireguard-go {name} (pid {pid})");
        // SAFETY: plain kill(2) of a process found by its command line.
        unsafe { libc::kill(pid, libc::SIGKILL) };
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

/// Starts wireguard-go `name` in `ns` (it goes to the background; the
/// caller holds its [`WireguardGo`] guard).
pub fn start(ns: &Netns, name: &str) -> anyhow::Result<()> {
    let mut cmd = ns.command("wireguard-go");
    cmd.arg(name)
        .env_remove("WG_PROCESS_FOREGROUND")
        .env_remove("LOG_LEVEL");
    let out = run_bounded(cmd, Duration::from_secs(10))?;
    ensure!(
        out.status.is_some_and(|s| s.success()),
        "wireguard-go {name}: {:?} {}",
        out.status,
        out.stderr
    );
    Ok(())
}

/// A client's tunnel: wireguard-go `name` in `ns` with a key (from a 0600
/// file in `key_dir`), one peer — the broker at `endpoint`, allowed
/// `allowed_ips` — an address on the interface, and `route` through it.
pub struct ClientTunnel<'a> {
    pub ns: &'a Netns,
    pub name: &'a str,
    pub key_dir: &'a Path,
    pub endpoint: &'a str,
    pub allowed_ips: &'a str,
    pub route: &'a str,
}

impl ClientTunnel<'_> {
    /// Starts the interface with `address`/128 on it (the caller holds its
    /// [`WireguardGo`] guard).
    pub fn start(&self, key: &Key, broker_public: &Key, address: &str) -> anyhow::Result<()> {
        start(self.ns, self.name)?;
        self.set_key(key, broker_public)?;
        let ns = self.ns;
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{address}/128"),
            "dev",
            self.name,
            "nodad",
        ])?;
        ns.ip(&["link", "set", self.name, "up"])?;
        ns.ip(&["-6", "route", "add", self.route, "dev", self.name])?;
        Ok(())
    }

    /// Sets the private key (a new one after a rotation) and the broker peer.
    pub fn set_key(&self, key: &Key, broker_public: &Key) -> anyhow::Result<()> {
        let key_file = self.key_dir.join(format!(
            "{}-{}.key",
            self.name,
            &hex::encode(key.get_public().0)[..8]
        ));
        if !key_file.exists() {
            write_private(&key_file, &key.to_base64())?;
        }
        run(self.ns.command("wg").args([
            "set",
            self.name,
            "private-key",
            key_file.to_str().context("a UTF-8 path")?,
            "peer",
            &broker_public.to_base64(),
            "endpoint",
            self.endpoint,
            "allowed-ips",
            self.allowed_ips,
            "persistent-keepalive",
            "25",
        ]))?;
        Ok(())
    }
}

/// `wg show NAME allowed-ips` in `ns`: (public key, allowed IPs) per peer,
/// sorted.
pub fn allowed_ips(ns: &Netns, name: &str) -> anyhow::Result<Vec<(String, String)>> {
    let out = run(ns.command("wg").args(["show", name, "allowed-ips"]))?;
    let mut peers: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (key, ips) = line.split_once('\t')?;
            Some((key.to_string(), ips.trim().to_string()))
        })
        .collect();
    peers.sort();
    Ok(peers)
}

/// `wg show NAME listen-port` in `ns`: the UDP port the interface listens
/// on (wireguard-go picks one when none was set), where its peers see its
/// packets come from.
pub fn listen_port(ns: &Netns, name: &str) -> anyhow::Result<u16> {
    let out = run(ns.command("wg").args(["show", name, "listen-port"]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("`wg show {name} listen-port` gave {text:?}"))
}
