//! `cargo xtask kernel-test`: the responder's tests on the kernels operators
//! run, not only on this machine's. For Debian 12 (6.1) and Debian 13 (6.12)
//! it fetches the cloud kernel from the Debian archive (cached under
//! target/kernel-test/), packs an initramfs holding busybox, the test
//! binaries with their libraries, the few host tools the tests call and the
//! kernel modules they need, boots it under qemu (TCG: nested KVM is
//! unreliable on the machines this runs on) and reads the verdict from the
//! serial console. qemu is killed whatever happens, and a VM that does not
//! finish within the timeout fails the run.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::cmd;

/// A kernel to boot: the Debian release whose cloud kernel it is.
struct Kernel {
    suite: &'static str,
    release: &'static str,
}

const KERNELS: &[Kernel] = &[
    Kernel {
        suite: "bookworm",
        release: "Debian 12",
    },
    Kernel {
        suite: "trixie",
        release: "Debian 13",
    },
];

/// The integration tests run inside each VM: the program's own tests
/// (BPF_PROG_TEST_RUN) and the responder between namespaces (real XDP and TC
/// on veth, tun and sit devices, through the `blockhost-broker` binary).
/// With the arguments each runs with: the namespace tests time their
/// traffic (a restart must happen while solicitations flow), and under
/// emulation two of them at once starve each other's senders; their SIT test
/// is ignored where they usually run (this machine kind's kernel has no
/// SIT), but Debian's kernels have it.
const TESTS: &[(&str, &str)] = &[
    ("ndp_program", "--test-threads=2"),
    ("ndp_netns", "--test-threads=1 --include-ignored"),
];

/// How many times slower than the host the tests may find the emulated VM
/// (BBT_TIME_SCALE, broker-lab's `time_scale`): loading the program takes
/// seconds under TCG, more when the host is busy.
const TIME_SCALE: u32 = 5;

/// Host tools the tests call (broker-lab runs `ip`, `sysctl` and `ping`,
/// ndp_netns `tc`). Busybox has applets of some of these names, but not
/// with the options used.
const HOST_TOOLS: &[&str] = &["ip", "tc", "sysctl", "ping"];

/// Modules the tests need that Debian's cloud kernels build as modules
/// (their dependencies are found from the modules themselves). The kernel
/// cannot load them by itself: the initramfs has no modprobe.
const MODULES: &[&str] = &["veth", "tun", "sit", "bridge", "sch_ingress", "cls_bpf"];

/// The line the VM's init prints last; the host reads the exit code from it.
const RESULT_MARKER: &str = "BBT-KERNEL-TEST-RESULT rc=";

const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const DEFAULT_SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";

/// How long a VM may take, boot to power-off, before it counts as hung.
/// About five minutes per kernel on an idle host; a busy one takes longer.
const DEFAULT_TIMEOUT_SECS: u64 = 1200;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Only this Debian suite's kernel (bookworm or trixie).
    #[arg(long)]
    pub suite: Option<String>,
    /// Give up on a VM (and fail) after this many seconds.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_SECS)]
    pub timeout: u64,
    /// Only run tests whose name contains this string.
    pub filter: Option<String>,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            suite: None,
            timeout: DEFAULT_TIMEOUT_SECS,
            filter: None,
        }
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!(
            "the kernel tests fetch kernels with apt-get and pack their modules: run them as root (`sudo -E cargo xtask kernel-test`)"
        );
    }
    let kernels: Vec<&Kernel> = KERNELS
        .iter()
        .filter(|k| args.suite.as_deref().is_none_or(|s| s == k.suite))
        .collect();
    if kernels.is_empty() {
        bail!(
            "unknown suite {:?}: the kernel tests know {}",
            args.suite.as_deref().unwrap_or_default(),
            KERNELS
                .iter()
                .map(|k| k.suite)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let root = cmd::workspace_root();
    let work = target_dir(&root).join("kernel-test");
    eprintln!("kernel-test: building the test binaries");
    let binaries = build_tests(&root)?;
    let stripped = strip_binaries(&binaries, &work.join("bin"))?;
    let mut failures = Vec::new();
    for kernel in kernels {
        let dir = work.join(kernel.suite);
        let fetched = fetch_kernel(kernel, &dir)?;
        let initrd = dir.join("initrd.cpio");
        build_initramfs(&stripped, &fetched, args.filter.as_deref(), &initrd)?;
        eprintln!(
            "kernel-test: booting {} ({}) under qemu",
            fetched.version, kernel.release
        );
        let started = Instant::now();
        let verdict = boot(
            &fetched.vmlinuz,
            &initrd,
            &dir.join("console.log"),
            Duration::from_secs(args.timeout),
        );
        let _ = fs::remove_file(&initrd);
        let took = started.elapsed().as_secs();
        match verdict {
            Ok(0) => eprintln!(
                "kernel-test: {} ({}): all tests passed in {took} s",
                fetched.version, kernel.release
            ),
            Ok(rc) => failures.push(format!(
                "{} ({}): tests failed (exit {rc}), see {}",
                fetched.version,
                kernel.release,
                dir.join("console.log").display()
            )),
            Err(e) => failures.push(format!(
                "{} ({}): {e:#}, see {}",
                fetched.version,
                kernel.release,
                dir.join("console.log").display()
            )),
        }
    }
    if !failures.is_empty() {
        bail!("kernel tests failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// The test executables and the `blockhost-broker` binary they run, by name.
struct Binaries {
    tests: Vec<(String, PathBuf)>,
    broker: PathBuf,
}

fn build_tests(root: &Path) -> anyhow::Result<Binaries> {
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(root)
        .args(["test", "--quiet", "-p", "broker-userspace", "--no-run"])
        .args(["--message-format", "json-render-diagnostics"]);
    for (test, _) in TESTS {
        cargo.args(["--test", test]);
    }
    let out = cargo
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo")?;
    ensure!(
        out.status.success(),
        "building the tests failed ({})",
        out.status
    );
    let mut tests = Vec::new();
    let mut broker = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(exe)) = (
            msg.pointer("/target/name").and_then(|v| v.as_str()),
            msg.get("executable").and_then(|v| v.as_str()),
        ) else {
            continue;
        };
        let test = msg.pointer("/profile/test").and_then(|v| v.as_bool()) == Some(true);
        if test && TESTS.iter().any(|(t, _)| *t == name) {
            tests.push((name.to_string(), PathBuf::from(exe)));
        } else if !test && name == "blockhost-broker" {
            broker = Some(PathBuf::from(exe));
        }
    }
    ensure!(
        tests.len() == TESTS.len(),
        "cargo named {} of the {} test executables",
        tests.len(),
        TESTS.len()
    );
    let broker = broker.context("cargo built no blockhost-broker binary for the tests")?;
    Ok(Binaries { tests, broker })
}

/// Debug builds are hundreds of megabytes, mostly debug info; the VM keeps
/// its initramfs in memory, so it gets copies without it.
fn strip_binaries(bins: &Binaries, dir: &Path) -> anyhow::Result<Binaries> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let strip = |from: &Path, name: &str| -> anyhow::Result<PathBuf> {
        let to = dir.join(name);
        cmd::run(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(from)
                .arg(&to),
        )?;
        Ok(to)
    };
    let mut tests = Vec::new();
    for (name, path) in &bins.tests {
        tests.push((name.clone(), strip(path, name)?));
    }
    Ok(Binaries {
        tests,
        broker: strip(&bins.broker, "blockhost-broker")?,
    })
}

/// A cloud kernel unpacked: its image and the modules the tests need, in
/// load order (dependencies first), decompressed.
struct Fetched {
    version: String,
    vmlinuz: PathBuf,
    modules: Vec<PathBuf>,
}

/// Fetches `kernel`'s package once: later runs use what is under `dir`
/// without asking the archive (run with `--refresh`… by removing `dir`).
fn fetch_kernel(kernel: &Kernel, dir: &Path) -> anyhow::Result<Fetched> {
    let unpacked = dir.join("kernel");
    let version_file = unpacked.join("version");
    let wanted = MODULES.join(",");
    if let Ok(version) = fs::read_to_string(&version_file)
        && fs::read_to_string(unpacked.join("modules/wanted")).is_ok_and(|w| w == wanted)
    {
        return read_fetched(&unpacked, version.trim());
    }
    eprintln!(
        "kernel-test: fetching {}'s cloud kernel ({}) from the Debian archive",
        kernel.release, kernel.suite
    );
    let apt = dir.join("apt");
    let _ = fs::remove_dir_all(&apt);
    let _ = fs::remove_dir_all(&unpacked);
    for sub in ["lists/partial", "cache/archives/partial", "download"] {
        fs::create_dir_all(apt.join(sub))
            .with_context(|| format!("creating {}", apt.join(sub).display()))?;
    }
    // Kernel updates reach stable through the security archive, so the
    // newest cloud kernel is found with both.
    let mirror = std::env::var("BBT_DEBIAN_MIRROR").unwrap_or_else(|_| DEFAULT_MIRROR.into());
    let security = std::env::var("BBT_DEBIAN_SECURITY_MIRROR")
        .unwrap_or_else(|_| DEFAULT_SECURITY_MIRROR.into());
    let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
    let sources = apt.join("sources.list");
    fs::write(
        &sources,
        format!(
            "deb [signed-by={keyring}] {mirror} {s} main\n\
             deb [signed-by={keyring}] {security} {s}-security main\n",
            s = kernel.suite
        ),
    )
    .context("writing the kernel's apt sources")?;
    // An apt of its own: the host's sources, lists and cache stay untouched.
    let apt_options = |c: &mut Command| {
        c.arg("-q")
            .arg(format!("-oDir::Etc::SourceList={}", sources.display()))
            .arg("-oDir::Etc::SourceParts=/dev/null")
            .arg(format!(
                "-oDir::State::Lists={}",
                apt.join("lists").display()
            ))
            .arg(format!("-oDir::Cache={}", apt.join("cache").display()))
            .arg("-oAPT::Architecture=amd64")
            .arg("-oAPT::Sandbox::User=root");
    };
    let mut update = Command::new("apt-get");
    apt_options(&mut update);
    cmd::run(update.arg("update").stdout(Stdio::null()))?;
    let mut depends = Command::new("apt-cache");
    apt_options(&mut depends);
    let out = cmd::stdout_of(depends.args(["depends", "linux-image-cloud-amd64"]))
        .context("apt-cache depends linux-image-cloud-amd64 failed")?;
    let package = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .with_context(|| {
            format!(
                "linux-image-cloud-amd64 in {} depends on no kernel:\n{out}",
                kernel.suite
            )
        })?
        .to_string();
    let download = apt.join("download");
    let mut get = Command::new("apt-get");
    apt_options(&mut get);
    cmd::run(
        get.current_dir(&download)
            .args(["download", &package])
            .stdout(Stdio::null()),
    )?;
    let deb = fs::read_dir(&download)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    let extracted = apt.join("extracted");
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extracted))?;
    let version = package
        .strip_prefix("linux-image-")
        .expect("checked above")
        .to_string();
    let staging = dir.join("kernel.partial");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(staging.join("modules"))?;
    fs::copy(
        extracted.join(format!("boot/vmlinuz-{version}")),
        staging.join("vmlinuz"),
    )
    .with_context(|| format!("{package} holds no boot/vmlinuz-{version}"))?;
    // trixie's packages install into /usr, bookworm's into /lib.
    let tree = ["usr/lib", "lib"]
        .iter()
        .map(|dir| extracted.join(format!("{dir}/modules/{version}/kernel")))
        .find(|p| p.is_dir())
        .with_context(|| format!("{package} holds no modules/{version}"))?;
    let order = unpack_modules(&tree, &staging.join("modules"))?;
    fs::write(staging.join("modules/order"), order.join("\n"))?;
    // The cache holds what this list asked for; a new list fetches again.
    fs::write(staging.join("modules/wanted"), &wanted)?;
    fs::write(staging.join("version"), &version)?;
    fs::rename(&staging, &unpacked)?;
    // Only the image and a few modules are kept; the package and its tree
    // are a few hundred megabytes.
    fs::remove_dir_all(&apt).with_context(|| format!("removing {}", apt.display()))?;
    read_fetched(&unpacked, &version)
}

fn read_fetched(unpacked: &Path, version: &str) -> anyhow::Result<Fetched> {
    let order = fs::read_to_string(unpacked.join("modules/order"))
        .with_context(|| format!("reading {}", unpacked.join("modules/order").display()))?;
    let modules = order
        .lines()
        .filter(|l| !l.is_empty())
        .map(|m| unpacked.join("modules").join(format!("{m}.ko")))
        .collect();
    Ok(Fetched {
        version: version.to_string(),
        vmlinuz: unpacked.join("vmlinuz"),
        modules,
    })
}

/// Decompresses [`MODULES`] and what they depend on into `out`; returns
/// their names in load order.
fn unpack_modules(tree: &Path, out: &Path) -> anyhow::Result<Vec<String>> {
    let mut files = BTreeMap::new();
    index_modules(tree, &mut files)?;
    let mut order = Vec::new();
    for name in MODULES {
        add_module(name, &files, out, &mut order, 0)?;
    }
    Ok(order)
}

fn index_modules(dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, files)?;
        } else if let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| {
            // bookworm ships modules plain, trixie xz-compressed.
            n.strip_suffix(".ko.xz").or_else(|| n.strip_suffix(".ko"))
        }) {
            files.insert(name.replace('-', "_"), path.clone());
        }
    }
    Ok(())
}

fn add_module(
    name: &str,
    files: &BTreeMap<String, PathBuf>,
    out: &Path,
    order: &mut Vec<String>,
    depth: usize,
) -> anyhow::Result<()> {
    ensure!(depth < 16, "module dependencies loop at {name}");
    let name = name.replace('-', "_");
    if order.contains(&name) {
        return Ok(());
    }
    let Some(path) = files.get(&name) else {
        // Built in, or the kernel lacks it: the first is fine, the second
        // shows as a failing test inside the VM.
        eprintln!("kernel-test: {name} is no module of this kernel (built in, or missing)");
        return Ok(());
    };
    let out_file = out.join(format!("{name}.ko"));
    let data = if path.extension().is_some_and(|e| e == "xz") {
        let out = Command::new("xz")
            .arg("-dc")
            .arg(path)
            .output()
            .with_context(|| format!("decompressing {}", path.display()))?;
        ensure!(
            out.status.success(),
            "xz -dc {} failed ({})",
            path.display(),
            out.status
        );
        out.stdout
    } else {
        fs::read(path).with_context(|| format!("reading {}", path.display()))?
    };
    for dep in module_depends(&data) {
        add_module(&dep, files, out, order, depth + 1)?;
    }
    fs::write(&out_file, &data)?;
    order.push(name);
    Ok(())
}

/// A module's dependencies, from the `depends=` entry of its `.modinfo`
/// section (NUL-separated `key=value` strings), as modinfo reads them.
fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The VM's /init: mounts what the tests expect of a booted system, loads
/// the modules, runs each test binary and prints the result marker, then
/// powers off (qemu exits with `-no-reboot`).
fn init_script(tests: &[String], filter: Option<&str>, modules: &[String]) -> String {
    let filter = filter.map(shell_quote).unwrap_or_default();
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/bin HOME=/tmp RUST_BACKTRACE=1 NO_COLOR=1 BBT_TIME_SCALE=@SCALE@\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         mount -t tmpfs tmp /tmp\n\
         mount -t tmpfs run /run\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         ip link set lo up\n\
         echo \"BBT-KERNEL: $(uname -r)\"\n",
    );
    for m in modules {
        s.push_str(&format!(
            "insmod /modules/{m}.ko || echo 'BBT-KERNEL: insmod {m} failed'\n"
        ));
    }
    let mut s = s.replace("@SCALE@", &TIME_SCALE.to_string());
    s.push_str("rc=0\n");
    for (t, args) in TESTS {
        if !tests.iter().any(|name| name == t) {
            continue;
        }
        s.push_str(&format!(
            "echo 'BBT-KERNEL: running {t}'\n\
             /t/deps/{t} {args} {filter} || rc=1\n"
        ));
    }
    s.push_str(&format!("echo \"{RESULT_MARKER}$rc\"\npoweroff -f\n"));
    s
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn build_initramfs(
    bins: &Binaries,
    kernel: &Fetched,
    filter: Option<&str>,
    out: &Path,
) -> anyhow::Result<()> {
    let mut cpio = Cpio::create(out)?;
    for dir in [
        "bin", "dev", "proc", "sys", "tmp", "run", "t", "t/deps", "modules", "etc", "var",
    ] {
        cpio.dir(dir)?;
    }
    cpio.symlink("var/run", "/run")?;
    cpio.symlink("sbin", "bin")?;
    cpio.file(
        "bin/busybox",
        &fs::read("/bin/busybox").context("reading /bin/busybox (busybox-static)")?,
        0o755,
    )?;
    let mut libs = std::collections::BTreeSet::new();
    for tool in HOST_TOOLS {
        let path = which(tool)?;
        cpio.file(&format!("bin/{tool}"), &fs::read(&path)?, 0o755)?;
        libs.extend(shared_libraries(&path)?);
    }
    let mut names = Vec::new();
    for (name, path) in &bins.tests {
        cpio.file(&format!("t/deps/{name}"), &fs::read(path)?, 0o755)?;
        libs.extend(shared_libraries(path)?);
        names.push(name.clone());
    }
    // broker-lab finds the binary next to the test's deps/ directory.
    cpio.file("t/blockhost-broker", &fs::read(&bins.broker)?, 0o755)?;
    libs.extend(shared_libraries(&bins.broker)?);
    let mut made = std::collections::BTreeSet::new();
    for lib in &libs {
        let rel = lib.strip_prefix("/").unwrap_or(lib);
        let mut parents: Vec<&Path> = rel.ancestors().skip(1).collect();
        parents.reverse();
        for parent in parents {
            let p = parent.to_string_lossy().into_owned();
            if !p.is_empty() && made.insert(p.clone()) {
                cpio.dir(&p)?;
            }
        }
        let data = fs::read(lib).with_context(|| format!("reading {}", lib.display()))?;
        cpio.file(&rel.to_string_lossy(), &data, 0o755)?;
    }
    let mut modules = Vec::new();
    for m in &kernel.modules {
        let name = m
            .file_stem()
            .and_then(|n| n.to_str())
            .context("module name")?
            .to_string();
        cpio.file(&format!("modules/{name}.ko"), &fs::read(m)?, 0o644)?;
        modules.push(name);
    }
    cpio.file(
        "init",
        init_script(&names, filter, &modules).as_bytes(),
        0o755,
    )?;
    cpio.finish()
}

fn which(tool: &str) -> anyhow::Result<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(tool);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{tool} is not installed (cargo xtask setup installs it)")
}

/// The shared libraries `binary` loads, with the dynamic loader, as ldd
/// names them (the VM has the host's layout for them).
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = cmd::stdout_of(Command::new("ldd").arg(binary))
        .with_context(|| format!("ldd {} failed", binary.display()))?;
    let mut libs = Vec::new();
    for line in out.lines() {
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// A "newc" cpio archive, the format the kernel unpacks as initramfs,
/// written directly (no cpio on a fresh machine).
struct Cpio {
    out: std::io::BufWriter<fs::File>,
    ino: u32,
}

impl Cpio {
    fn create(path: &Path) -> anyhow::Result<Self> {
        let file =
            fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Cpio {
            out: std::io::BufWriter::new(file),
            ino: 1,
        })
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> anyhow::Result<()> {
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}00000000",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
        );
        self.ino += 1;
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(header.len() + name.len() + 1)?;
        self.out.write_all(data)?;
        self.pad(data.len())?;
        Ok(())
    }

    fn pad(&mut self, len: usize) -> anyhow::Result<()> {
        let pad = (4 - len % 4) % 4;
        self.out.write_all(&[0; 3][..pad])?;
        Ok(())
    }

    fn dir(&mut self, name: &str) -> anyhow::Result<()> {
        self.entry(name, 0o040_755, &[])
    }

    fn file(&mut self, name: &str, data: &[u8], perm: u32) -> anyhow::Result<()> {
        self.entry(name, 0o100_000 | perm, data)
    }

    fn symlink(&mut self, name: &str, target: &str) -> anyhow::Result<()> {
        self.entry(name, 0o120_777, target.as_bytes())
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.entry("TRAILER!!!", 0, &[])?;
        self.out.flush()?;
        Ok(())
    }
}

/// qemu, killed when dropped, whatever ended the run.
struct Vm(Child);

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots the VM, copies its console to stderr and to `log`, and returns the
/// exit code its init reported. Fails when it reports none: the kernel
/// panicked, init died or the timeout passed.
fn boot(vmlinuz: &Path, initrd: &Path, log: &Path, timeout: Duration) -> anyhow::Result<i32> {
    let mut log_file =
        fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "2048", "-smp", "2"])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .args(["-serial", "stdio", "-monitor", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        // panic=-1: a panic reboots at once, which -no-reboot turns into an
        // exit, instead of hanging until the timeout.
        .args([
            "-append",
            "console=ttyS0 panic=-1 oops=panic loglevel=4 rdinit=/init",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (cargo xtask setup installs qemu-system-x86)")?;
    let mut vm = Vm(child);
    let stdout = vm.0.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut result = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("the VM did not finish within {} s", timeout.as_secs());
        }
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches(['\r', '\n']);
                let _ = writeln!(log_file, "{line}");
                eprintln!("  | {line}");
                if let Some(at) = line.find(RESULT_MARKER) {
                    let digits: String = line[at + RESULT_MARKER.len()..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    result = digits.parse().ok();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            // The console closed: qemu has exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    drop(vm);
    result.context("the VM stopped without reporting a result (kernel panic or init failure)")
}
