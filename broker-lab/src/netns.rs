//! Network namespaces and veth pairs, as guards: a namespace is deleted
//! when its guard drops, whatever happened before.
//!
//! Programs run in a namespace through a `setns` before `exec`, never
//! `ip netns exec`: that also gives them a mount namespace with /sys
//! remounted, and the broker's bpffs pins would then not outlive it.

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::{Command, Output, Stdio},
};

use anyhow::{Context as _, bail};

/// A named network namespace with `lo` up, deleted on drop.
pub struct Netns {
    name: String,
    file: File,
}

impl Netns {
    /// Creates `name`. Duplicate address detection is off (addresses are
    /// usable at once) and forwarding is on when `router`.
    pub fn new(name: &str, router: bool) -> anyhow::Result<Netns> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        let file = match File::open(format!("/run/netns/{name}")) {
            Ok(file) => file,
            Err(e) => {
                let _ = Command::new("ip").args(["netns", "del", name]).output();
                bail!("opening /run/netns/{name}: {e}");
            }
        };
        let ns = Netns {
            name: name.to_string(),
            file,
        };
        let forwarding = if router { "1" } else { "0" };
        ns.sysctl(&[
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.all.forwarding", forwarding),
            ("net.ipv4.ip_forward", forwarding),
        ])?;
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A guard for an existing namespace `name` (one left by an earlier
    /// run, to be removed by dropping it).
    pub fn adopt(name: &str) -> anyhow::Result<Netns> {
        let file = File::open(format!("/run/netns/{name}"))
            .with_context(|| format!("opening /run/netns/{name}"))?;
        Ok(Netns {
            name: name.to_string(),
            file,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NS ARGS`: its standard output, or its error message.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = run(Command::new("ip").args(["-n", &self.name]).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn sysctl(&self, settings: &[(&str, &str)]) -> anyhow::Result<()> {
        let mut cmd = self.command("sysctl");
        cmd.args(["-q", "-w"]);
        for (key, value) in settings {
            cmd.arg(format!("{key}={value}"));
        }
        run(&mut cmd).map(drop)
    }

    /// A command that runs `program` inside this namespace (network only).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let fd = self.file.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the fd stays open until exec
        // (close-on-exec), and self outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Moves the calling thread into this namespace: the sockets it opens
    /// afterwards, and the processes it starts, live there.
    pub fn enter(&self) -> anyhow::Result<()> {
        // SAFETY: an open /run/netns file; only the calling thread changes.
        if unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "entering namespace {}: {}",
                self.name,
                io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// One echo request with a one-second wait, `tries` times at most:
    /// true as soon as one is answered.
    pub fn ping(&self, addr: &str, tries: u32) -> bool {
        (0..tries).any(|_| {
            self.command("ping")
                .args(["-n", "-q", "-c", "1", "-W", "1", addr])
                .output()
                .is_ok_and(|o| o.status.success())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_processes_in(&self.file);
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("{e:#}");
        }
    }
}

/// Kills every process (but ours) whose network namespace is `ns`: what
/// the lab started there (anvil, wireguard-go, a client) must not outlive
/// it, whoever started it.
fn kill_processes_in(ns: &File) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(want) = ns.metadata() else { return };
    let ours = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for pid in entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != ours)
    {
        let inside = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .is_ok_and(|m| (m.dev(), m.ino()) == (want.dev(), want.ino()));
        if inside {
            // SAFETY: kill(2) of a process found in a namespace we made.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// A veth pair `a_name` (in `a`) – `b_name` (in `b`), both up.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> anyhow::Result<()> {
    a.ip(&[
        "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", &b.name,
    ])?;
    a.ip(&["link", "set", a_name, "up"])?;
    b.ip(&["link", "set", b_name, "up"])?;
    Ok(())
}

/// Runs `cmd` to completion; an error with its stderr unless it succeeds.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown}: {} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        );
    }
    Ok(out)
}
