//! The programs' own log records (aya-log), read into the daemon's log.
//!
//! The responder logs only on its rare paths (a DAD probe defended, an
//! invalid solicitation and why, an answer it could not make), at debug and
//! trace level, with the target [`LOG_TARGET`]. Which levels the programs
//! emit is fixed when they are loaded: aya-log's `AYA_LOG_LEVEL` is a
//! read-only global, so the verifier sees the level as a constant and removes
//! the disabled log calls from the program. [`Responder::load`] takes the
//! level from the daemon's tracing filter (`BLOCKHOST_BROKER_LOG`, e.g.
//! `info,broker_ebpf=debug`); at the default `info` the programs have nothing
//! to log and no reader runs.
//!
//! The records arrive through a ring buffer that a thread of their own reads
//! into the `log` crate's logger, where tracing-subscriber's `tracing-log`
//! bridge (installed by `init()` in main.rs) hands them to the daemon's log.
//!
//! [`Responder::load`]: super::Responder::load

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    thread::{self, JoinHandle},
};

use aya_log::EbpfLogger;
use broker_common::ndp::LOG_TARGET;
use tracing::Level;

/// The most severe level the programs log at (debug and trace only): a
/// filter that lets none of those through needs no reader.
pub(crate) const MOST_SEVERE_RECORD: Level = Level::DEBUG;

/// The most verbose level at which the current tracing filter lets the
/// programs' records through; None when it lets none through.
pub(crate) fn level_from_tracing() -> Option<Level> {
    // `enabled!` needs its level as a constant: one call per level.
    if tracing::enabled!(target: LOG_TARGET, Level::TRACE) {
        Some(Level::TRACE)
    } else if tracing::enabled!(target: LOG_TARGET, Level::DEBUG) {
        Some(Level::DEBUG)
    } else if tracing::enabled!(target: LOG_TARGET, Level::INFO) {
        Some(Level::INFO)
    } else if tracing::enabled!(target: LOG_TARGET, Level::WARN) {
        Some(Level::WARN)
    } else if tracing::enabled!(target: LOG_TARGET, Level::ERROR) {
        Some(Level::ERROR)
    } else {
        None
    }
}

/// The value of `AYA_LOG_LEVEL` that lets records of `level` and more
/// severe through; 0 lets none through.
pub(crate) fn level_code(level: Option<Level>) -> u8 {
    let Some(level) = level else {
        return 0;
    };
    let level = match level {
        Level::ERROR => aya_log::Level::Error,
        Level::WARN => aya_log::Level::Warn,
        Level::INFO => aya_log::Level::Info,
        Level::DEBUG => aya_log::Level::Debug,
        Level::TRACE => aya_log::Level::Trace,
    };
    level.into()
}

/// A thread that passes the programs' records to the `log` crate's logger
/// as they come; stopped (after a last read) on drop.
pub(crate) struct LogReader {
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl LogReader {
    pub(crate) fn spawn(mut records: EbpfLogger<&'static dyn log::Log>) -> io::Result<Self> {
        // SAFETY: a plain system call; the descriptor is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let stop = unsafe { OwnedFd::from_raw_fd(fd) };
        let stopped = stop.try_clone()?;
        let thread = thread::Builder::new()
            .name("ndp-kernel-log".into())
            .spawn(move || {
                let mut fds = [
                    libc::pollfd {
                        fd: records.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: stopped.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                loop {
                    // SAFETY: two valid pollfds that outlive the call.
                    if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
                        let e = io::Error::last_os_error();
                        if e.kind() == io::ErrorKind::Interrupted {
                            continue;
                        }
                        tracing::warn!("no more records from the NDP responder's program: {e}");
                        return;
                    }
                    records.flush();
                    if fds[1].revents != 0 {
                        return;
                    }
                }
            })?;
        Ok(LogReader {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LogReader {
    fn drop(&mut self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd.
        unsafe { libc::write(self.stop.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level_under(filter: &str) -> Option<Level> {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .finish();
        tracing::subscriber::with_default(subscriber, level_from_tracing)
    }

    #[test]
    fn the_level_follows_the_filter_for_the_programs_target() {
        assert_eq!(level_under("info"), Some(Level::INFO));
        assert_eq!(level_under("info,broker_ebpf=debug"), Some(Level::DEBUG));
        assert_eq!(level_under("trace"), Some(Level::TRACE));
        assert_eq!(level_under("debug,broker_ebpf=off"), None);
        assert_eq!(level_code(None), 0);
        assert_eq!(level_code(Some(Level::DEBUG)), 4);
    }
}
