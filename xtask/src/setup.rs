//! `cargo xtask setup`: installs what a fresh machine lacks, idempotently.
//! Every check is cheap, so a machine that has everything is done in well
//! under a second and prints nothing.

use std::{env, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::cmd;

/// Debian packages the tests, the demo and the benchmarks use.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "network namespaces, veth and SIT devices"),
    ("iputils-ping", "ping in the namespace tests and the demo"),
    ("wireguard-tools", "the wg and wg-quick commands"),
    (
        "nftables",
        "the daemon's own table (what tunnel clients may reach on the broker); wg-quick's firewall rules for a tunnel that routes ::/0",
    ),
    (
        "procps",
        "sysctl, which wg-quick and the namespace tests call",
    ),
    ("wireguard-go", "WireGuard where the kernel has no module"),
    ("ndppd", "the ndppd peer in the NDP benchmark"),
    (
        "radvd",
        "router advertisements in tests/router_advertisements.rs (a SLAAC upstream)",
    ),
    ("fonts-dejavu-core", "the text of the NDP benchmark's plots"),
    (
        "prometheus",
        "promtool, which checks the broker's /metrics in tests/http_api.rs",
    ),
    ("fdisk", "sfdisk: the image's partition table"),
    (
        "qemu-utils",
        "qemu-img: the image's qcow2 and the boot test's overlay",
    ),
    ("qemu-system-x86", "the image boot test's virtual machine"),
    (
        "ovmf",
        "UEFI firmware: the image boot test's second boot (cargo xtask image-test)",
    ),
    ("dosfstools", "mkfs.vfat: the image's EFI system partition"),
    (
        "mtools",
        "mcopy: GRUB into the image's EFI system partition",
    ),
    (
        "xorriso",
        "the boot test's cloud-init seed (an iso9660 'cidata' volume)",
    ),
    (
        "qemu-system-x86",
        "the kernel tests boot Debian 12's and 13's kernels (cargo xtask kernel-test)",
    ),
    ("busybox-static", "the kernel tests' initramfs"),
    ("xz-utils", "the kernel tests unpack the kernels' modules"),
    (
        "binutils",
        "objcopy: the kernel tests' binaries without debug info",
    ),
    (
        "nodejs",
        "the contracts' toolchain (forge, anvil, solc from npm)",
    ),
    (
        "systemd",
        "systemd-analyze security, which rates the broker's unit in tests/packaging.rs",
    ),
    (
        "dpkg-dev",
        "dpkg-shlibdeps, which cargo-deb uses for Depends",
    ),
    ("lintian", "checks the Debian packages (cargo xtask deb)"),
    (
        "mmdebstrap",
        "the Debian 13 chroot of cargo xtask deb-test, the VPS image's tree",
    ),
    ("util-linux", "setpriv and unshare in tests/systemd.rs"),
    (
        "chromium",
        "the headless browser of the manager's tests (tests/manager_browser.rs)",
    ),
];

/// Folders whose npm packages `npm ci` installs, and what for.
const NPM_FOLDERS: &[(&str, &str)] = &[
    ("contracts", "the contracts' toolchain"),
    (
        "broker-userspace/tests/browser",
        "playwright-core, which drives chromium in the manager's tests",
    ),
];

const CARGO_DEB_VERSION: &str = "3.8.0";

const BPF_LINKER_VERSION: &str = "0.13.0";

const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn run() -> anyhow::Result<()> {
    let packages = missing_debian_packages()?;
    let rust_src = !has_nightly_rust_src();
    let llvm_major = nightly_llvm_major();
    let linker = match llvm_major {
        Some(major) => !bpf_linker_ok(major),
        None => true,
    };
    let contracts = !contracts_toolchain_ok();
    let cargo_deb = !cargo_deb_ok();
    let cargo_fuzz = !cargo_fuzz_ok();
    if packages.is_empty() && !rust_src && !linker {
        if contracts {
            install_contracts_toolchain()?;
        }
        if cargo_deb {
            install_cargo_deb()?;
        }
        if cargo_fuzz {
            install_cargo_fuzz()?;
        }
        return Ok(());
    }
    if !cmd::is_root() {
        let mut what: Vec<String> = packages.iter().map(|p| p.to_string()).collect();
        if rust_src {
            what.push("rust-src for the nightly toolchain".into());
        }
        if linker {
            what.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
        }
        bail!(
            "setup must run as root to install: {} (try `sudo -E cargo xtask setup`)",
            what.join(", ")
        );
    }
    if !packages.is_empty() {
        install_debian_packages(&packages)?;
    }
    if rust_src || llvm_major.is_none() {
        install_rust_src()?;
    }
    if linker {
        let major = nightly_llvm_major()
            .context("cannot read the nightly toolchain's LLVM version (`rustc +nightly -vV`)")?;
        install_bpf_linker(major)?;
    }
    if contracts {
        install_contracts_toolchain()?;
    }
    if cargo_deb {
        install_cargo_deb()?;
    }
    if cargo_fuzz {
        install_cargo_fuzz()?;
    }
    eprintln!("setup: done");
    Ok(())
}

fn missing_debian_packages() -> anyhow::Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for (name, _why) in DEBIAN_PACKAGES {
        let status = cmd::stdout_of(Command::new("dpkg-query").args(["-W", "-f=${Status}", name]));
        if !status.is_some_and(|s| s.contains("install ok installed")) {
            missing.push(*name);
        }
    }
    Ok(missing)
}

fn install_debian_packages(packages: &[&str]) -> anyhow::Result<()> {
    for p in packages {
        let why = DEBIAN_PACKAGES
            .iter()
            .find(|(n, _)| n == p)
            .map_or("", |(_, w)| *w);
        eprintln!("setup: installing {p} ({why})");
    }
    cmd::run(
        Command::new("apt-get")
            .args(["update", "-qq"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly_sysroot() -> Option<PathBuf> {
    cmd::stdout_of(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .map(|s| PathBuf::from(s.trim()))
}

fn has_nightly_rust_src() -> bool {
    nightly_sysroot().is_some_and(|s| s.join("lib/rustlib/src/rust/library/core").is_dir())
}

fn install_rust_src() -> anyhow::Result<()> {
    eprintln!("setup: installing the nightly toolchain's rust-src (eBPF builds need build-std)");
    if nightly_sysroot().is_none() {
        cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
    } else {
        cmd::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))
    }
}

/// The LLVM major version of the nightly toolchain, which bpf-linker must be
/// built against (its `llvm-NN` feature).
fn nightly_llvm_major() -> Option<u32> {
    let out = cmd::stdout_of(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let version = out.lines().find_map(|l| l.strip_prefix("LLVM version: "))?;
    version.split('.').next()?.trim().parse().ok()
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

/// Where bpf-linker finds the nightly's libLLVM (its rpath points here).
fn llvm_prefix() -> PathBuf {
    cargo_home().join("bpf-linker-llvm")
}

fn bpf_linker_ok(llvm_major: u32) -> bool {
    let version = cmd::stdout_of(Command::new("bpf-linker").arg("--version"));
    let built_for = std::fs::read_to_string(llvm_prefix().join("llvm-major")).ok();
    version.is_some_and(|v| v.contains(BPF_LINKER_VERSION))
        && built_for.is_some_and(|m| m.trim() == llvm_major.to_string())
}

fn install_bpf_linker(llvm_major: u32) -> anyhow::Result<()> {
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {llvm_major} (about two minutes)"
    );
    let sysroot = nightly_sysroot().context("no nightly toolchain")?;
    let libdir = sysroot.join("lib");
    let so = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", libdir.display()))?;
    let prefix = llvm_prefix();
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for name in ["libLLVM.so", so.as_str()] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(libdir.join(&so), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    cmd::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
            ])
            .arg("--root")
            .arg(cargo_home())
            .env("LLVM_PREFIX", &prefix),
    )?;
    std::fs::write(prefix.join("llvm-major"), llvm_major.to_string())
        .context("recording the LLVM version bpf-linker was built against")?;
    Ok(())
}

fn cargo_deb_ok() -> bool {
    cmd::stdout_of(Command::new("cargo").args(["deb", "--version"]))
        .is_some_and(|v| v.contains(CARGO_DEB_VERSION))
}

/// cargo-deb, which `cargo xtask deb` builds the packages with (a user's
/// cargo install, no root needed).
fn install_cargo_deb() -> anyhow::Result<()> {
    eprintln!("setup: installing cargo-deb {CARGO_DEB_VERSION} (about two minutes)");
    cmd::run(Command::new("cargo").args([
        "install",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
        "--locked",
    ]))
}

fn cargo_fuzz_ok() -> bool {
    cmd::stdout_of(Command::new("cargo").args(["fuzz", "--version"]))
        .is_some_and(|v| v.contains(CARGO_FUZZ_VERSION))
}

/// cargo-fuzz, which `cargo xtask fuzz` (and so `cargo xtask test`) builds
/// and runs the fuzz targets with (a user's cargo install, no root needed).
fn install_cargo_fuzz() -> anyhow::Result<()> {
    eprintln!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute)");
    cmd::run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
}

/// The contracts' toolchain (forge, anvil, cast, solc, OpenZeppelin) lives in
/// contracts/node_modules, as contracts/package-lock.json pins it. A copy of
/// the lockfile that was installed tells whether it is current.
/// Every npm folder installed from its current lockfile.
fn contracts_toolchain_ok() -> bool {
    NPM_FOLDERS.iter().all(|(dir, _)| npm_folder_ok(dir))
}

fn npm_folder_ok(dir: &str) -> bool {
    let dir = cmd::workspace_root().join(dir);
    let lock = std::fs::read(dir.join("package-lock.json")).ok();
    let installed = std::fs::read(dir.join("node_modules/.blockhost-installed-lock")).ok();
    lock.is_some() && lock == installed
}

/// `npm ci` in each npm folder not installed from its current lockfile.
fn install_contracts_toolchain() -> anyhow::Result<()> {
    for (folder, what) in NPM_FOLDERS {
        if npm_folder_ok(folder) {
            continue;
        }
        let dir = cmd::workspace_root().join(folder);
        eprintln!("setup: installing {what} (npm ci in {folder}/)");
        cmd::run(Command::new("npm").current_dir(&dir).args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ]))?;
        std::fs::copy(
            dir.join("package-lock.json"),
            dir.join("node_modules/.blockhost-installed-lock"),
        )
        .context("recording the installed lockfile")?;
    }
    Ok(())
}
