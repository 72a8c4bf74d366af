//! `blockhost-broker run` as a process of the test: started in a namespace
//! (setns before exec, see netns.rs), its log collected, stopped with
//! SIGTERM or killed with SIGKILL. Killed on drop; when the test is failing
//! (or BBT_DAEMON_LOGS is set), the log is printed then.

use std::{
    os::unix::process::ExitStatusExt as _,
    path::Path,
    process::{Child, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use super::netns::{BROKER_BIN, Netns, stream};

pub struct DaemonProcess {
    label: String,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl DaemonProcess {
    /// `blockhost-broker run -c CONFIG` in `ns`; `failpoints` goes into its
    /// FAILPOINTS (e.g. `after-kernel=return`).
    pub fn start(label: &str, ns: &Netns, config: &Path, failpoints: Option<&str>) -> Self {
        let mut cmd = ns.command(BROKER_BIN);
        cmd.args(["run", "-c"])
            .arg(config)
            .env("NO_COLOR", "1")
            .env("BLOCKHOST_BROKER_LOG", "info")
            .env_remove("FAILPOINTS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(points) = failpoints {
            cmd.env("FAILPOINTS", points);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        let (log, reader) = stream(child.stderr.take().expect("piped"));
        DaemonProcess {
            label: label.into(),
            child: Some(child),
            log,
            reader: Some(reader),
            status: None,
        }
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait().expect("waiting for the daemon")
        {
            self.child = None;
            self.status = Some(status);
            self.join_reader();
        }
        self.status
    }

    /// Waits (at most `limit`) until the log holds `needle` `count` times;
    /// panics with the log when it does not, or when the daemon exits first.
    pub fn wait_log(&mut self, needle: &str, count: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.log().matches(needle).count() >= count {
                return;
            }
            if let Some(status) = self.poll_exit() {
                panic!(
                    "{}: exited ({status}) before logging {needle:?} x{count}:\n{}",
                    self.label,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {needle:?} x{count} within {limit:?}:\n{}",
                self.label,
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (at most `limit`) for the process to end by itself (a crash
    /// point); kills it and panics when it does not.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.poll_exit() {
                return status;
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "{}: still running after {limit:?}:\n{}",
                    self.label,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM; waits (at most `limit`) for the exit and returns its status
    /// and how long it took. Kills it and panics when it does not exit.
    pub fn terminate(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let pid = self.pid().expect("the daemon is running");
        let asked = Instant::now();
        // SAFETY: signalling our own child, which has not been reaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let status = self.wait_exit(limit);
        (status, asked.elapsed())
    }

    /// SIGTERM, and asserts a clean exit (status 0) within 15 s.
    pub fn stop(&mut self) {
        let (status, took) = self.terminate(Duration::from_secs(15));
        assert!(
            status.success(),
            "{}: SIGTERM ended it with {status} after {took:?}:\n{}",
            self.label,
            self.log()
        );
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.status = child.wait().ok();
        }
        self.join_reader();
    }

    fn join_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// True when `status` is death by SIGKILL.
pub fn killed_by_sigkill(status: ExitStatus) -> bool {
    status.signal() == Some(libc::SIGKILL)
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() || std::env::var_os("BBT_DAEMON_LOGS").is_some() {
            eprintln!(
                "----- log of {} -----\n{}----- end of {} -----",
                self.label,
                self.log(),
                self.label
            );
        }
    }
}
