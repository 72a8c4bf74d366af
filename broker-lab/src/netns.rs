//! Network namespaces and veth pairs, as guards: a namespace is deleted
//! (and every process still in it killed) when its guard drops, whatever
//! happened before, also when a test fails.
//!
//! Programs run in a namespace through a `setns` before `exec`, never
//! `ip netns exec`: that also gives them a mount namespace with /sys
//! remounted, and the broker's bpffs pins would then not outlive it.
//! In-process work in a namespace (raw sockets, XDP attachments, netlink)
//! runs on a thread that entered it ([`Netns::run`], [`Netns::spawn`]).

use std::{
    ffi::OsStr,
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::{Command, Output, Stdio},
    thread::{self, JoinHandle},
};

use anyhow::{Context as _, bail};

/// A named network namespace with `lo` up and duplicate address detection
/// off (addresses are usable at once), deleted on drop.
pub struct Netns {
    name: String,
    file: File,
}

impl Netns {
    /// Creates the namespace `name`.
    pub fn new(name: &str) -> anyhow::Result<Netns> {
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
        ns.sysctl(&[
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ])?;
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A namespace of the test's own, `bbt-<pid>-<n>-<tag>`
    /// ([`crate::names::unique_name`]).
    pub fn unique(tag: &str) -> anyhow::Result<Netns> {
        Netns::new(&crate::names::unique_name(tag))
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

    /// IPv4 and IPv6 forwarding on: a router.
    pub fn enable_forwarding(&self) -> anyhow::Result<()> {
        self.sysctl(&[
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.ip_forward", "1"),
        ])
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

    /// A command that runs `program` inside this namespace (network only:
    /// it shares our mount namespace, hence our bpffs).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
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

    /// Runs `program ARGS` in the namespace to completion, whatever its
    /// exit status (an error only when it cannot start).
    pub fn output(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        self.command(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program} in {}", self.name))
    }

    /// Moves the calling thread into this namespace: the sockets it opens
    /// afterwards, and the processes it starts, live there.
    pub fn enter(&self) -> anyhow::Result<()> {
        enter(&self.file, &self.name)
    }

    /// Runs `f` on a thread inside this namespace and returns its result.
    /// Sockets it makes stay in the namespace wherever they are used later.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        thread::scope(|s| {
            s.spawn(|| {
                self.enter().unwrap_or_else(|e| panic!("{e:#}"));
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Like [`Netns::run`], for a thread that outlives the call.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<JoinHandle<T>> {
        let file = self
            .file
            .try_clone()
            .with_context(|| format!("duplicating the handle of {}", self.name))?;
        let name = self.name.clone();
        Ok(thread::spawn(move || {
            enter(&file, &name).unwrap_or_else(|e| panic!("{e:#}"));
            drop(file);
            f()
        }))
    }

    /// A tokio runtime (one worker) whose threads live in this namespace:
    /// its tasks reach this namespace's loopback, as a local client would.
    /// Drop it with `shutdown_background` inside another runtime.
    pub fn runtime(&self) -> anyhow::Result<tokio::runtime::Runtime> {
        let file = std::sync::Arc::new(
            self.file
                .try_clone()
                .with_context(|| format!("duplicating the handle of {}", self.name))?,
        );
        let name = self.name.clone();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .on_thread_start(move || enter(&file, &name).unwrap_or_else(|e| panic!("{e:#}")))
            .build()
            .with_context(|| format!("a tokio runtime in {}", self.name))
    }

    /// One echo request with a one-second wait, `tries` times at most:
    /// true as soon as one is answered.
    pub fn ping(&self, addr: &str, tries: u32) -> bool {
        (0..tries).any(|_| {
            self.output("ping", &["-n", "-q", "-c", "1", "-W", "1", addr])
                .is_ok_and(|o| o.status.success())
        })
    }

    /// The neighbour entry for `addr` on `dev`, if there is one.
    pub fn neigh(&self, dev: &str, addr: &str) -> anyhow::Result<Option<Neigh>> {
        let out = self.ip(&["-6", "neigh", "show", "to", addr, "dev", dev])?;
        let Some(line) = out.lines().find(|l| !l.trim().is_empty()) else {
            return Ok(None);
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let lladdr = words
            .iter()
            .position(|w| *w == "lladdr")
            .and_then(|i| words.get(i + 1))
            .map(|s| s.to_string());
        Ok(Some(Neigh {
            lladdr,
            router: words.contains(&"router"),
            state: words.last().map_or(String::new(), |s| s.to_string()),
        }))
    }

    /// The MAC address of `dev`, as ip(8) prints it.
    pub fn mac(&self, dev: &str) -> anyhow::Result<String> {
        let out = self.ip(&["-br", "link", "show", dev])?;
        out.split_whitespace()
            .nth(2)
            .map(str::to_string)
            .with_context(|| format!("no MAC address for {dev} in {}: {out}", self.name))
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

fn enter(file: &File, name: &str) -> anyhow::Result<()> {
    // SAFETY: an open /run/netns file; only the calling thread changes.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("entering namespace {name}: {}", io::Error::last_os_error());
    }
    Ok(())
}

/// Kills every process (but ours) whose network namespace is `ns`: what
/// was started there (anvil, wireguard-go, a client) must not outlive it,
/// whoever started it.
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

/// A neighbour cache entry as `ip -6 neigh` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neigh {
    pub lladdr: Option<String>,
    pub router: bool,
    /// REACHABLE, STALE, DELAY, PROBE, INCOMPLETE, FAILED…
    pub state: String,
}

/// One end of a veth pair: its namespace, name and (optionally) MAC.
#[derive(Clone, Copy)]
pub struct End<'a> {
    pub ns: &'a Netns,
    pub name: &'a str,
    pub mac: Option<&'a str>,
}

impl<'a> End<'a> {
    pub fn new(ns: &'a Netns, name: &'a str) -> Self {
        End {
            ns,
            name,
            mac: None,
        }
    }

    pub fn with_mac(self, mac: &'a str) -> Self {
        End {
            mac: Some(mac),
            ..self
        }
    }
}

/// A veth pair `a` – `b`, both up (names are per namespace, so tests running
/// at once may use the same ones).
pub fn veth(a: End, b: End) -> anyhow::Result<()> {
    let mut args = vec!["link", "add", a.name];
    args.extend(a.mac.map(|mac| ["address", mac]).into_iter().flatten());
    args.extend(["type", "veth", "peer", "name", b.name]);
    args.extend(b.mac.map(|mac| ["address", mac]).into_iter().flatten());
    args.extend(["netns", b.ns.name()]);
    a.ns.ip(&args)?;
    a.ns.ip(&["link", "set", a.name, "up"])?;
    b.ns.ip(&["link", "set", b.name, "up"])?;
    Ok(())
}

/// Formats a MAC as ip(8) prints it.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
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
