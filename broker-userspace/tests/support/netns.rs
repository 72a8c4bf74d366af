//! Network namespaces, veth pairs and broker processes for the namespace
//! tests. Each is a guard: the namespace is deleted and the process killed
//! when it drops, even when the test fails.
//!
//! Nothing here uses `ip netns exec` for the broker: that gives the process a
//! mount namespace of its own with /sys remounted, so its bpffs would be a
//! fresh instance and its pins would not outlive it. The broker is spawned
//! with a `setns` before `exec` instead, and in-process work in a namespace
//! (raw sockets, XDP attachments) runs on a thread that entered it.

use std::{
    fs::File,
    io::{self, Read},
    os::{
        fd::{AsRawFd, RawFd},
        unix::process::CommandExt,
    },
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use broker_userspace::ndp::PinDir;

use super::pins::unique_name;

/// The broker binary under test.
pub const BROKER_BIN: &str = env!("CARGO_BIN_EXE_blockhost-broker");

/// A network namespace `bbt-<pid>-<n>-<tag>`, deleted on drop.
pub struct Netns {
    name: String,
    file: File,
}

impl Netns {
    /// Creates the namespace with `lo` up and duplicate address detection
    /// off (addresses are usable at once, no second of tentative state).
    pub fn new(tag: &str) -> Self {
        let name = unique_name(tag);
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let file = match File::open(format!("/run/netns/{name}")) {
            Ok(file) => file,
            Err(e) => {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
                panic!("opening /run/netns/{name}: {e}");
            }
        };
        let ns = Netns { name, file };
        ns.sysctl(&[
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NS ARGS`; panics (with ip's message) unless it succeeds.
    /// Returns its standard output.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = run_ok(Command::new("ip").args(["-n", &self.name]).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip netns exec NS PROGRAM ARGS`, for tools such as ping and sysctl
    /// (never for the broker, see the module comment).
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {program} in {}: {e}", self.name))
    }

    pub fn sysctl(&self, settings: &[(&str, &str)]) {
        let args: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, "sysctl", "-q", "-w"])
            .args(&args);
        run_ok(&mut cmd);
    }

    /// One echo request with a one-second wait; true when answered.
    pub fn ping(&self, addr: &str) -> bool {
        self.exec("ping", &["-6", "-n", "-q", "-c", "1", "-W", "1", addr])
            .status
            .success()
    }

    /// The neighbour entry for `addr` on `dev`, if there is one.
    pub fn neigh(&self, dev: &str, addr: &str) -> Option<Neigh> {
        let out = self.ip(&["-6", "neigh", "show", "to", addr, "dev", dev]);
        let line = out.lines().find(|l| !l.trim().is_empty())?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let lladdr = words
            .iter()
            .position(|w| *w == "lladdr")
            .and_then(|i| words.get(i + 1))
            .map(|s| s.to_string());
        Some(Neigh {
            lladdr,
            router: words.contains(&"router"),
            state: words.last().map_or(String::new(), |s| s.to_string()),
        })
    }

    /// A command that runs PROGRAM inside this namespace (network only: it
    /// shares our mount namespace, hence our bpffs).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let fd: RawFd = self.file.as_raw_fd();
        // SAFETY: setns is async-signal-safe; fd stays open in the child
        // until exec (it is close-on-exec), as self outlives the spawn.
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

    /// Runs `f` on a thread inside this namespace and returns its result.
    /// Sockets it makes stay in the namespace wherever they are used later.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = self.file.as_raw_fd();
        thread::scope(|s| {
            s.spawn(move || {
                enter(fd, &self.name);
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
    ) -> JoinHandle<T> {
        let file = self
            .file
            .try_clone()
            .unwrap_or_else(|e| panic!("duplicating the handle of {}: {e}", self.name));
        let name = self.name.clone();
        thread::spawn(move || {
            enter(file.as_raw_fd(), &name);
            drop(file);
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "deleting namespace {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("deleting namespace {}: {e}", self.name),
        }
    }
}

fn enter(fd: RawFd, name: &str) {
    // SAFETY: fd is an open /run/netns file; only this thread changes.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        panic!("entering {name}: {}", io::Error::last_os_error());
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

/// A veth pair between two namespaces (names are per namespace, so tests
/// running at once may use the same ones), both ends up.
pub fn veth(a: &Netns, a_name: &str, a_mac: &str, b: &Netns, b_name: &str, b_mac: &str) {
    a.ip(&[
        "link", "add", a_name, "address", a_mac, "type", "veth", "peer", "name", b_name, "address",
        b_mac, "netns", &b.name,
    ]);
    a.ip(&["link", "set", a_name, "up"]);
    b.ip(&["link", "set", b_name, "up"]);
}

/// Formats a MAC as ip(8) prints it.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs `cmd`, panicking with its stderr unless it exits 0.
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

/// Runs `cmd` to completion, killing it after `limit`. Returns its status
/// (None when it had to be killed), stdout and stderr.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> (Option<ExitStatus>, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let stdout = collect(child.stdout.take().expect("piped"));
    let stderr = collect(child.stderr.take().expect("piped"));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait().expect("waiting for the child") {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => thread::sleep(Duration::from_millis(5)),
        }
    };
    let take = |h: JoinHandle<String>| h.join().unwrap_or_default();
    (status, take(stdout), take(stderr))
}

/// Collects what `from` yields, as it comes, into the returned text (the
/// thread ends at end of file).
pub fn stream(mut from: impl Read + Send + 'static) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (text, reader)
}

fn collect(mut from: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = from.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// The broker binary with a pin directory, in a namespace, plain output.
pub fn broker_command(ns: &Netns, pins: &PinDir) -> Command {
    let mut cmd = ns.command(BROKER_BIN);
    cmd.env("BLOCKHOST_BROKER_PIN_DIR", pins.path())
        .env("NO_COLOR", "1");
    cmd
}

/// `blockhost-broker ndp status` in `ns`: (exit code, stdout).
pub fn broker_status(ns: &Netns, pins: &PinDir) -> (Option<i32>, String) {
    let mut cmd = broker_command(ns, pins);
    cmd.args(["ndp", "status"]);
    let (status, stdout, stderr) = run_bounded(cmd, Duration::from_secs(10));
    let status = status.unwrap_or_else(|| panic!("ndp status hung; stderr: {stderr}"));
    (status.code(), stdout)
}

/// A running `blockhost-broker ndp serve`, killed on drop.
pub struct Broker {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

/// What `ndp serve` logs once the program answers for its prefixes.
const READY: &str = "answering for";

impl Broker {
    /// Starts `ndp serve ARGS` in `ns` and waits (at most 20 s) until it
    /// says it answers; panics with its output if it exits first.
    pub fn serve(ns: &Netns, pins: &PinDir, args: &[&str]) -> Self {
        let mut cmd = broker_command(ns, pins);
        cmd.args(["ndp", "serve"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        let (stderr, reader) = stream(child.stderr.take().expect("piped"));
        let mut broker = Broker {
            child: Some(child),
            stderr,
            reader: Some(reader),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if broker.stderr().contains(READY) {
                return broker;
            }
            let child = broker.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("waiting for the broker") {
                broker.child = None;
                broker.join_reader();
                panic!(
                    "ndp serve {args:?} exited ({status}) before answering:\n{}",
                    broker.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "ndp serve {args:?} not ready after 20 s:\n{}",
                broker.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGKILL: no clean-up of any kind in the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.join_reader();
    }

    /// SIGTERM, and waits (at most 10 s) for a clean exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("broker already stopped");
        // SAFETY: signalling our own child, which has not been reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for the broker") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.join_reader();
                panic!("ndp serve ignored SIGTERM for 10 s:\n{}", self.stderr());
            }
            thread::sleep(Duration::from_millis(5));
        };
        self.join_reader();
        status
    }

    fn join_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
