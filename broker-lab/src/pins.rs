//! A bpffs pin directory of the test's own, removed (detaching whatever was
//! attached through it) when the guard drops, even when the test fails.

use broker_userspace::ndp::{self, PinDir};

use crate::names::unique_name;

pub struct TestPins {
    pub dir: PinDir,
}

impl TestPins {
    /// `/sys/fs/bpf/bbt-<pid>-<n>-<tag>`.
    pub fn new(tag: &str) -> Self {
        Self::at(format!("/sys/fs/bpf/{}", unique_name(tag)))
    }

    /// A guard for the pin directory `path`.
    pub fn at(path: impl Into<std::path::PathBuf>) -> Self {
        TestPins {
            dir: PinDir::new(path),
        }
    }
}

impl Drop for TestPins {
    fn drop(&mut self) {
        if let Err(e) = ndp::detach(&self.dir) {
            eprintln!("cleaning up {}: {e}", self.dir.path().display());
        }
    }
}
