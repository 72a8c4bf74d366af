//! Processes of the tests and the lab (the broker daemon, `ndp serve`, a
//! client): started from a [`Command`] (usually [`crate::netns::Netns::command`]),
//! their output collected as it comes (and copied to a log file when asked),
//! waited for by what they log, stopped with SIGTERM or killed with
//! SIGKILL. Killed on drop; when the test is failing (or `BBT_DAEMON_LOGS`
//! is set) the output is printed then.

use std::{
    fs::File,
    io::{Read, Write as _},
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub struct Process {
    label: String,
    child: Option<Child>,
    stdout: Arc<Mutex<String>>,
    /// Its log: the broker and wireguard-go write theirs to stderr.
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
    log: Option<PathBuf>,
    /// Whether a drop while the test fails prints the log.
    print_on_failure: bool,
}

impl Process {
    /// Starts `cmd` (stdin closed), collecting its stdout and stderr.
    pub fn spawn(label: &str, cmd: Command) -> anyhow::Result<Process> {
        Self::start(label, cmd, None)
    }

    /// Like [`Process::spawn`], also writing the output to the file `log`.
    pub fn spawn_logged(label: &str, cmd: Command, log: PathBuf) -> anyhow::Result<Process> {
        Self::start(label, cmd, Some(log))
    }

    fn start(label: &str, mut cmd: Command, log: Option<PathBuf>) -> anyhow::Result<Process> {
        let file = log
            .as_ref()
            .map(|path| File::create(path).with_context(|| format!("creating {}", path.display())))
            .transpose()?
            .map(|f| Arc::new(Mutex::new(f)));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {label} ({cmd:?})"))?;
        let (stdout, stderr) = (Arc::default(), Arc::default());
        let readers = vec![
            collect(
                child.stdout.take().context("piped")?,
                Arc::clone(&stdout),
                file.clone(),
            ),
            collect(
                child.stderr.take().context("piped")?,
                Arc::clone(&stderr),
                file,
            ),
        ];
        Ok(Process {
            label: label.to_string(),
            child: Some(child),
            stdout,
            stderr,
            readers,
            status: None,
            log,
            print_on_failure: true,
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The file its stdout and stderr are copied to, if any.
    pub fn log_file(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// Everything it wrote to stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.exited().is_none()
    }

    /// Its exit status, if it exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.child = None;
            self.status = Some(status);
            self.join_readers();
        }
        self.status
    }

    /// Waits (at most `limit`) until `count` lines of its log hold all
    /// of `needles`; returns the last of them. An error, with the output's
    /// end, if it exits or the time passes first.
    pub fn wait_log(
        &mut self,
        needles: &[&str],
        count: usize,
        limit: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.log();
            if let Some(line) = lines_with(&text, needles).nth(count.saturating_sub(1)) {
                return Ok(line.to_string());
            }
            let shown = format!("{needles:?} x{count}");
            if let Some(status) = self.exited() {
                bail!(
                    "{} exited ({status}) before logging {shown}:\n{}",
                    self.label,
                    tail(&self.log(), 40)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} logged no {shown} within {limit:?}:\n{}",
                    self.label,
                    tail(&text, 40)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (at most `limit`) for the process to end by itself; kills it
    /// and fails when it does not.
    pub fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "{} still running after {limit:?}:\n{}",
                    self.label,
                    tail(&self.log(), 40)
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM; waits (at most `limit`) for the exit and returns its status
    /// and how long it took. Kills it and fails when it does not exit.
    pub fn terminate(&mut self, limit: Duration) -> anyhow::Result<(ExitStatus, Duration)> {
        let asked = Instant::now();
        if let Some(pid) = self.pid() {
            // SAFETY: signalling our own child, which has not been reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        let status = self
            .wait_exit(limit)
            .with_context(|| format!("{} ignored SIGTERM", self.label))?;
        Ok((status, asked.elapsed()))
    }

    /// SIGTERM, and a clean exit (status 0) within `limit`, or an error.
    pub fn stop(&mut self, limit: Duration) -> anyhow::Result<()> {
        let (status, took) = self.terminate(limit)?;
        if !status.success() {
            bail!(
                "{}: SIGTERM ended it with {status} after {took:?}:\n{}",
                self.label,
                tail(&self.log(), 40)
            );
        }
        Ok(())
    }

    /// SIGKILL: no clean-up of any kind in the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.status = child.wait().ok();
        }
        self.join_readers();
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        let asked = std::env::var_os("BBT_DAEMON_LOGS").is_some();
        if self.print_on_failure && (thread::panicking() || asked) {
            eprintln!(
                "----- log of {} -----\n{}----- end of {} -----",
                self.label,
                self.log(),
                self.label
            );
        }
    }
}

/// True when `status` is death by SIGKILL.
pub fn killed_by_sigkill(status: ExitStatus) -> bool {
    status.signal() == Some(libc::SIGKILL)
}

/// The lines of `text` that hold all of `needles`.
pub fn lines_with<'a>(text: &'a str, needles: &[&str]) -> impl Iterator<Item = &'a str> {
    let needles: Vec<String> = needles.iter().map(|n| n.to_string()).collect();
    text.lines()
        .filter(move |l| needles.iter().all(|n| l.contains(n.as_str())))
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Copies what `from` yields, as it comes, into `into` (and `file`); the
/// thread ends at end of file.
fn collect(
    mut from: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
    file: Option<Arc<Mutex<File>>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Some(file) = &file {
                let _ = file.lock().unwrap().write_all(&buf[..n]);
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

/// Runs `cmd` to completion, killing it after `limit`. Returns its status
/// (None when it had to be killed), stdout and stderr.
pub fn run_bounded(cmd: Command, limit: Duration) -> anyhow::Result<Bounded> {
    let mut process = Process::spawn("a bounded run", cmd)?;
    process.print_on_failure = false;
    let status = process.wait_exit(limit).ok();
    Ok(Bounded {
        status,
        stdout: process.stdout(),
        stderr: process.log(),
    })
}

/// What [`run_bounded`] gives.
pub struct Bounded {
    /// None when it was killed at the limit.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}
