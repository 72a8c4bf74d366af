//! A service manager's notification socket, as systemd gives a
//! `Type=notify` service in `NOTIFY_SOCKET`: a Unix datagram socket whose
//! messages (`READY=1`, `STATUS=…`, `WATCHDOG=1`, `STOPPING=1`, one or more
//! newline-separated assignments each) are collected with the time they
//! came, so that a test can check what a daemon said and when, without
//! systemd.

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// One assignment (`READY=1`) and when its datagram came.
#[derive(Clone, Debug)]
pub struct Notification {
    pub at: Instant,
    pub line: String,
}

pub struct NotifySocket {
    path: PathBuf,
    received: Arc<Mutex<Vec<Notification>>>,
    done: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl NotifySocket {
    /// Binds `path` (removed again on drop).
    pub fn bind(path: &Path) -> anyhow::Result<NotifySocket> {
        let socket =
            UnixDatagram::bind(path).with_context(|| format!("binding {}", path.display()))?;
        // Short reads: the reader looks at `done` in between.
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let (sink, stop) = (received.clone(), done.clone());
        let reader = thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !stop.load(Ordering::SeqCst) {
                let Ok(n) = socket.recv(&mut buf) else {
                    continue;
                };
                let at = Instant::now();
                let text = String::from_utf8_lossy(&buf[..n]);
                let mut sink = sink.lock().unwrap();
                sink.extend(
                    text.lines()
                        .filter(|l| !l.is_empty())
                        .map(|line| Notification {
                            at,
                            line: line.to_string(),
                        }),
                );
            }
        });
        Ok(NotifySocket {
            path: path.to_path_buf(),
            received,
            done,
            reader: Some(reader),
        })
    }

    /// The value for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Everything received so far, in order.
    pub fn received(&self) -> Vec<Notification> {
        self.received.lock().unwrap().clone()
    }

    /// The lines received so far that start with `prefix` (`STATUS=`).
    pub fn lines(&self, prefix: &str) -> Vec<String> {
        self.received()
            .into_iter()
            .filter(|n| n.line.starts_with(prefix))
            .map(|n| n.line)
            .collect()
    }

    /// Waits up to `limit` for the line `line` (exactly); returns its index
    /// in [`NotifySocket::received`] and when it came.
    pub fn wait_for(&self, line: &str, limit: Duration) -> anyhow::Result<(usize, Instant)> {
        self.wait_until(line, limit, |l| l == line)
    }

    /// Waits up to `limit` for a line starting with `prefix`.
    pub fn wait_for_prefix(
        &self,
        prefix: &str,
        limit: Duration,
    ) -> anyhow::Result<(usize, Instant)> {
        self.wait_until(&format!("{prefix}…"), limit, |l| l.starts_with(prefix))
    }

    fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> anyhow::Result<(usize, Instant)> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((i, n)) = self
                .received()
                .into_iter()
                .enumerate()
                .find(|(_, n)| matches(&n.line))
            {
                return Ok((i, n.at));
            }
            if Instant::now() >= deadline {
                bail!(
                    "no {what} within {limit:?}; received: {:?}",
                    self.received()
                        .iter()
                        .map(|n| n.line.as_str())
                        .collect::<Vec<_>>()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The times `line` came, in order.
    pub fn times_of(&self, line: &str) -> Vec<Instant> {
        self.received()
            .into_iter()
            .filter(|n| n.line == line)
            .map(|n| n.at)
            .collect()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
