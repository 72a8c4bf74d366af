//! Network namespaces and wireguard-go interfaces for the `install` test,
//! as guards: the namespace is deleted, the interface's UAPI socket removed
//! and a leftover wireguard-go killed when they drop, also when the test
//! fails.

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

/// `bbt-<pid in hex>-<n><tag>`: unique across test processes, at most 15
/// characters (an interface name; the UAPI sockets under
/// /var/run/wireguard are shared by every namespace).
pub fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("bbt-{:x}-{n}{tag}", std::process::id());
    assert!(name.len() <= 15, "{name} is too long for an interface");
    name
}

pub struct Netns {
    name: String,
    file: File,
}

impl Netns {
    /// A namespace with `lo` up and duplicate address detection off.
    pub fn new(tag: &str) -> Netns {
        let name = unique_name(tag);
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let file = match File::open(format!("/run/netns/{name}")) {
            Ok(f) => f,
            Err(e) => {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
                panic!("opening /run/netns/{name}: {e}");
            }
        };
        let ns = Netns { name, file };
        ns.exec_ok(
            "sysctl",
            &[
                "-q",
                "-w",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
        );
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let out = run_ok(Command::new("ip").args(["-n", &self.name]).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn exec_ok(&self, program: &str, args: &[&str]) -> Output {
        run_ok(
            Command::new("ip")
                .args(["netns", "exec", &self.name, program])
                .args(args),
        )
    }

    /// PROGRAM run inside this namespace (network only: setns before exec,
    /// sharing our mount namespace and so /etc, /run and /var/run).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let fd = self.file.as_raw_fd();
        // SAFETY: setns is async-signal-safe; `fd` stays open until exec
        // (self outlives the spawn).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A wireguard-go interface, whoever started it (the test or wg-quick).
pub struct WireguardGo {
    ns: String,
    name: String,
}

impl WireguardGo {
    pub fn guard(ns: &Netns, name: &str) -> WireguardGo {
        WireguardGo {
            ns: ns.name().into(),
            name: name.into(),
        }
    }
}

impl Drop for WireguardGo {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", &self.ns, "link", "del", &self.name])
            .output();
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.name));
        let deadline = Instant::now() + Duration::from_secs(2);
        while !daemons(&self.name).is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        for pid in daemons(&self.name) {
            // SAFETY: kill(2) of a wireguard-go serving our test interface.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Pids of `wireguard-go NAME` processes.
fn daemons(name: &str) -> Vec<i32> {
    let want = format!("wireguard-go\0{name}\0");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.ends_with(want.as_bytes()))
        })
        .collect()
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}
