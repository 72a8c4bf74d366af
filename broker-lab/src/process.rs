//! Long-running processes of the lab (the broker daemon), their logs in
//! files, and the wireguard-go daemons that outlive whoever started them.

use std::{
    fs::{self, File},
    path::PathBuf,
    process::{Child, Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A child process whose output goes to `log`; killed on drop.
pub struct Process {
    label: String,
    child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(label: &str, mut cmd: Command, log: PathBuf) -> anyhow::Result<Process> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {label}"))?;
        Ok(Process {
            label: label.to_string(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status, if it exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until its log has a line containing `needle` (an error, with
    /// the log's end, if it exits or `limit` passes first).
    pub fn wait_log(&mut self, needle: &str, limit: Duration) -> anyhow::Result<String> {
        self.wait_log_all(&[needle], limit)
    }

    /// Like [`Process::wait_log`], for a line with all of `needles`.
    pub fn wait_log_all(&mut self, needles: &[&str], limit: Duration) -> anyhow::Result<String> {
        let needle = needles.join("\" … \"");
        let deadline = Instant::now() + limit;
        loop {
            let text = self.log_text();
            if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return Ok(line.to_string());
            }
            if let Some(status) = self.exited() {
                bail!("{} exited ({status}):\n{}", self.label, tail(&text, 20));
            }
            if Instant::now() > deadline {
                bail!(
                    "{} logged no \"{needle}\" within {limit:?}:\n{}",
                    self.label,
                    tail(&text, 20)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then SIGKILL if it is still running after `limit`.
    pub fn stop(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.exited() {
            return Ok(status);
        }
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let status = self.child.wait()?;
        bail!(
            "{} ignored SIGTERM for {limit:?} and was killed ({status})",
            self.label
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.stop(Duration::from_secs(10));
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Stops the wireguard-go daemon of interface `name`, wherever it runs,
/// and removes its control socket (sockets live in /var/run/wireguard, one
/// directory for every namespace, so interface names are unique per lab).
pub fn stop_wireguard_go(name: &str) {
    let want = format!("wireguard-go\0{name}\0");
    let pids: Vec<i32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.ends_with(want.as_bytes()))
        })
        .collect();
    for pid in pids {
        // SAFETY: kill(2) of a process found by its command line.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = fs::remove_file(format!("/var/run/wireguard/{name}.sock"));
}
