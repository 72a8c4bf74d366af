//! A bpffs pin directory of the test's own, removed (detaching whatever was
//! attached through it) when the guard drops, even when the test fails.

use std::sync::atomic::{AtomicU32, Ordering};

use broker_userspace::ndp::{self, PinDir};

/// Every namespace and pin directory a test makes starts with this, so
/// `cargo xtask test` can sweep up after a run that was killed.
pub const TEST_PREFIX: &str = "bbt-";

/// A name unique to this process and call: `bbt-<pid>-<n>-<tag>`, at most 15
/// characters kept for interface-name uses by the callers.
pub fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{TEST_PREFIX}{}-{n}-{tag}", std::process::id())
}

pub struct TestPins {
    pub dir: PinDir,
}

impl TestPins {
    pub fn new(tag: &str) -> Self {
        TestPins {
            dir: PinDir::new(format!("/sys/fs/bpf/{}", unique_name(tag))),
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
