//! Files written whole or not at all: the one way every binary writes a key
//! or a state file. A temporary file beside the target is made with the
//! final mode (and owner) while still empty, written, synced, then given
//! the target's name by rename(2) (or link(2), which refuses an existing
//! name); the directory is synced so the new name survives a crash too.
//! A reader, or the disk after a crash or a kill at any point, holds the
//! old file or the new one, never an empty or partial one, and a secret is
//! never readable by others for a moment.

use std::{
    fs, io,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
};

/// How the file is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSpec {
    /// The permission bits, exactly (the umask does not narrow them).
    pub mode: u32,
    /// Owner and group to give the file before any content; None keeps
    /// the writer's.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Replace an existing file, or fail with
    /// [`io::ErrorKind::AlreadyExists`] (decided by the kernel when the
    /// name is made: no window between a check and the write).
    pub replace: bool,
}

impl FileSpec {
    /// Mode `mode`, the writer's owner, replacing.
    pub const fn mode(mode: u32) -> Self {
        FileSpec {
            mode,
            uid: None,
            gid: None,
            replace: true,
        }
    }

    /// Mode 0600: only the owner reads it.
    pub const fn private() -> Self {
        Self::mode(0o600)
    }

    pub const fn group(self, gid: Option<u32>) -> Self {
        FileSpec { gid, ..self }
    }

    pub const fn owner(self, uid: Option<u32>, gid: Option<u32>) -> Self {
        FileSpec { uid, gid, ..self }
    }

    /// Never replaces an existing file.
    pub const fn create_new(self) -> Self {
        FileSpec {
            replace: false,
            ..self
        }
    }
}

/// Writes `content` to `path` as `spec` says, atomically (see the module
/// comment). On failure the old file is untouched and the temporary file
/// removed.
pub fn write(path: &Path, content: &[u8], spec: FileSpec) -> io::Result<()> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // Hidden, and unique within the process and across processes, so two
    // writers never share one (create_new refuses a leftover).
    let temp = dir.join(format!(
        ".{}.{}-{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        // Created with no more than the owner's bits of the final mode, so
        // nobody else can open it before its owner and mode are set.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(spec.mode & 0o700)
            .open(&temp)?;
        if spec.uid.is_some() || spec.gid.is_some() {
            std::os::unix::fs::fchown(&file, spec.uid, spec.gid)?;
        }
        // The umask may have taken bits away at creation.
        file.set_permissions(fs::Permissions::from_mode(spec.mode))?;
        file.write_all(content)?;
        file.sync_all()?;
        if spec.replace {
            fs::rename(&temp, path)
        } else {
            fs::hard_link(&temp, path)
        }
    })();
    // Gone already after a rename; the spare name after a link or a failure.
    let _ = fs::remove_file(&temp);
    written?;
    // The new directory entry itself survives a crash.
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::{os::unix::process::ExitStatusExt as _, process::Command};

    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn replaces_with_the_exact_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, "old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        write(&path, b"new", FileSpec::mode(0o640)).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(mode(&path), 0o640);
        write(&path, b"newer", FileSpec::private()).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(names(dir.path()), ["state.json"]);
    }

    #[test]
    fn create_new_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write(&path, b"first", FileSpec::private().create_new()).unwrap();
        let e = write(&path, b"second", FileSpec::private().create_new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&path).unwrap(), "first");
        assert_eq!(names(dir.path()), ["k"]);
    }

    /// A failure at the last step (the target is a directory, which
    /// rename(2) will not replace with a file) leaves the target as it was
    /// and no temporary file.
    #[test]
    fn a_failed_rename_leaves_the_target_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), "kept").unwrap();
        assert!(write(&path, b"new", FileSpec::private()).is_err());
        assert_eq!(fs::read_to_string(path.join("inside")).unwrap(), "kept");
        assert_eq!(names(dir.path()), ["key"]);
    }

    #[test]
    fn the_owner_and_group_are_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owned");
        // SAFETY: plain getters with no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        write(&path, b"x", FileSpec::private().owner(Some(uid), Some(gid))).unwrap();
        let meta = fs::metadata(&path).unwrap();
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
    }

    /// Where [`killed_in_the_middle_of_a_write`] asks its child to write.
    const CHILD_TARGET: &str = "BBT_ATOMIC_FILE_CHILD_TARGET";
    /// Bytes the child may write before the kernel kills it.
    const CHILD_LIMIT: u64 = 16;

    /// The child half of [`killed_in_the_middle_of_a_write`]: with a file
    /// size limit of [`CHILD_LIMIT`] bytes, the write past it gets SIGXFSZ,
    /// whose default action kills the process in the middle of the write,
    /// as a crash or a `kill -9` would.
    #[test]
    #[ignore = "run by killed_in_the_middle_of_a_write in a child process"]
    fn child_writes_past_its_file_size_limit() {
        let Some(target) = std::env::var_os(CHILD_TARGET) else {
            return;
        };
        let limit = libc::rlimit {
            rlim_cur: CHILD_LIMIT,
            rlim_max: CHILD_LIMIT,
        };
        // SAFETY: setrlimit reads the struct given; only this process is
        // affected, and it is the child made for this.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) }, 0);
        let _ = write(Path::new(&target), &[b'n'; 64], FileSpec::private());
        // Not reached: the kernel ends the process inside `write`.
        std::process::exit(0);
    }

    /// A writer killed in the middle of writing the new content leaves the
    /// old file whole, with its content and mode: never an empty or partial
    /// key. And what it had written so far was never readable by others
    /// (mode 0600 before the first byte).
    #[test]
    fn killed_in_the_middle_of_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("server.key");
        let old = format!("{}\n", "ab".repeat(32));
        write(&target, old.as_bytes(), FileSpec::private()).unwrap();

        let status = Command::new(std::env::current_exe().unwrap())
            .args([
                "atomic_file::tests::child_writes_past_its_file_size_limit",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_TARGET, &target)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(
            status.signal(),
            Some(libc::SIGXFSZ),
            "the child was not killed in the middle of its write: {status}"
        );

        assert_eq!(fs::read_to_string(&target).unwrap(), old);
        assert_eq!(mode(&target), 0o600);
        // The half-written temporary file the kill left: its first bytes
        // only, and never readable by others.
        let leftovers: Vec<String> = names(dir.path())
            .into_iter()
            .filter(|n| n != "server.key")
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        let leftover = dir.path().join(&leftovers[0]);
        assert_eq!(fs::metadata(&leftover).unwrap().len(), CHILD_LIMIT);
        assert_eq!(mode(&leftover), 0o600);
    }
}
