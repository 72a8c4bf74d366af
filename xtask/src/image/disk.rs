//! The image's disk, made from the tree without a loop device or a mount:
//! nothing writes to a file system after it is made, so two builds of the
//! same tree give the same disk, bit for bit.
//!
//! GPT, as Debian's own cloud images: a BIOS boot partition holding GRUB's
//! core image (BIOS), an EFI system partition holding GRUB for UEFI at the
//! removable-media path (no firmware boot entry needed), and the root file
//! system last, so that cloud-init's growpart can grow it to the provider's
//! disk. Both GRUBs find the root by its label and read the same
//! /boot/grub/grub.cfg.

use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    path::Path,
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use crate::cmd;

const SECTOR: u64 = 512;
/// (first sector, sectors) of the BIOS boot partition: 1 MiB.
const BIOS_BOOT: (u64, u64) = (2048, 2048);
/// (first sector, sectors) of the EFI system partition: 64 MiB.
const ESP: (u64, u64) = (4096, 131072);
const ROOT_START: u64 = ESP.0 + ESP.1;

/// Identities are fixed so that two builds give the same disk, and the
/// boot loaders and fstab name the root by label, never by build device.
pub const ROOT_LABEL: &str = "blockhost-root";
const ROOT_UUID: &str = "6c1d4a52-8d1e-4e43-9b6a-b10c0b40c0de";
const ROOT_HASH_SEED: &str = "3f2c7a10-2f5e-4c1b-8a4d-b10c0b40c0de";
const DISK_GUID: &str = "b10cb40c-1e2f-4a5b-9c6d-b10c0b40c0de";
const ROOT_PART_UUID: &str = "b10cb40c-0001-4a5b-9c6d-b10c0b40c0de";
const BIOS_PART_UUID: &str = "b10cb40c-000e-4a5b-9c6d-b10c0b40c0de";
const ESP_PART_UUID: &str = "b10cb40c-000f-4a5b-9c6d-b10c0b40c0de";
const ESP_VOLUME_ID: &str = "b10cb40c";

/// GRUB's embedded first step, for both firmwares: find the root by its
/// label; GRUB then loads `normal` and grub.cfg from the prefix.
const GRUB_EARLY: &str = "search.fs_label blockhost-root root\nset prefix=($root)/boot/grub\n";

/// Makes `raw` (`size_gib`) from `rootfs`, which it first makes bootable.
pub fn make(
    raw: &Path,
    rootfs: &Path,
    work: &Path,
    size_gib: u64,
    epoch: &str,
) -> anyhow::Result<()> {
    let boot = grub_files(rootfs, work)?;

    let f = fs::File::create(raw)?;
    f.set_len(size_gib << 30)?;
    drop(f);
    partition(raw)?;
    let root_sectors = root_sectors(raw)?;

    root_fs(raw, rootfs, root_sectors, epoch)?;
    esp(raw, &boot.efi, work, epoch)?;
    bios_boot(raw, &boot.boot_img, &boot.core_img)
}

fn partition(raw: &Path) -> anyhow::Result<()> {
    // The root is listed first (partition 1) but lies last: it takes the
    // rest of the disk, and the two small ones fill the gap before it.
    let script = format!(
        "label: gpt\nlabel-id: {DISK_GUID}\n\
         start={ROOT_START}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid={ROOT_PART_UUID}, name=root\n\
         start={}, size={}, type=21686148-6E49-6F70-744E-656564454649, uuid={BIOS_PART_UUID}, name=bios-boot\n\
         start={}, size={}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid={ESP_PART_UUID}, name=esp\n",
        BIOS_BOOT.0, BIOS_BOOT.1, ESP.0, ESP.1
    );
    cmd::run_with_stdin(Command::new("sfdisk").arg("--quiet").arg(raw), &script)
}

/// The root partition's size as sfdisk laid it out.
fn root_sectors(raw: &Path) -> anyhow::Result<u64> {
    let json =
        cmd::stdout_of(Command::new("sfdisk").arg("--json").arg(raw)).context("sfdisk --json")?;
    let table: serde_json::Value = serde_json::from_str(&json).context("sfdisk --json")?;
    let root = &table["partitiontable"]["partitions"][0];
    ensure!(
        root["start"].as_u64() == Some(ROOT_START),
        "sfdisk put the root elsewhere: {root}"
    );
    root["size"]
        .as_u64()
        .with_context(|| format!("sfdisk: no size for the root: {root}"))
}

struct Boot {
    /// GRUB's MBR sector (i386-pc boot.img).
    boot_img: Vec<u8>,
    /// GRUB's BIOS core image, for the BIOS boot partition.
    core_img: Vec<u8>,
    /// GRUB for UEFI, for the EFI system partition.
    efi: std::path::PathBuf,
}

/// Puts GRUB's modules and grub.cfg into the tree (as grub-install and
/// update-grub would, which need the finished disk mounted) and makes the
/// two core images with the tree's own grub-mkimage.
fn grub_files(rootfs: &Path, work: &Path) -> anyhow::Result<Boot> {
    let grub = rootfs.join("boot/grub");
    for platform in ["i386-pc", "x86_64-efi"] {
        let from = rootfs.join("usr/lib/grub").join(platform);
        let to = grub.join(platform);
        fs::create_dir_all(&to)?;
        for entry in fs::read_dir(&from).with_context(|| format!("{}", from.display()))? {
            let path = entry?.path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if matches!(ext, "mod" | "lst" | "img") {
                fs::copy(&path, to.join(path.file_name().unwrap()))?;
            }
        }
    }
    fs::write(grub.join("grub.cfg"), grub_cfg(&kernel_version(rootfs)?))?;

    let early = rootfs.join("tmp/grub-early.cfg");
    fs::write(&early, GRUB_EARLY)?;
    let mkimage = |platform: &str, out: &str, modules: &[&str]| {
        cmd::run(
            Command::new("chroot")
                .arg(rootfs)
                .args(["grub-mkimage", "-O", platform, "-o", out])
                .args(["-c", "/tmp/grub-early.cfg", "-p", "/boot/grub"])
                .args(modules),
        )
        .with_context(|| format!("grub-mkimage for {platform}"))
    };
    let fs_modules = ["part_gpt", "ext2", "search_label"];
    mkimage(
        "i386-pc",
        "/boot/grub/i386-pc/core.img",
        &[&["biosdisk"][..], &fs_modules].concat(),
    )?;
    mkimage("x86_64-efi", "/boot/grub/x86_64-efi/core.efi", &fs_modules)?;
    fs::remove_file(&early)?;

    let efi = work.join("BOOTX64.EFI");
    fs::copy(grub.join("x86_64-efi/core.efi"), &efi)?;
    Ok(Boot {
        boot_img: fs::read(grub.join("i386-pc/boot.img"))?,
        core_img: fs::read(grub.join("i386-pc/core.img"))?,
        efi,
    })
}

fn kernel_version(rootfs: &Path) -> anyhow::Result<String> {
    let mut versions: Vec<String> = fs::read_dir(rootfs.join("boot"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix("vmlinuz-").map(str::to_string))
        .collect();
    match versions.len() {
        1 => Ok(versions.remove(0)),
        n => bail!("the tree holds {n} kernels ({versions:?}); the image boots exactly one"),
    }
}

/// grub.cfg as update-grub writes it from image/files/etc/default/grub.d
/// (serial and screen, no menu wait, the root by label). The first kernel
/// upgrade on the VPS runs update-grub, which writes its own in its place.
fn grub_cfg(kernel: &str) -> String {
    format!(
        "# Written by cargo xtask image (xtask/src/image/disk.rs); update-grub\n\
         # replaces it at the first kernel upgrade.\n\
         serial --speed=115200\n\
         terminal_input console serial\n\
         terminal_output console serial\n\
         set default=0\n\
         set timeout_style=hidden\n\
         set timeout=1\n\
         insmod part_gpt\n\
         insmod ext2\n\
         search --no-floppy --label {ROOT_LABEL} --set=root\n\
         menuentry 'Debian GNU/Linux (blockhost-broker)' {{\n\
         \tinsmod gzio\n\
         \techo 'Loading Linux {kernel} ...'\n\
         \tlinux /boot/vmlinuz-{kernel} root=LABEL={ROOT_LABEL} ro console=tty0 console=ttyS0,115200n8\n\
         \techo 'Loading initial ramdisk ...'\n\
         \tinitrd /boot/initrd.img-{kernel}\n\
         }}\n"
    )
}

/// ext4 from the tree by the tree's own mke2fs (Debian 13's e2fsprogs, which
/// clamps inode times to SOURCE_DATE_EPOCH; the build host's may not),
/// written straight into the partition.
fn root_fs(raw: &Path, rootfs: &Path, sectors: u64, epoch: &str) -> anyhow::Result<()> {
    // It clamps ctime and mtime but copies atime, which the build's reads
    // of the tree set to the build's time.
    cmd::run(
        Command::new("find")
            .arg(rootfs)
            .args(["-xdev", "-exec", "touch", "-h", "-a", "-d"])
            .arg(format!("@{epoch}"))
            .args(["{}", "+"]),
    )
    .context("setting the tree's access times")?;
    let loader = rootfs.join("usr/lib64/ld-linux-x86-64.so.2");
    ensure!(
        loader.exists(),
        "{}: no dynamic loader in the tree",
        loader.display()
    );
    cmd::run(
        Command::new(&loader)
            .arg("--library-path")
            .arg(rootfs.join("usr/lib/x86_64-linux-gnu"))
            .arg(rootfs.join("usr/sbin/mke2fs"))
            .env("MKE2FS_CONFIG", rootfs.join("etc/mke2fs.conf"))
            .env("SOURCE_DATE_EPOCH", epoch)
            .env("E2FSPROGS_FAKE_TIME", epoch)
            .args(["-q", "-F", "-t", "ext4", "-L", ROOT_LABEL, "-U", ROOT_UUID])
            .arg("-E")
            .arg(format!(
                "hash_seed={ROOT_HASH_SEED},offset={},nodiscard",
                ROOT_START * SECTOR
            ))
            .arg("-d")
            .arg(rootfs)
            .arg(raw)
            .arg(format!("{}k", sectors * SECTOR / 1024)),
    )
    .context("mke2fs (the tree's own)")
}

/// FAT32 holding \EFI\BOOT\BOOTX64.EFI, with a fixed volume id and the
/// epoch's times.
fn esp(raw: &Path, efi: &Path, work: &Path, epoch: &str) -> anyhow::Result<()> {
    // (Its output is only a warning that the partition is smaller than
    // the file: shown on failure.)
    let out = Command::new("mkfs.vfat")
        .env("SOURCE_DATE_EPOCH", epoch)
        .args(["-F", "32", "-s", "1", "--invariant", "-n", "EFI"])
        .args(["-i", ESP_VOLUME_ID])
        .arg(format!("--offset={}", ESP.0))
        .arg(raw)
        .arg((ESP.1 * SECTOR / 1024).to_string())
        .output()
        .context("mkfs.vfat (dosfstools)")?;
    ensure!(
        out.status.success(),
        "mkfs.vfat: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = work.join("esp");
    let boot = tree.join("EFI/BOOT");
    fs::create_dir_all(&boot)?;
    fs::copy(efi, boot.join("BOOTX64.EFI"))?;
    for p in [boot.join("BOOTX64.EFI"), boot.clone(), tree.join("EFI")] {
        cmd::run(
            Command::new("touch")
                .arg("-d")
                .arg(format!("@{epoch}"))
                .arg(&p),
        )?;
    }
    cmd::run(
        Command::new("mcopy")
            .env("SOURCE_DATE_EPOCH", epoch)
            .arg("-i")
            .arg(format!("{}@@{}", raw.display(), ESP.0 * SECTOR))
            .args(["-s", "-p", "-m"])
            .arg(tree.join("EFI"))
            .arg("::/"),
    )
    .context("mcopy into the EFI system partition")?;
    fs::remove_dir_all(&tree)?;
    Ok(())
}

/// What grub-bios-setup does for a GPT disk with a BIOS boot partition:
/// the core image into that partition, and GRUB's boot sector into the
/// MBR, told where the core image lies. The offsets are GRUB's
/// (include/grub/i386/pc/boot.h).
fn bios_boot(raw: &Path, boot_img: &[u8], core_img: &[u8]) -> anyhow::Result<()> {
    const BPB: std::ops::Range<usize> = 0x03..0x5a;
    const KERNEL_SECTOR: usize = 0x5c;
    const DRIVE_CHECK: usize = 0x66;
    const NT_MAGIC: usize = 0x1b8;
    const BLOCKLIST: usize = SECTOR as usize - 12;

    ensure!(
        boot_img.len() == SECTOR as usize,
        "boot.img is {} bytes",
        boot_img.len()
    );
    let core_sectors = (core_img.len() as u64).div_ceil(SECTOR);
    ensure!(
        core_sectors <= BIOS_BOOT.1,
        "GRUB's core image ({} bytes) does not fit the BIOS boot partition",
        core_img.len()
    );
    let mut core = core_img.to_vec();
    core.resize((core_sectors * SECTOR) as usize, 0);
    // diskboot.img's one block list: the core's other sectors, loaded at
    // 0x820:0 (GRUB_BOOT_I386_PC_KERNEL_SEG + one sector).
    core[BLOCKLIST..BLOCKLIST + 8].copy_from_slice(&(BIOS_BOOT.0 + 1).to_le_bytes());
    core[BLOCKLIST + 8..BLOCKLIST + 10].copy_from_slice(&((core_sectors - 1) as u16).to_le_bytes());
    core[BLOCKLIST + 10..BLOCKLIST + 12].copy_from_slice(&0x820u16.to_le_bytes());

    let mut disk = fs::OpenOptions::new().read(true).write(true).open(raw)?;
    let mut mbr = [0u8; SECTOR as usize];
    disk.read_exact(&mut mbr)?;
    let mut sector = boot_img.to_vec();
    // Keep the disk's BPB area and its (protective) partition table.
    sector[BPB].copy_from_slice(&mbr[BPB]);
    sector[NT_MAGIC..].copy_from_slice(&mbr[NT_MAGIC..]);
    sector[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&BIOS_BOOT.0.to_le_bytes());
    // A hard disk: trust no BIOS's boot drive number below 0x80 (GRUB
    // replaces the jump over that check with two nops).
    sector[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);

    disk.seek(SeekFrom::Start(BIOS_BOOT.0 * SECTOR))?;
    disk.write_all(&core)?;
    disk.seek(SeekFrom::Start(0))?;
    disk.write_all(&sector)?;
    disk.sync_all()?;
    Ok(())
}
