//! `cargo xtask demo`: the responder at work in network namespaces.
//!
//! Two namespaces stand for the provider's router and the broker VPS, joined
//! by a veth. The router has the delegated prefix on-link, as a provider's
//! router does, so it resolves every address in it with Neighbor
//! Solicitations; `blockhost-broker ndp serve` answers them from XDP on the
//! broker's upstream interface. Addresses on the broker's `lo` stand in for
//! the BlockHost servers behind WireGuard. Each step prints the commands it
//! runs, their output, and checks what it shows; a failed check ends the
//! demo with an error. Everything is torn down at the end, on Ctrl-C and on
//! errors.

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::cmd;

#[derive(clap::Args)]
pub struct Args {
    /// Tear down at once instead of waiting for Ctrl-C.
    #[arg(long)]
    exit: bool,
}

/// Every namespace the demo makes starts with this.
const NS_PREFIX: &str = "bbdemo-";
const ROUTER_NS: &str = "bbdemo-router";
const BROKER_NS: &str = "bbdemo-broker";
const ROUTER_IF: &str = "to-broker";
const BROKER_IF: &str = "upstream";
const ROUTER_MAC: &str = "02:00:5e:00:53:01";
const BROKER_MAC: &str = "02:b0:0c:00:00:01";
const ROUTER_ADDR: &str = "2001:db8:ff::1/64";
const BROKER_ADDR: &str = "2001:db8:ff::2/64";
const PIN_DIR: &str = "/sys/fs/bpf/bbdemo";
const PID_FILE: &str = "/run/bbdemo-broker.pid";

/// The prefix delegated to the broker, and addresses in it that the
/// broker's servers would use.
const DELEGATED: &str = "2001:db8:100::/64";
const INSIDE: [&str; 3] = [
    "2001:db8:100::1",
    "2001:db8:100::abcd",
    "2001:db8:100::7:101",
];
/// A prefix the router also has on-link but that is not the broker's.
const OUTSIDE_PREFIX: &str = "2001:db8:200::/64";
const OUTSIDE: &str = "2001:db8:200::1";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn stop_on_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

fn interrupted() -> anyhow::Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!(
            "the demo creates network namespaces and loads XDP programs: run it as root (`sudo -E cargo xtask demo`)"
        );
    }
    stop_on_signals();
    let bin = build()?;
    interrupted()?;
    remove_leftovers(&bin);

    let mut demo = Demo {
        bin,
        broker: None,
        torn_down: false,
    };
    let result = demo.show(args.exit);
    let teardown = demo.teardown();
    result.and(teardown)
}

fn build() -> anyhow::Result<PathBuf> {
    heading("Building blockhost-broker");
    let root = cmd::workspace_root();
    cmd::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--quiet",
        "-p",
        "broker-userspace",
        "--bin",
        "blockhost-broker",
    ]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug/blockhost-broker");
    ensure!(bin.is_file(), "{} was not built", bin.display());
    Ok(bin)
}

/// Whatever an earlier demo left: its broker process, namespaces and pins.
fn remove_leftovers(bin: &Path) {
    if let Ok(pid) = std::fs::read_to_string(PID_FILE) {
        if let Ok(pid) = pid.trim().parse::<libc::pid_t>() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains("blockhost-broker") && cmdline.contains(PIN_DIR) {
                println!("removing the broker of an earlier demo (pid {pid})");
                // SAFETY: signalling a process we identified by its command line.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(3);
                while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = std::fs::remove_file(PID_FILE);
    }
    if let Some(list) = cmd::stdout_of(Command::new("ip").args(["netns", "list"])) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if ns.starts_with(NS_PREFIX) {
                println!("removing namespace {ns} of an earlier demo");
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
    if Path::new(PIN_DIR).exists() {
        println!("removing the pins of an earlier demo ({PIN_DIR})");
        let _ = Command::new(bin)
            .args(["ndp", "--pin-dir", PIN_DIR, "detach"])
            .stdout(Stdio::null())
            .status();
    }
}

struct Demo {
    bin: PathBuf,
    broker: Option<Child>,
    torn_down: bool,
}

impl Demo {
    fn show(&mut self, exit: bool) -> anyhow::Result<()> {
        self.setup()?;
        interrupted()?;
        self.start_broker()?;
        interrupted()?;
        self.narrate()?;
        if exit {
            return Ok(());
        }
        try_it_yourself(&self.bin);
        println!("\nPress Ctrl-C to tear everything down.");
        while !STOP.load(Ordering::SeqCst) {
            if let Some(child) = self.broker.as_mut()
                && let Some(status) = child.try_wait().context("watching the broker")?
            {
                self.broker = None;
                bail!("the broker exited ({status})");
            }
            thread::sleep(Duration::from_millis(100));
        }
        println!();
        Ok(())
    }

    fn setup(&mut self) -> anyhow::Result<()> {
        heading("1. A router and a broker, each in its own network namespace");
        for ns in [ROUTER_NS, BROKER_NS] {
            shell(&["ip", "netns", "add", ns])?;
            // Addresses usable at once: no duplicate address detection.
            quiet(&[
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ])?;
            quiet(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        say("joined by a veth: the router's to-broker is the broker's upstream link");
        shell(&[
            "ip", "-n", ROUTER_NS, "link", "add", ROUTER_IF, "address", ROUTER_MAC, "type", "veth",
            "peer", "name", BROKER_IF, "address", BROKER_MAC, "netns", BROKER_NS,
        ])?;
        shell(&["ip", "-n", ROUTER_NS, "link", "set", ROUTER_IF, "up"])?;
        shell(&["ip", "-n", BROKER_NS, "link", "set", BROKER_IF, "up"])?;
        shell(&[
            "ip",
            "-n",
            ROUTER_NS,
            "addr",
            "add",
            ROUTER_ADDR,
            "dev",
            ROUTER_IF,
            "nodad",
        ])?;
        shell(&[
            "ip",
            "-n",
            BROKER_NS,
            "addr",
            "add",
            BROKER_ADDR,
            "dev",
            BROKER_IF,
            "nodad",
        ])?;
        say(&format!(
            "the provider's router has the delegated {DELEGATED} on-link, so it asks \
             \"who has …?\" for each address (and {OUTSIDE_PREFIX}, which is not the broker's)"
        ));
        for net in [DELEGATED, OUTSIDE_PREFIX] {
            shell(&[
                "ip", "-n", ROUTER_NS, "-6", "route", "add", net, "dev", ROUTER_IF,
            ])?;
        }
        say(
            "on the broker, addresses on lo stand in for the BlockHost servers behind \
             WireGuard; none is on the upstream link, so the broker's kernel answers no \
             solicitation for them",
        );
        for addr in INSIDE.iter().chain([&OUTSIDE]) {
            shell(&[
                "ip",
                "-n",
                BROKER_NS,
                "addr",
                "add",
                &format!("{addr}/128"),
                "dev",
                "lo",
            ])?;
        }
        Ok(())
    }

    fn start_broker(&mut self) -> anyhow::Result<()> {
        heading("2. The broker answers for the delegated prefix from XDP");
        say(
            "generic mode on this veth: native XDP on a veth only delivers its answers when \
             the peer has an XDP program too (real NICs need nothing)",
        );
        let args = [
            "ndp",
            "--pin-dir",
            PIN_DIR,
            "serve",
            "--interface",
            BROKER_IF,
            "--prefix",
            DELEGATED,
            "--mode",
            "generic",
        ];
        println!(
            "$ nsenter --net=/run/netns/{BROKER_NS} blockhost-broker {} &",
            args.join(" ")
        );
        let mut command = in_netns(BROKER_NS, &self.bin)?;
        command
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: Ctrl-C reaches the demo, which stops
            // the broker in order.
            .process_group(0);
        let mut child = command.spawn().context("starting the broker")?;
        let _ = std::fs::write(PID_FILE, child.id().to_string());
        let ready = Arc::new(AtomicBool::new(false));
        let stderr = child.stderr.take().context("the broker's stderr")?;
        {
            let ready = Arc::clone(&ready);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("answering for") {
                        ready.store(true, Ordering::SeqCst);
                    }
                    println!("  broker | {line}");
                }
            });
        }
        self.broker = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.load(Ordering::SeqCst) {
            interrupted()?;
            if let Some(status) = self
                .broker
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.broker = None;
                bail!("the broker exited before answering ({status})");
            }
            ensure!(
                Instant::now() < deadline,
                "the broker did not start answering in 20 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
        // Let its log line come out before the next step's.
        thread::sleep(Duration::from_millis(50));
        Ok(())
    }

    fn narrate(&mut self) -> anyhow::Result<()> {
        heading("3. The router reaches addresses inside the delegated prefix");
        for addr in INSIDE {
            let out = shell_output(&[
                "ip", "netns", "exec", ROUTER_NS, "ping", "-6", "-n", "-c", "2", "-i", "0.2", "-W",
                "1", addr,
            ])?;
            ensure!(out.status.success(), "ping {addr} failed");
            interrupted()?;
        }
        say("its kernel resolved them through neighbor discovery, answered by XDP:");
        let neigh = shell_stdout(&[
            "ip", "-n", ROUTER_NS, "-6", "neigh", "show", "dev", ROUTER_IF,
        ])?;
        for addr in INSIDE {
            let entry = neigh
                .lines()
                .find(|l| l.split_whitespace().next() == Some(addr))
                .with_context(|| format!("no neighbour entry for {addr}"))?;
            ensure!(
                entry.contains(&format!("lladdr {BROKER_MAC}"))
                    && (entry.contains("REACHABLE") || entry.contains("STALE")),
                "unexpected neighbour entry: {entry}"
            );
        }
        check(&format!(
            "each address REACHABLE at the broker's MAC {BROKER_MAC}, with no per-address \
             configuration anywhere"
        ));

        heading("4. An address outside the delegated prefix gets no answer");
        let out = shell_output(&[
            "ip", "netns", "exec", ROUTER_NS, "ping", "-6", "-n", "-c", "1", "-W", "1", OUTSIDE,
        ])?;
        ensure!(!out.status.success(), "ping {OUTSIDE} was answered");
        let entry = shell_stdout(&[
            "ip", "-n", ROUTER_NS, "-6", "neigh", "show", "to", OUTSIDE, "dev", ROUTER_IF,
        ])?;
        ensure!(
            !entry.contains("lladdr"),
            "{OUTSIDE} was resolved: {}",
            entry.trim()
        );
        check("INCOMPLETE (then FAILED): nobody answers for it");
        interrupted()?;

        heading("5. No proxy entries on the broker");
        let proxies = shell_stdout(&["ip", "-n", BROKER_NS, "-6", "neigh", "show", "proxy"])?;
        ensure!(
            proxies.trim().is_empty(),
            "proxy entries: {}",
            proxies.trim()
        );
        let sysctl = shell_stdout(&[
            "ip",
            "netns",
            "exec",
            BROKER_NS,
            "sysctl",
            "net.ipv6.conf.all.proxy_ndp",
        ])?;
        ensure!(
            sysctl.trim().ends_with("= 0"),
            "proxy_ndp: {}",
            sysctl.trim()
        );
        check("empty, and proxy_ndp is off: the kernel's proxy plays no part");

        heading("6. The responder's counters");
        println!(
            "$ nsenter --net=/run/netns/{BROKER_NS} blockhost-broker ndp --pin-dir {PIN_DIR} status"
        );
        let out = in_netns(BROKER_NS, &self.bin)?
            .args(["ndp", "--pin-dir", PIN_DIR, "status"])
            .output()
            .context("running ndp status")?;
        let status = String::from_utf8_lossy(&out.stdout);
        indent(&status);
        ensure!(out.status.success(), "ndp status failed ({})", out.status);
        let answered = counter(&status, "answered").context("no answered counter")?;
        let not_ours = counter(&status, "not_ours").context("no not_ours counter")?;
        ensure!(
            answered >= INSIDE.len() as u64,
            "answered {answered}, expected at least {}",
            INSIDE.len()
        );
        ensure!(not_ours >= 1, "not_ours {not_ours}, expected at least 1");
        check(&format!(
            "{answered} answered (one per address resolved), {not_ours} not ours (the \
             outside address, and the router's solicitations for the broker's own link \
             addresses, which its kernel answers)"
        ));
        Ok(())
    }

    /// Stops the broker, removes the pins and the namespaces. Runs once;
    /// Drop calls it too, so errors and panics tear down as well.
    fn teardown(&mut self) -> anyhow::Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        heading("Tearing down");
        let mut errors = Vec::new();
        if let Some(mut child) = self.broker.take() {
            println!("$ kill -TERM {}", child.id());
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        let _ = std::fs::remove_file(PID_FILE);
        if Path::new(PIN_DIR).exists() {
            println!("$ blockhost-broker ndp --pin-dir {PIN_DIR} detach");
            match Command::new(&self.bin)
                .args(["ndp", "--pin-dir", PIN_DIR, "detach"])
                .output()
            {
                Ok(out) if out.status.success() => indent(&String::from_utf8_lossy(&out.stdout)),
                Ok(out) => errors.push(format!(
                    "ndp detach: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => errors.push(format!("ndp detach: {e}")),
            }
        }
        let existing =
            cmd::stdout_of(Command::new("ip").args(["netns", "list"])).unwrap_or_default();
        for ns in [ROUTER_NS, BROKER_NS] {
            if existing
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns))
                && let Err(e) = shell(&["ip", "netns", "del", ns])
            {
                errors.push(format!("{e:#}"));
            }
        }
        if errors.is_empty() {
            println!("done");
            Ok(())
        } else {
            bail!("tearing down: {}", errors.join("; "))
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("error: {e:#}");
        }
    }
}

fn try_it_yourself(bin: &Path) {
    heading("Try it yourself (in another terminal, as root)");
    let b = bin.display();
    let lines = [
        format!("ip netns exec {ROUTER_NS} ping 2001:db8:100::abcd"),
        format!("ip -n {BROKER_NS} addr add 2001:db8:100::42/128 dev lo   # a new server address…"),
        format!("ip netns exec {ROUTER_NS} ping -c 1 2001:db8:100::42     # …reachable at once"),
        format!("ip -n {ROUTER_NS} -6 neigh show dev {ROUTER_IF}"),
        format!("ip netns exec {ROUTER_NS} ping -c 1 -W 1 {OUTSIDE}       # outside: no answer"),
        format!("nsenter --net=/run/netns/{BROKER_NS} {b} ndp --pin-dir {PIN_DIR} status"),
        format!(
            "ip netns exec {ROUTER_NS} tcpdump -lni {ROUTER_IF} icmp6   # the NS and NA on the wire"
        ),
    ];
    for line in lines {
        println!("  {line}");
    }
}

/// A command that runs `program` in network namespace `ns`, and only there:
/// unlike `ip netns exec`, which also remounts /sys in a mount namespace of
/// its own, where the broker's bpffs pins would be a fresh, empty instance.
fn in_netns(ns: &str, program: &Path) -> anyhow::Result<Command> {
    let file = File::open(format!("/run/netns/{ns}")).with_context(|| format!("opening {ns}"))?;
    let mut command = Command::new(program);
    let fd = file.as_raw_fd();
    // SAFETY: setns is async-signal-safe; the file stays open across the
    // spawn (it moves into the closure, which lives as long as the command).
    unsafe {
        command.pre_exec(move || {
            let _keep = &file;
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(command)
}

fn heading(text: &str) {
    println!("\n==> {text}");
}

fn say(text: &str) {
    println!("    {text}");
}

fn check(text: &str) {
    println!("  ✓ {text}");
}

fn indent(text: &str) {
    for line in text.lines() {
        println!("    {line}");
    }
}

fn prompt(args: &[&str]) {
    println!("$ {}", args.join(" "));
}

/// Runs and echoes a command, with its output indented; fails unless it
/// exits 0.
fn shell(args: &[&str]) -> anyhow::Result<()> {
    let out = shell_output(args)?;
    ensure!(
        out.status.success(),
        "`{}` failed ({})",
        args.join(" "),
        out.status
    );
    Ok(())
}

/// Runs and echoes a command; returns its stdout; fails unless it exits 0.
fn shell_stdout(args: &[&str]) -> anyhow::Result<String> {
    let out = shell_output(args)?;
    ensure!(
        out.status.success(),
        "`{}` failed ({})",
        args.join(" "),
        out.status
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs and echoes a command whatever its exit status.
fn shell_output(args: &[&str]) -> anyhow::Result<Output> {
    prompt(args);
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting `{}`", args.join(" ")))?;
    indent(&String::from_utf8_lossy(&out.stdout));
    indent(&String::from_utf8_lossy(&out.stderr));
    Ok(out)
}

/// Runs a set-up command without echoing it.
fn quiet(args: &[&str]) -> anyhow::Result<()> {
    cmd::run(Command::new(args[0]).args(&args[1..]).stdout(Stdio::null()))
}

/// A counter from `ndp status` output ("… answered 3 not_ours 2 …").
fn counter(status: &str, name: &str) -> Option<u64> {
    let words: Vec<&str> = status.split_whitespace().collect();
    let at = words.iter().position(|w| *w == name)?;
    words.get(at + 1)?.parse().ok()
}
