//! Files the tests write: keys, allocations, never readable by others, not
//! even for a moment (created with their mode).

use std::{fs, io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path};

use anyhow::Context as _;

/// Writes `content` and a newline to a new file of mode `mode`.
pub fn write_new(path: &Path, content: &str, mode: u32) -> anyhow::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| writeln!(f, "{content}"))
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes `content` and a newline to a new file of mode 0600.
pub fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    write_new(path, content, 0o600)
}
