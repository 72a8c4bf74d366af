//! `cargo xtask image`: the broker VPS image (image/README.md), a qcow2 of
//! Debian 13 with the blockhost-broker package, built with mmdebstrap from
//! the Debian registry only, made bootable on BIOS with GRUB on a loop device.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::Parser;

use crate::cmd;

#[derive(Parser)]
pub struct Args {
    /// The blockhost-broker .deb to install. Default: `cargo xtask deb`'s
    /// newest target/debian/blockhost-broker_*.deb, built first.
    #[arg(long)]
    pub deb: Option<PathBuf>,
    /// The disk's size as the VPS sees it (GiB); cloud-init grows the root
    /// file system to the provider's disk at first boot.
    #[arg(long, default_value_t = 2)]
    pub size_gib: u64,
    /// Keep the unpacked tree (target/image/build/rootfs) for inspection.
    #[arg(long)]
    pub keep_tree: bool,
    /// Make the disk from the tree a previous `--keep-tree` build left,
    /// skipping mmdebstrap (for work on the disk stage).
    #[arg(long)]
    pub from_kept_tree: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            deb: None,
            size_gib: 2,
            keep_tree: false,
            from_kept_tree: false,
        }
    }
}

/// What the image holds beyond mmdebstrap's `apt` variant (essential + apt).
/// Each is here for a reason: see image/README.md, "What is inside".
pub const PACKAGES: &[&str] = &[
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "grub-pc",
    "systemd-sysv",
    "systemd-resolved",
    "systemd-timesyncd",
    "udev",
    "dbus",
    "kmod",
    "e2fsprogs",
    "cloud-init",
    "cloud-guest-utils",
    "openssh-server",
    "sudo",
    "nftables",
    "wireguard-tools",
    "iproute2",
    "iputils-ping",
    "ca-certificates",
    "netbase",
    "less",
    "procps",
];

/// The file system's identity is fixed so that two builds of the same
/// package set give the same disk (and grub.cfg names the same root).
const ROOT_UUID: &str = "6c1d4a52-8d1e-4e43-9b6a-b10c0b40c0de";
const ROOT_HASH_SEED: &str = "3f2c7a10-2f5e-4c1b-8a4d-b10c0b40c0de";
const DISK_ID: &str = "0xb10cb40c";

pub fn mirror() -> String {
    std::env::var("BLOCKHOST_IMAGE_MIRROR").unwrap_or_else(|_| "http://deb.debian.org".into())
}

/// Builds the image; its path.
pub fn run(args: Args) -> anyhow::Result<PathBuf> {
    if !cmd::is_root() {
        bail!("`cargo xtask image` needs root (mmdebstrap's root mode, loop devices, mounts)");
    }
    let root = cmd::workspace_root();
    let deb = match args.deb {
        Some(d) => d,
        None => {
            cmd::run(
                Command::new(env!("CARGO"))
                    .current_dir(&root)
                    .args(["run", "--quiet", "-p", "xtask", "--", "deb"]),
            )
            .context("building the package (`cargo xtask deb`)")?;
            newest_deb(&root.join("target/debian"))?
        }
    };
    let deb = fs::canonicalize(&deb).with_context(|| format!("{}", deb.display()))?;
    let version = deb_version(&deb)?;
    let out_dir = root.join("target/image");
    let work = out_dir.join("build");
    let rootfs = work.join("rootfs");
    let epoch = source_date_epoch(&root)?;
    if args.from_kept_tree {
        if !rootfs.is_dir() {
            bail!("no kept tree at {}", rootfs.display());
        }
        let _ = fs::remove_file(work.join("disk.raw"));
    } else {
        if work.exists() {
            fs::remove_dir_all(&work).context("removing the previous build tree")?;
        }
        fs::create_dir_all(&work)?;
        tree(&root, &deb, &rootfs, &epoch)?;
    }

    eprintln!("image: disk (ext4 root, GRUB for BIOS)");
    let raw = work.join("disk.raw");
    make_disk(&raw, &rootfs, args.size_gib, &epoch)?;
    if !args.keep_tree {
        fs::remove_dir_all(&rootfs).context("removing the tree")?;
    }

    let qcow2 = out_dir.join(format!("blockhost-broker-{version}.qcow2"));
    cmd::run(
        Command::new("qemu-img")
            .args(["convert", "-c", "-O", "qcow2"])
            .arg(&raw)
            .arg(&qcow2),
    )?;
    fs::remove_file(&raw)?;
    // The package beside the image: the boot test upgrades it to a newer
    // build of itself.
    fs::copy(&deb, qcow2.with_extension("deb")).context("copying the package beside the image")?;
    let size = fs::metadata(&qcow2)?.len();
    println!(
        "{} ({:.0} MiB; disk {} GiB)",
        qcow2.display(),
        size as f64 / (1024.0 * 1024.0),
        args.size_gib
    );
    Ok(qcow2)
}

/// The Debian 13 tree with the package and the image's files, by mmdebstrap.
fn tree(root: &Path, deb: &Path, rootfs: &Path, epoch: &str) -> anyhow::Result<()> {
    let cache = root.join("target/image/apt-cache");
    fs::create_dir_all(&cache)?;

    eprintln!("image: Debian 13 tree with {} (mmdebstrap)", deb.display());
    let image_dir = root.join("image");
    let m = mirror();
    let mut mm = Command::new("mmdebstrap");
    mm.env("SOURCE_DATE_EPOCH", epoch)
        .args(["--mode=root", "--variant=apt", "--format=directory"])
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg("--aptopt=Acquire::Languages \"none\"")
        .arg("--aptopt=APT::Install-Recommends \"false\"")
        // Small: no manuals, translations or documentation but the
        // copyrights (and the broker's own).
        .args([
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-include=/usr/share/locale/locale.alias",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-include=/usr/share/doc/blockhost-broker/*",
            "--dpkgopt=path-exclude=/usr/share/info/*",
        ])
        // Packages are kept under target/ between builds.
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives")
        .arg(format!(
            "--setup-hook=sync-in {} /var/cache/apt/archives/",
            cache.display()
        ))
        .arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {}",
            cache.display()
        ))
        .arg(format!(
            "--customize-hook={}/customize.sh \"$1\" {} {}",
            image_dir.display(),
            deb.display(),
            image_dir.display()
        ))
        .arg("trixie")
        .arg(rootfs)
        .arg(format!("deb {m}/debian trixie main"))
        .arg(format!("deb {m}/debian trixie-updates main"))
        .arg(format!("deb {m}/debian-security trixie-security main"));
    cmd::run(&mut mm)?;
    let _ = fs::remove_file(cache.join("lock"));
    Ok(())
}

pub fn newest_deb(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut debs: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("{} (run `cargo xtask deb`)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("blockhost-broker_") && n.ends_with(".deb"))
        })
        .collect();
    debs.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
    debs.pop()
        .with_context(|| format!("no blockhost-broker_*.deb in {}", dir.display()))
}

fn deb_version(deb: &Path) -> anyhow::Result<String> {
    let out = cmd::stdout_of(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(deb)
            .arg("Version"),
    )
    .with_context(|| format!("{} is not a readable .deb", deb.display()))?;
    Ok(out.trim().to_string())
}

/// The last commit's time: builds of one commit carry the same timestamps.
fn source_date_epoch(root: &Path) -> anyhow::Result<String> {
    if let Ok(e) = std::env::var("SOURCE_DATE_EPOCH") {
        return Ok(e);
    }
    let out =
        cmd::stdout_of(
            Command::new("git")
                .current_dir(root)
                .args(["log", "-1", "--format=%ct"]),
        )
        .context("git log (set SOURCE_DATE_EPOCH outside a git checkout)")?;
    Ok(out.trim().to_string())
}

/// Detaches the loop device and unmounts what was mounted, even on failure.
struct Mounted {
    loop_dev: String,
    mounts: Vec<PathBuf>,
    /// A partition node made by hand (see [`partition_node`]).
    made_node: Option<PathBuf>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg(m).status();
        }
        let _ = Command::new("losetup")
            .args(["-d", &self.loop_dev])
            .status();
        if let Some(node) = &self.made_node {
            let _ = fs::remove_file(node);
        }
    }
}

/// The loop device's first partition. In a container the kernel may skip
/// the partition scan (`partx -a` asks again) and no udev makes the node:
/// then it is made from sysfs, and removed with the loop device.
fn partition_node(loop_dev: &str, guard: &mut Mounted) -> anyhow::Result<PathBuf> {
    let node = PathBuf::from(format!("{loop_dev}p1"));
    let name = loop_dev.trim_start_matches("/dev/");
    let sys = PathBuf::from(format!("/sys/block/{name}/{name}p1/dev"));
    if !sys.exists() {
        let _ = Command::new("partx").args(["-a", loop_dev]).output();
    }
    for _ in 0..20 {
        if node.exists() {
            return Ok(node);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let dev = fs::read_to_string(&sys)
        .with_context(|| format!("{}: the kernel made no partition", sys.display()))?;
    let (major, minor) = dev
        .trim()
        .split_once(':')
        .with_context(|| format!("{}: {dev}", sys.display()))?;
    cmd::run(Command::new("mknod").arg(&node).args(["b", major, minor]))?;
    guard.made_node = Some(node.clone());
    Ok(node)
}

fn make_disk(raw: &Path, rootfs: &Path, size_gib: u64, epoch: &str) -> anyhow::Result<()> {
    let f = fs::File::create(raw)?;
    f.set_len(size_gib << 30)?;
    drop(f);
    // One partition from 1 MiB: GRUB's core image goes in the gap before it.
    let mut sfdisk = Command::new("sfdisk");
    sfdisk.arg("--quiet").arg(raw);
    cmd::run_with_stdin(
        &mut sfdisk,
        &format!("label: dos\nlabel-id: {DISK_ID}\nstart=2048, type=83, bootable\n"),
    )?;
    let loop_dev = cmd::stdout_of(
        Command::new("losetup")
            .args(["--find", "--show", "--partscan"])
            .arg(raw),
    )
    .context("losetup: no loop device")?
    .trim()
    .to_string();
    let mut guard = Mounted {
        loop_dev: loop_dev.clone(),
        mounts: Vec::new(),
        made_node: None,
    };
    let part = partition_node(&loop_dev, &mut guard)?;
    cmd::run(
        Command::new("mkfs.ext4")
            .env("E2FSPROGS_FAKE_TIME", epoch)
            .args(["-q", "-L", "blockhost-root", "-U", ROOT_UUID])
            .arg("-E")
            .arg(format!("hash_seed={ROOT_HASH_SEED}"))
            .arg("-d")
            .arg(rootfs)
            .arg(&part),
    )?;
    let mnt = raw.with_file_name("mnt");
    fs::create_dir_all(&mnt)?;
    cmd::run(Command::new("mount").arg(&part).arg(&mnt))?;
    guard.mounts.push(mnt.clone());
    for d in ["dev", "proc", "sys"] {
        let target = mnt.join(d);
        cmd::run(
            Command::new("mount")
                .arg("--bind")
                .arg(format!("/{d}"))
                .arg(&target),
        )?;
        guard.mounts.push(target);
    }
    cmd::run(Command::new("chroot").arg(&mnt).args([
        "grub-install",
        "--target=i386-pc",
        &loop_dev,
    ]))?;
    cmd::run(
        Command::new("chroot")
            .arg(&mnt)
            .env("SOURCE_DATE_EPOCH", epoch)
            .arg("update-grub"),
    )?;
    // grub.cfg must name the file system, not the build's loop device.
    let cfg = fs::read_to_string(mnt.join("boot/grub/grub.cfg"))?;
    if cfg.contains("/dev/loop") {
        bail!("grub.cfg names the build's loop device: {cfg}");
    }
    drop(guard);
    Ok(())
}

#[derive(Parser)]
pub struct TestArgs {
    /// The image to boot. Default: the newest target/image/*.qcow2, built
    /// first by `cargo xtask image` when there is none.
    #[arg(long)]
    pub image: Option<PathBuf>,
}

/// `cargo xtask image-test`: boots the image under qemu (TCG) and checks it
/// configures itself and serves (broker-lab/tests/image.rs).
pub fn test(args: TestArgs) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("`cargo xtask image-test` needs root (namespaces, a tap device)");
    }
    let root = cmd::workspace_root();
    let image = match args.image {
        Some(i) => i,
        None => match newest_image(&root.join("target/image")) {
            Some(i) => i,
            None => run(Args::default())?,
        },
    };
    let image = fs::canonicalize(&image).with_context(|| format!("{}", image.display()))?;
    let deb = image.with_extension("deb");
    if !deb.exists() {
        bail!(
            "{} is missing: the package the image was built with (cargo xtask image puts it there)",
            deb.display()
        );
    }
    cmd::run(
        Command::new(env!("CARGO"))
            .current_dir(&root)
            .env("BBT_IMAGE", &image)
            .env("BBT_IMAGE_DEB", &deb)
            .args(["test", "-p", "broker-lab", "--test", "image", "--"])
            .args(["--ignored", "--nocapture"]),
    )
}

fn newest_image(dir: &Path) -> Option<PathBuf> {
    let mut images: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "qcow2"))
        .collect();
    images.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
    images.pop()
}
