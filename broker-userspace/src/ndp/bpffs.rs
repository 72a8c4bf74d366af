//! The bpffs directory that holds the responder's pins.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use super::NdpError;

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/blockhost-broker";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// A directory of pins: the three maps (named as in broker-common) and `link`.
#[derive(Clone, Debug)]
pub struct PinDir(PathBuf);

impl PinDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PinDir(path.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn link(&self) -> PathBuf {
        self.0.join("link")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Makes sure the directory exists on a bpffs, mounting bpffs on its parent
    /// when nothing is mounted there (minimal systems and containers often
    /// lack the mount that systemd normally provides).
    pub fn create(&self) -> Result<(), NdpError> {
        let err = |source| NdpError::Bpffs {
            path: self.0.clone(),
            source,
        };
        // A directory already on a bpffs is used as it is, whatever its
        // parent: the systemd unit binds it into the service's namespace
        // over a tmpfs (systemd mounts /sys/fs/bpf 0700, closed to the
        // service's user), where mounting a bpffs would need CAP_SYS_ADMIN.
        if is_bpffs(&self.0).map_err(err)? {
            return Ok(());
        }
        let parent = self.0.parent().unwrap_or(Path::new("/"));
        if !is_bpffs(parent).map_err(err)? {
            std::fs::create_dir_all(parent).map_err(err)?;
            mount_bpffs(parent).map_err(err)?;
            tracing::info!(path = %parent.display(), "mounted bpffs");
        }
        match std::fs::create_dir(&self.0) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(err(e)),
        }
    }

    /// True when the directory exists (something was pinned and not detached).
    pub fn exists(&self) -> bool {
        self.0.is_dir()
    }
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and an out-pointer to a zeroed statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::NotFound {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = CString::new(path.as_os_str().as_bytes())?;
    let fstype = c"bpf";
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
