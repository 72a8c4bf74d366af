//! The daemon as a systemd service, without systemd: what it tells the
//! service manager through `NOTIFY_SOCKET` (READY=1, STATUS=, WATCHDOG=1,
//! STOPPING=1) and when, checked against a socket of broker-lab's
//! (`notify`) while the lab's chain answers, hangs and answers again; the
//! least privilege the unit gives it (a user of its own with exactly
//! [`CAPABILITIES`], as `setpriv` gives them), each capability shown
//! needed; and the pin directory bound alone, as the unit does.
//!
//! Needs root (`cargo xtask test`): the lab's namespaces, anvil,
//! wireguard-go and the XDP responder, all removed when the lab drops.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use broker_lab::{Lab, lab_test, notify::NotifySocket};

/// The broker's address in its pool (the lab's upstream prefix + 2).
const GATEWAY: &str = "2001:db8:100::2";

/// What the test sets as `WATCHDOG_USEC`: the daemon pings every half of it.
const WATCHDOG: Duration = Duration::from_secs(3);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The longest interval between consecutive `times` and from the last of
/// them to `until`.
fn longest_gap(times: &[Instant], from: Instant, until: Instant) -> Duration {
    let mut last = from;
    let mut longest = Duration::ZERO;
    for &t in times.iter().filter(|&&t| t >= from && t <= until) {
        longest = longest.max(t - last);
        last = t;
    }
    longest.max(until - last)
}

#[test]
fn ready_after_the_responder_and_the_first_poll_then_watchdog_from_the_poll_loop() {
    lab_test("notify", async |lab: &mut Lab| {
        let socket = NotifySocket::bind(&lab.dir.join("notify.sock"))?;
        lab.broker_env = vec![
            ("NOTIFY_SOCKET".into(), socket.path().display().to_string()),
            ("WATCHDOG_USEC".into(), WATCHDOG.as_micros().to_string()),
        ];

        // The chain does not answer at first: the responder and the tunnel
        // come up, READY=1 must wait for the chain.
        lab.relay().stall();
        lab.start_broker()?;
        socket.wait_for_prefix("STATUS=waiting for the chain", secs(60))?;
        assert!(
            !socket.lines("READY=").iter().any(|l| l == "READY=1"),
            "READY=1 while the chain does not answer: {:?}",
            socket.lines("STATUS=")
        );

        lab.relay().resume();
        let (ready_at, ready_time) = socket.wait_for("READY=1", secs(60))?;
        let before: Vec<String> = socket.received()[..ready_at]
            .iter()
            .map(|n| n.line.clone())
            .collect();
        let position = |prefix: &str| {
            before
                .iter()
                .position(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix}… before READY=1: {before:?}"))
        };
        // In the order the daemon does it: the tunnel, the responder
        // (attached before the chain is asked), then a poll at a block.
        assert!(
            position("STATUS=bringing up the WireGuard interface")
                < position("STATUS=attaching the NDP responder")
        );
        assert!(
            position("STATUS=attaching the NDP responder")
                < position("STATUS=connecting to the chain")
        );
        assert!(position("STATUS=connecting to the chain") < position("STATUS=polling at block"));
        lab.broker()?
            .wait_log(&["NDP responder attached"], 1, secs(1))?;
        lab.broker()?.wait_log(&["ready: watching"], 1, secs(5))?;

        // Pings at half the period, while the chain answers: never a gap
        // systemd would take for a hang.
        std::thread::sleep(secs(6));
        let now = Instant::now();
        let pings = socket.times_of("WATCHDOG=1");
        let steady = pings.iter().filter(|&&t| t > ready_time).count();
        assert!(steady >= 3, "{steady} pings in 6 s after READY=1");
        let gap = longest_gap(&pings, ready_time, now);
        assert!(gap < WATCHDOG, "a {gap:?} gap between pings while polling");

        // A request answered: the status says so.
        lab.serve(broker_lab::requests::CLIENT).await?;
        // "answering request N of …", or "requests N to M" for a burst.
        let statuses = socket.lines("STATUS=answering request");
        assert!(!statuses.is_empty(), "no STATUS=answering request …");

        // The chain hangs: the poll loop is stuck in an RPC call (10 s until
        // the call times out) and the pings stop (systemd would restart the
        // daemon).
        let stalled_at = Instant::now();
        lab.relay().stall();
        std::thread::sleep(secs(9));
        let pings = socket.times_of("WATCHDOG=1");
        let gap = longest_gap(&pings, stalled_at, Instant::now());
        assert!(
            gap > WATCHDOG * 2,
            "pings went on while the chain hung (longest gap {gap:?})"
        );
        lab.check_broker()?;

        // The chain answers again: the loop turns and pings again.
        lab.relay().resume();
        let resumed_at = Instant::now();
        let deadline = resumed_at + secs(60);
        while socket.times_of("WATCHDOG=1").last() <= Some(&resumed_at) {
            assert!(
                Instant::now() < deadline,
                "no ping after the chain came back"
            );
            std::thread::sleep(Duration::from_millis(100));
        }

        lab.stop_broker()?;
        socket.wait_for("STOPPING=1", secs(1))?;
        Ok(())
    });
}

/// The capabilities the unit gives the daemon (`AmbientCapabilities=` and
/// `CapabilityBoundingSet=` in debian/blockhost-broker.service), found by
/// running it with fewer: see [`least_privilege`].
const CAPABILITIES: &[&str] = &["net_admin", "bpf", "perfmon"];

/// A user id no account has: the daemon runs as a user of its own.
const UID: u32 = 64_123;

/// Runs the lab's broker as user [`UID`] with only `capabilities`
/// (inherited, ambient and bounding sets, as systemd's
/// `AmbientCapabilities=` gives them), in a mount namespace of its own where
/// wireguard-go's socket directory belongs to that user (the unit's
/// `RuntimeDirectory=`). Its files are given to that user.
fn run_unprivileged(lab: &mut Lab, capabilities: &[&str]) -> anyhow::Result<()> {
    use std::os::unix::fs::chown;
    let give = |path: &std::path::Path| -> anyhow::Result<()> {
        chown(path, Some(UID), Some(UID))
            .with_context(|| format!("giving {} to {UID}", path.display()))
    };
    give(&lab.dir)?;
    let broker_dir = lab.config_path.parent().context("the broker's directory")?;
    for entry in walk(broker_dir)? {
        give(&entry)?;
    }
    // The pin directory as the unit's ExecStartPre makes it.
    std::fs::create_dir_all(lab.pin_dir())?;
    give(lab.pin_dir())?;
    let sockets = lab.dir.join("run-wireguard");
    std::fs::create_dir_all(&sockets)?;
    give(&sockets)?;

    let caps = std::iter::once("-all".to_string())
        .chain(capabilities.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    // /dev/net/tun is 0666 on Debian (udev's rule), 0600 on this machine:
    // the namespace gets a node of Debian's mode for wireguard-go.
    let script = format!(
        "mkdir -p /run/wireguard && mount --bind \"$0\" /run/wireguard && \
         rm -f \"$0.tun\" && mknod -m 0666 \"$0.tun\" c 10 200 && mount --bind \"$0.tun\" /dev/net/tun && \
         exec setpriv --reuid={UID} --regid={UID} --clear-groups \
         --inh-caps={caps} --ambient-caps={caps} --bounding-set={caps} -- \"$@\""
    );
    lab.broker_wrapper = vec![
        "unshare".into(),
        "--mount".into(),
        "--propagation".into(),
        "private".into(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        script,
        sockets.display().to_string(),
    ];
    Ok(())
}

/// capabilities(7)'s number of `name`.
fn capability_number(name: &str) -> u32 {
    match name {
        "net_bind_service" => 10,
        "net_admin" => 12,
        "net_raw" => 13,
        "sys_admin" => 21,
        "sys_resource" => 24,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("capability {other} not in the table"),
    }
}

/// `dir` and everything under it.
fn walk(dir: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut all = vec![dir.to_path_buf()];
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            all.extend(walk(&path)?);
        } else {
            all.push(path);
        }
    }
    Ok(all)
}

/// The daemon's user and capabilities as the kernel reports them.
fn status_of(pid: u32) -> anyhow::Result<(String, String)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("Uid:")?, field("CapEff:")?))
}

/// A request answered end to end by a daemon that is not root and holds
/// only [`CAPABILITIES`]: its nftables table installed, the responder
/// attached and pinned, wireguard-go
/// started, the peer and route set, the answer on chain, the tunnel
/// carrying traffic and the router resolving the client's address.
#[test]
fn least_privilege_a_request_is_answered_without_root() {
    lab_test("caps", async |lab: &mut Lab| {
        run_unprivileged(lab, CAPABILITIES)?;
        lab.start_broker()?;
        let pid = lab.broker()?.pid().context("the broker runs")?;
        let (uid, effective) = status_of(pid)?;
        assert!(
            uid.split_whitespace().all(|u| u == UID.to_string()),
            "Uid: {uid}"
        );
        let mask = u64::from_str_radix(&effective, 16)?;
        let want = CAPABILITIES
            .iter()
            .fold(0u64, |m, c| m | 1 << capability_number(c));
        assert_eq!(mask, want, "CapEff: {effective}");
        // The nftables table, installed by `nft` as the daemon's child
        // (ambient CAP_NET_ADMIN).
        let table = lab.shell(
            &lab.net.broker,
            &["nft", "list", "table", "inet", "blockhost_broker"],
        )?;
        assert!(table.contains("jump from_tunnel"), "{table}");

        let served = lab.serve(broker_lab::requests::CLIENT).await?;
        lab.bring_up_tunnel(&served.client, &served.answer)?;
        assert!(
            lab.net.servers[0].ping(GATEWAY, 10),
            "the client cannot reach the gateway through its tunnel"
        );
        let address = broker_lab::requests::client_address(served.prefix);
        assert!(
            lab.net.router.ping(&address, 5),
            "the router cannot reach {address} through the broker"
        );
        lab.stop_broker()?;
        Ok(())
    });
}

/// Each of [`CAPABILITIES`] is needed: without any one of them the daemon
/// does not get as far as answering (it exits with an error).
#[test]
fn least_privilege_without_any_one_capability_the_daemon_fails() {
    lab_test("caps-1", async |lab: &mut Lab| {
        // What stops it: the upstream interface's sysctls (its first
        // network change), the daemon's own check (without it, CAP_PERFMON's
        // absence shows as the verifier's "pointer arithmetic with it
        // prohibited for !root").
        let reasons = [
            (
                "net_admin",
                "keeping router advertisements on upstream (/proc/sys/net/ipv6/conf/upstream/accept_ra): Permission denied",
            ),
            ("bpf", "CAP_BPF missing"),
            ("perfmon", "CAP_PERFMON missing"),
        ];
        assert_eq!(reasons.map(|(c, _)| c), CAPABILITIES);
        for (left_out, reason) in reasons {
            let fewer: Vec<&str> = CAPABILITIES
                .iter()
                .copied()
                .filter(|c| *c != left_out)
                .collect();
            run_unprivileged(lab, &fewer)?;
            let broker = lab.spawn_broker(None)?;
            let status = broker.wait_exit(secs(60))?;
            assert!(
                !status.success(),
                "without {left_out} the daemon exited 0:\n{}",
                broker.log()
            );
            let log = broker.log();
            assert!(
                !log.contains("ready: "),
                "without {left_out} the daemon got ready:\n{log}"
            );
            assert!(
                log.contains(reason),
                "without {left_out}: not the failure expected ({reason}):\n{log}"
            );
        }
        Ok(())
    });
}

/// Mounts made by [`a_pin_directory_bound_alone_is_used_as_it_is`], in the
/// order made, undone last first even when it fails.
struct Mounts(Vec<std::path::PathBuf>, std::path::PathBuf);

impl Drop for Mounts {
    fn drop(&mut self) {
        for target in self.0.iter().rev() {
            let _ = std::process::Command::new("umount")
                .arg("--lazy")
                .arg(target)
                .status();
        }
        let _ = std::fs::remove_dir(&self.1);
    }
}

fn mount(args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    let status = std::process::Command::new("mount").args(args).status()?;
    anyhow::ensure!(status.success(), "mount {args:?}: {status}");
    Ok(())
}

fn on_bpffs(path: &std::path::Path) -> bool {
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .expect("stat");
    String::from_utf8_lossy(&out.stdout).trim() == "bpf_fs"
}

/// The unit binds the pin directory alone into an empty (tmpfs)
/// /sys/fs/bpf: the daemon must use it as it is, not mount a bpffs of its
/// own over the parent (which needs CAP_SYS_ADMIN, and would hide the pins
/// from everyone else). Here the parent is a temporary directory.
#[test]
fn a_pin_directory_bound_alone_is_used_as_it_is() {
    use std::ffi::OsStr;
    let host = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/{}",
        broker_lab::names::unique_name("bound")
    ));
    std::fs::create_dir(&host).expect("a directory on the host's bpffs");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pins = dir.path().join("pins");
    std::fs::create_dir(&pins).unwrap();
    let mut mounts = Mounts(Vec::new(), host.clone());
    mount(&[OsStr::new("--bind"), host.as_os_str(), pins.as_os_str()]).unwrap();
    mounts.0.push(pins.clone());
    assert!(on_bpffs(&pins) && !on_bpffs(dir.path()));

    let result = broker_userspace::ndp::PinDir::new(&pins).create();
    if on_bpffs(dir.path()) {
        mounts.0.push(dir.path().to_path_buf());
        panic!("a bpffs was mounted over the pin directory's parent");
    }
    result.expect("the bound directory is used");
    drop(mounts);
}
