//! Crash points for the tests (cargo feature `failpoints`): with
//! `FAILPOINTS=NAME=return` in its environment, the daemon SIGKILLs itself
//! when it reaches the point NAME — no unwinding, no destructors, nothing
//! flushed: what a power cut or the OOM killer leaves. Without the feature
//! [`crash_point!`] expands to nothing, so a normal build has none of them.
//!
//! The points, in the order a request passes them:
//! - `after-decision`: a valid request's decision (allocation and stage) has
//!   committed; nothing is in the kernel yet;
//! - `after-kernel`: its peer, route and NDP entry are set up (also when a
//!   later poll resumes it); this run sent nothing for it yet;
//! - `after-send`: the answer's transaction is recorded (`Sent`) and was
//!   broadcast; its receipt is not awaited yet. With pipelined answers it is
//!   reached once per answer of a poll's run (`after-send=2*off->return`
//!   kills after the 3rd: the answers before it pending, the requests after
//!   it decided and not sent);
//! - `before-receipts`: every answer of the poll's run is recorded and
//!   broadcast; none of their receipts is awaited yet;
//! - `before-answered`: `submitResponse` was mined; the database knows it
//!   as sent, not as answered;
//! - `after-release`: a release has committed; the kernel still holds the
//!   allocation and the on-chain release is still owed;
//! - `after-release-send`: the on-chain release's transaction is recorded
//!   and was broadcast; its receipt is not awaited yet;
//! - `before-release-recorded`: `releaseAllocation` was mined; the database
//!   still owes it.

/// Marks a crash point (see the module comment).
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        $crate::daemon::crash_points::reached($name);
    };
}
pub(crate) use crash_point;

/// Reads `FAILPOINTS` (once, at start).
#[cfg(feature = "failpoints")]
pub(super) fn setup() {
    // The scenario is a guard that clears the configuration when dropped:
    // it lives as long as the process.
    std::mem::forget(fail::FailScenario::setup());
    if let Ok(points) = std::env::var("FAILPOINTS") {
        tracing::warn!("crash points armed: {points}");
    }
}

#[cfg(not(feature = "failpoints"))]
pub(super) fn setup() {}

#[cfg(feature = "failpoints")]
pub(crate) fn reached(name: &str) {
    fail::eval(name, |_| {
        tracing::warn!("crash point {name}: SIGKILL");
        // SAFETY: kill(2) of our own process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        // SIGKILL to oneself is delivered before kill returns to user
        // space; never go on past a crash point regardless.
        loop {
            std::thread::park();
        }
    });
}
