//! What the daemon tells its service manager (sd_notify): READY=1 once it
//! answers requests, STATUS= lines with what it is doing, WATCHDOG=1 from
//! the poll loop, STOPPING=1 on SIGTERM. Without `NOTIFY_SOCKET` (not run
//! by systemd with `Type=notify`) nothing is sent.
//!
//! The watchdog pings come from the loop itself, not from a timer task:
//! a poll stuck in an RPC call that never returns stops them, and systemd
//! restarts the daemon. The unit's `WatchdogSec=` must therefore exceed the
//! longest step the loop legitimately takes (a transaction's receipt wait).

use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// The daemon's line to systemd. Cheap to clone; every call is one datagram.
#[derive(Clone, Debug)]
pub struct Systemd {
    /// Half of `WATCHDOG_USEC` (as sd_watchdog_enabled(3) advises), when
    /// systemd asked for pings.
    ping_every: Option<Duration>,
    last_ping: Option<Instant>,
    /// A failed send is said once, not at every ping.
    warned: bool,
}

impl Systemd {
    /// Reads `WATCHDOG_USEC` (and `WATCHDOG_PID`, when it names another
    /// process the watchdog is not ours).
    pub fn from_env() -> Self {
        let ping_every = sd_notify::watchdog_enabled().map(|period| period / 2);
        if let Some(every) = ping_every {
            debug!(?every, "systemd watchdog enabled");
        }
        Systemd {
            ping_every,
            last_ping: None,
            warned: false,
        }
    }

    /// READY=1 with a status line.
    pub fn ready(&mut self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A STATUS= line (`systemctl status` shows the latest).
    pub fn status(&mut self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// WATCHDOG=1 when half the watchdog period has passed since the last.
    /// Called from the loop's own steps only.
    pub fn ping_if_due(&mut self) {
        let Some(every) = self.ping_every else {
            return;
        };
        if self.last_ping.is_some_and(|last| last.elapsed() < every) {
            return;
        }
        self.last_ping = Some(Instant::now());
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&mut self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(states)
            && !self.warned
        {
            warn!("telling systemd ({states:?}) failed: {e}");
            self.warned = true;
        }
    }
}

/// STOPPING=1, from the signal handler (which holds no [`Systemd`]).
pub fn stopping(signal: &str) {
    let status = format!("stopping ({signal}): finishing the request in hand");
    if let Err(e) = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status(&status)]) {
        warn!("telling systemd STOPPING=1 failed: {e}");
    }
}
