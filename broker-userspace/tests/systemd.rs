//! The daemon as a systemd service, without systemd: what it tells the
//! service manager through `NOTIFY_SOCKET` (READY=1, STATUS=, WATCHDOG=1,
//! STOPPING=1) and when, checked against a socket of broker-lab's
//! (`notify`) while the lab's chain answers, hangs and answers again.
//!
//! Needs root (`cargo xtask test`): the lab's namespaces, anvil,
//! wireguard-go and the XDP responder, all removed when the lab drops.

use std::time::{Duration, Instant};

use broker_lab::{Lab, lab_test, notify::NotifySocket};

/// What the test sets as `WATCHDOG_USEC`: the daemon pings every half of it.
const WATCHDOG: Duration = Duration::from_secs(2);

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

        // Pings at half the period, while the chain answers.
        std::thread::sleep(secs(6));
        let now = Instant::now();
        let pings = socket.times_of("WATCHDOG=1");
        let steady = pings.iter().filter(|&&t| t > ready_time).count();
        assert!(steady >= 4, "{steady} pings in 6 s after READY=1");
        let gap = longest_gap(&pings, ready_time, now);
        assert!(gap < WATCHDOG, "a {gap:?} gap between pings while polling");

        // A request answered: the status says so.
        lab.serve(broker_lab::requests::CLIENT).await?;
        let statuses = socket.lines("STATUS=answering request ");
        assert!(!statuses.is_empty(), "no STATUS=answering request …");

        // The chain hangs: the poll loop is stuck in an RPC call and the
        // pings stop (systemd would restart the daemon).
        let stalled_at = Instant::now();
        lab.relay().stall();
        std::thread::sleep(secs(8));
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
