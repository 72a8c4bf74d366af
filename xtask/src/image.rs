//! `cargo xtask image`: the broker VPS image (image/README.md), a qcow2 of
//! Debian 13 with the blockhost-broker package, built with mmdebstrap from
//! the Debian registry only, bootable on BIOS and UEFI (the disk: the
//! `disk` module beside this file).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::Parser;

use crate::cmd;

mod disk;

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
    /// Build the image a second time, from a fresh tree, and fail unless
    /// the two are the same bit for bit (image/README.md, "Reproducible").
    #[arg(long, conflicts_with = "from_kept_tree")]
    pub check_reproducible: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            deb: None,
            size_gib: 2,
            keep_tree: false,
            from_kept_tree: false,
            check_reproducible: false,
        }
    }
}

/// What the image holds beyond mmdebstrap's `apt` variant (essential + apt).
/// Each is here for a reason: see image/README.md, "What is inside".
pub const PACKAGES: &[&str] = &[
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "grub-pc",
    "grub-efi-amd64-bin",
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

pub fn mirror() -> String {
    std::env::var("BLOCKHOST_IMAGE_MIRROR").unwrap_or_else(|_| "http://deb.debian.org".into())
}

/// Builds the image; its path.
pub fn run(args: Args) -> anyhow::Result<PathBuf> {
    if !cmd::is_root() {
        bail!("`cargo xtask image` needs root (mmdebstrap's root mode, chroot)");
    }
    let root = cmd::workspace_root();
    let deb = match args.deb.clone() {
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
    let epoch = source_date_epoch(&root)?;
    let qcow2 = out_dir.join(format!("blockhost-broker-{version}.qcow2"));
    build(&root, &deb, &out_dir.join("build"), &qcow2, &args, &epoch)?;
    if args.check_reproducible {
        eprintln!("image: a second build, from a fresh tree, to compare with the first");
        let work = out_dir.join("build-check");
        let again = work.with_extension("qcow2");
        let fresh = Args {
            deb: None,
            keep_tree: false,
            ..args
        };
        build(&root, &deb, &work, &again, &fresh, &epoch)?;
        let same = Command::new("cmp")
            .arg("--silent")
            .arg(&qcow2)
            .arg(&again)
            .status()
            .context("cmp")?;
        if !same.success() {
            bail!(
                "two builds of one commit differ: {} and {} (left for diffoscope)",
                qcow2.display(),
                again.display()
            );
        }
        fs::remove_file(&again)?;
        eprintln!("image: the second build is the same, bit for bit");
    }
    // The package beside the image: the boot test upgrades it to a newer
    // build of itself.
    let beside = qcow2.with_extension("deb");
    // (Not onto itself: `--deb` may name the copy a previous build left.)
    if fs::canonicalize(&beside).ok().as_ref() != Some(&deb) {
        fs::copy(&deb, &beside).context("copying the package beside the image")?;
    }
    let size = fs::metadata(&qcow2)?.len();
    println!(
        "{} ({:.0} MiB; disk {} GiB)",
        qcow2.display(),
        size as f64 / (1024.0 * 1024.0),
        args.size_gib
    );
    Ok(qcow2)
}

/// The tree (in `work`), then the disk, then `qcow2`.
fn build(
    root: &Path,
    deb: &Path,
    work: &Path,
    qcow2: &Path,
    args: &Args,
    epoch: &str,
) -> anyhow::Result<()> {
    let rootfs = work.join("rootfs");
    if args.from_kept_tree {
        if !rootfs.is_dir() {
            bail!("no kept tree at {}", rootfs.display());
        }
        let _ = fs::remove_file(work.join("disk.raw"));
    } else {
        if work.exists() {
            fs::remove_dir_all(work).context("removing the previous build tree")?;
        }
        fs::create_dir_all(work)?;
        tree(root, deb, &rootfs, epoch)?;
    }

    eprintln!("image: disk (GPT: ext4 root, GRUB for BIOS and UEFI)");
    let raw = work.join("disk.raw");
    disk::make(&raw, &rootfs, work, args.size_gib, epoch)?;
    if !args.keep_tree {
        fs::remove_dir_all(&rootfs).context("removing the tree")?;
    }
    cmd::run(
        Command::new("qemu-img")
            .args(["convert", "-c", "-O", "qcow2"])
            .arg(&raw)
            .arg(qcow2),
    )?;
    fs::remove_file(&raw)?;
    if !args.keep_tree {
        let _ = fs::remove_dir(work);
    }
    Ok(())
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
