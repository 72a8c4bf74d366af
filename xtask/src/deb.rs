//! `cargo xtask deb`: the Debian packages (cargo-deb) in target/debian/,
//! checked with lintian. `cargo xtask deb-test`: install, upgrade, remove
//! and purge them in a clean Debian 13 (trixie) chroot made with
//! mmdebstrap, checking what each step leaves (piuparts-like).
//!
//! The chroot cannot run systemd: the maintainer scripts must cope (they
//! enable the unit with deb-systemd-helper and start nothing). Its base
//! tarball is cached in target/deb-test/; each run unpacks a fresh tree,
//! runs it in a network namespace of its own (the purge takes a network
//! interface down) and removes both, also when a check fails.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use crate::cmd;

/// The packages: (cargo package, Debian package).
const PACKAGES: &[(&str, &str)] = &[
    ("broker-userspace", "blockhost-broker"),
    ("broker-client", "blockhost-broker-client"),
];

/// What the base tree holds besides the `apt` variant: the packages'
/// dependencies (the test installs with dpkg, offline) and systemd, whose
/// sysusers, deb-systemd-helper and unit directories the scripts use.
const BASE_PACKAGES: &str = "systemd,wireguard-tools,iproute2,iputils-ping,nftables";

#[derive(clap::Args, Default)]
pub struct Args {
    /// The packages' version (default: the workspace's, revision 1).
    #[arg(long)]
    deb_version: Option<String>,
}

/// Builds both packages into target/debian/ and runs lintian on them.
pub fn run(args: Args) -> anyhow::Result<()> {
    let debs = build(args.deb_version.as_deref(), &out_dir(), true)?;
    lintian(&debs)
}

fn out_dir() -> PathBuf {
    cmd::workspace_root().join("target/debian")
}

/// The .deb of each package (in [`PACKAGES`] order), built into `out`;
/// `compile`: false repackages the binaries already built.
fn build(version: Option<&str>, out: &Path, compile: bool) -> anyhow::Result<Vec<PathBuf>> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    if compile {
        // What cargo deb would build, built first: the manual pages are
        // made from the binaries' --help.
        eprintln!("deb: cargo build --release");
        cmd::run(
            Command::new("cargo")
                .current_dir(cmd::workspace_root())
                .args([
                    "build",
                    "--release",
                    "-p",
                    "broker-userspace",
                    "-p",
                    "broker-client",
                ]),
        )?;
        man_pages()?;
    }
    let mut debs = Vec::new();
    for (crate_name, deb_name) in PACKAGES {
        eprintln!("deb: {deb_name}");
        let before = list_debs(out, deb_name)?;
        let mut cargo = Command::new("cargo");
        cargo
            .current_dir(cmd::workspace_root())
            .args(["deb", "--quiet", "-p", crate_name, "--output"])
            .arg(out);
        if let Some(v) = version {
            cargo.args(["--deb-version", v]);
        }
        cargo.arg("--no-build");
        let printed = cmd::stdout_of(&mut cargo)
            .with_context(|| format!("`cargo deb -p {crate_name}` failed (run it for details)"))?;
        let deb = printed
            .lines()
            .rev()
            .map(|l| PathBuf::from(l.trim()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .or_else(|| {
                list_debs(out, deb_name)
                    .ok()?
                    .into_iter()
                    .find(|d| !before.contains(d))
            })
            .with_context(|| format!("cargo deb made no {deb_name} package"))?;
        eprintln!("deb: {}", deb.display());
        debs.push(deb);
    }
    Ok(debs)
}

/// The binaries shipped, each with its manual page (section 8: commands
/// for the administrator).
const BINARIES: &[&str] = &["blockhost-broker", "broker-client"];

/// target/man/NAME.8.gz for each of [`BINARIES`]: the name, the version
/// and the `--help` text of the release binary (the packages' manual
/// pages; the full manual is README.md beside them).
fn man_pages() -> anyhow::Result<()> {
    let root = cmd::workspace_root();
    let dir = root.join("target/man");
    fs::create_dir_all(&dir)?;
    for name in BINARIES {
        let binary = root.join("target/release").join(name);
        let help = cmd::stdout_of(Command::new(&binary).arg("--help"))
            .with_context(|| format!("{} --help", binary.display()))?;
        let version = cmd::stdout_of(Command::new(&binary).arg("--version"))
            .with_context(|| format!("{} --version", binary.display()))?;
        let version = version.split_whitespace().last().unwrap_or("").to_string();
        let mut lines = help.lines();
        let summary = lines.next().unwrap_or(name).trim_end_matches('.');
        let mut page = format!(
            ".TH {} 8 \"\" \"{name} {version}\" \"System Administration\"\n.SH NAME\n{name} \\- {}\n.SH DESCRIPTION\n.nf\n",
            name.to_uppercase(),
            roff(summary),
        );
        for line in lines {
            page.push_str(&roff(line));
            page.push('\n');
        }
        page.push_str(&format!(
            ".fi\n.PP\nEach command has its own \\fB--help\\fR. The full manual: /usr/share/doc/{}/README.md.\n",
            if *name == "broker-client" { "blockhost-broker-client" } else { "blockhost-broker" }
        ));
        let path = dir.join(format!("{name}.8"));
        fs::write(&path, page)?;
        // -n: no name or time stamp, the package stays reproducible.
        cmd::run(Command::new("gzip").args(["-9", "-n", "-f"]).arg(&path))?;
    }
    Ok(())
}

/// `line` as literal roff text: backslashes escaped, and a leading `.` or
/// `'` kept from reading as a request.
fn roff(line: &str) -> String {
    let escaped = line.replace('\\', "\\e");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

fn list_debs(dir: &Path, name: &str) -> anyhow::Result<Vec<PathBuf>> {
    let prefix = format!("{name}_");
    Ok(fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .collect())
}

/// lintian, failing on any error or warning (overrides are in
/// debian/*.lintian-overrides, each with its reason).
fn lintian(debs: &[PathBuf]) -> anyhow::Result<()> {
    eprintln!("deb: lintian");
    cmd::run(
        Command::new("lintian")
            .args(["--fail-on", "error,warning", "--display-info"])
            .args(debs),
    )
}

// ------------------------------------------------------------- deb-test

/// A chroot tree and the network namespace it runs in, removed on drop.
struct Chroot {
    root: PathBuf,
    netns: String,
}

impl Chroot {
    fn new(base: &Path, root: PathBuf) -> anyhow::Result<Chroot> {
        let netns = format!("bbt-{}-deb", std::process::id());
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root)?;
        let chroot = Chroot { root, netns };
        cmd::run(
            Command::new("tar")
                .arg("-xf")
                .arg(base)
                .arg("-C")
                .arg(&chroot.root),
        )?;
        cmd::run(Command::new("ip").args(["netns", "add", &chroot.netns]))?;
        Ok(chroot)
    }

    /// `sh -c script` inside; its stdout, or an error with its output.
    fn sh(&self, script: &str) -> anyhow::Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns, "chroot"])
            .arg(&self.root)
            .args(["/bin/sh", "-c", script])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .with_context(|| format!("running `{script}` in the chroot"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("`{script}` failed ({}):\n{stdout}{stderr}", out.status);
        }
        Ok(format!("{stdout}{stderr}"))
    }

    /// Fails with `what` unless the `test` expression holds inside.
    fn check(&self, test: &str, what: &str) -> anyhow::Result<()> {
        self.sh(test)
            .map(|_| ())
            .with_context(|| format!("check failed: {what}"))
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = fs::remove_dir_all(&self.root);
    }
}

pub fn test(args: Args) -> anyhow::Result<()> {
    ensure!(
        cmd::is_root(),
        "deb-test makes a chroot: run it as root (`sudo -E cargo xtask deb-test`)"
    );
    let dir = cmd::workspace_root().join("target/deb-test");
    fs::create_dir_all(&dir)?;
    // The build under test, and the same at a higher version: the upgrade
    // runs every maintainer script of an upgrade between two builds. The
    // higher one first: cargo deb deletes the other versions it finds in
    // target/debian/, whatever --output says.
    let version = match &args.deb_version {
        Some(v) => v.clone(),
        None => format!("{}-1", workspace_version()?),
    };
    let newer = format!("{version}+upgrade1");
    let new_dir = dir.join("upgrade");
    let _ = fs::remove_dir_all(&new_dir);
    let new = build(Some(&newer), &new_dir, true)?;
    let old = build(Some(&version), &out_dir(), false)?;
    ensure!(
        deb_field(&old[0], "Version")? == version,
        "{} is not version {version}",
        old[0].display()
    );

    let base = base_tarball(&dir)?;
    let chroot = Chroot::new(&base, dir.join(format!("root-{}", std::process::id())))?;
    let result = scenario(&chroot, &old, &new, &version, &newer);
    drop(chroot);
    let _ = fs::remove_dir_all(&new_dir);
    result?;
    eprintln!("deb-test: install, upgrade, remove and purge passed");
    Ok(())
}

/// `version` of the workspace's Cargo.toml (the packages' upstream version).
fn workspace_version() -> anyhow::Result<String> {
    let manifest = cmd::workspace_root().join("Cargo.toml");
    let text =
        fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    // The `version = "…"` line of [workspace.package].
    text.split("\n[")
        .find(|section| section.starts_with("workspace.package]"))
        .and_then(|section| {
            section.lines().find_map(|l| {
                let (key, value) = l.split_once('=')?;
                (key.trim() == "version").then(|| value.trim().trim_matches('"').to_string())
            })
        })
        .with_context(|| format!("no [workspace.package] version in {}", manifest.display()))
}

fn deb_field(deb: &Path, field: &str) -> anyhow::Result<String> {
    cmd::stdout_of(Command::new("dpkg-deb").arg("-f").arg(deb).arg(field))
        .map(|s| s.trim().to_string())
        .with_context(|| format!("reading {field} of {}", deb.display()))
}

/// The Debian mirror apt uses here (the first non-security `URIs:`).
fn mirror() -> String {
    let mut text = String::new();
    for file in [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ] {
        text.push_str(&fs::read_to_string(file).unwrap_or_default());
        text.push('\n');
    }
    text.lines()
        .filter_map(|l| {
            l.strip_prefix("URIs:").or_else(|| {
                l.strip_prefix("deb ")
                    .map(|r| r.split_whitespace().next().unwrap_or(""))
            })
        })
        .map(|u| u.trim().to_string())
        .find(|u| !u.is_empty() && !u.contains("security"))
        .unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

/// target/deb-test/trixie-base.tar, made once with mmdebstrap.
fn base_tarball(dir: &Path) -> anyhow::Result<PathBuf> {
    let base = dir.join("trixie-base.tar");
    let stamp = dir.join("trixie-base.packages");
    if base.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(BASE_PACKAGES) {
        return Ok(base);
    }
    eprintln!("deb-test: making a Debian 13 (trixie) base with mmdebstrap (about a minute, once)");
    // mmdebstrap picks the format by the extension: .tar.
    let partial = dir.join("trixie-base.partial.tar");
    cmd::run(
        Command::new("mmdebstrap")
            .args([
                "--quiet",
                "--variant=apt",
                "--include",
                BASE_PACKAGES,
                "trixie",
            ])
            .arg(&partial)
            .arg(format!("deb {} trixie main", mirror())),
    )?;
    fs::rename(&partial, &base)?;
    fs::write(&stamp, BASE_PACKAGES)?;
    Ok(base)
}

/// What the operator has once the broker is set up, written into the
/// chroot after the install: a configuration, keys, a database.
const OPERATOR_FILES: &[(&str, &str)] = &[
    ("/etc/blockhost-broker/config.toml", "0640"),
    ("/etc/blockhost-broker/operator.key", "0600"),
    ("/etc/blockhost-broker/ecies.key", "0600"),
    ("/etc/blockhost-broker/wireguard.key", "0600"),
    ("/var/lib/blockhost-broker/broker.redb", "0600"),
];

fn scenario(
    c: &Chroot,
    old: &[PathBuf],
    new: &[PathBuf],
    version: &str,
    newer: &str,
) -> anyhow::Result<()> {
    let debs = c.path("/tmp/debs");
    fs::create_dir_all(debs.join("new"))?;
    for deb in old {
        fs::copy(deb, debs.join(deb.file_name().context("a file")?))?;
    }
    for deb in new {
        fs::copy(
            deb,
            debs.join("new").join(deb.file_name().context("a file")?),
        )?;
    }

    eprintln!("deb-test: install {version}");
    let said = c.sh("dpkg -i /tmp/debs/*.deb")?;
    ensure!(
        said.contains("blockhost-broker setup"),
        "the install does not say that `blockhost-broker setup` is next:\n{said}"
    );
    installed(c, version)?;
    c.check(
        "[ \"$(ls -A /etc/blockhost-broker)\" = config.toml.example ]",
        "the install wrote nothing but the example into /etc/blockhost-broker (no secrets)",
    )?;

    // The operator's set-up, then a fingerprint of it.
    for (path, mode) in OPERATOR_FILES {
        c.sh(&format!(
            "head -c 64 /dev/urandom | od -An -tx1 > {path} && chmod {mode} {path} && \
             chown blockhost-broker:blockhost-broker {path}"
        ))?;
    }
    c.sh("chown root:blockhost-broker /etc/blockhost-broker/config.toml")?;
    // A stand-in for the responder's pins (the chroot's /sys is a plain
    // directory).
    let pins = c.path("/sys/fs/bpf/blockhost-broker");
    fs::create_dir_all(&pins).with_context(|| format!("creating {}", pins.display()))?;
    fs::write(pins.join("link"), "a pin")?;
    let fingerprint = |c: &Chroot| {
        let files: Vec<&str> = OPERATOR_FILES.iter().map(|(p, _)| *p).collect();
        c.sh(&format!(
            "sha256sum {0} && stat -c '%n %a %U:%G' {0} /etc/blockhost-broker /var/lib/blockhost-broker",
            files.join(" ")
        ))
    };
    let before = fingerprint(c)?;

    // A stand-in for the daemon's nftables table (no daemon runs here).
    c.sh("nft add table inet blockhost_broker")?;
    let table = "nft list table inet blockhost_broker >/dev/null 2>&1";

    eprintln!("deb-test: upgrade to {newer}");
    c.sh("dpkg -i /tmp/debs/new/*.deb")?;
    installed(c, newer)?;
    c.check(table, "the upgrade keeps the nftables table")?;
    let after = fingerprint(c)?;
    ensure!(
        before == after,
        "the upgrade changed the operator's files:\nbefore:\n{before}\nafter:\n{after}"
    );
    c.check(
        "[ -e /sys/fs/bpf/blockhost-broker/link ]",
        "the upgrade kept the pins",
    )?;

    eprintln!("deb-test: remove");
    // A stand-in for the WireGuard interface (this kernel may have no
    // WireGuard module, veth is everywhere): the tunnels outlive a remove.
    c.sh("ip link add wg-broker type veth peer name wg-broker-peer")?;
    c.sh("dpkg -r blockhost-broker blockhost-broker-client")?;
    c.check(
        table,
        "remove keeps the nftables table while the WireGuard interface is there (the tunnels run on)",
    )?;
    c.check(
        "[ ! -e /usr/bin/blockhost-broker ] && [ ! -e /usr/bin/broker-client ]",
        "remove takes the binaries away",
    )?;
    c.check(
        "[ ! -e /usr/lib/systemd/system/blockhost-broker.service ] && [ ! -e /lib/systemd/system/blockhost-broker.service ]",
        "remove takes the unit away",
    )?;
    let kept = fingerprint(c)?;
    ensure!(
        before == kept,
        "remove changed the operator's files:\n{kept}"
    );
    c.check(
        "[ -e /etc/blockhost-broker/config.toml.example ] && [ -e /sys/fs/bpf/blockhost-broker/link ]",
        "remove keeps the conffile and the pins (the responder keeps answering)",
    )?;
    c.check(
        "getent passwd blockhost-broker >/dev/null",
        "remove keeps the user",
    )?;

    eprintln!("deb-test: purge");
    c.sh("dpkg -P blockhost-broker blockhost-broker-client")?;
    c.check(&format!("! {table}"), "purge removes the nftables table")?;
    c.check(
        "[ ! -e /etc/blockhost-broker ] && [ ! -e /var/lib/blockhost-broker ]",
        "purge removes the configuration, the keys and the database",
    )?;
    c.check(
        "[ ! -e /sys/fs/bpf/blockhost-broker ]",
        "purge removes the pins",
    )?;
    c.check(
        "! ip link show dev wg-broker >/dev/null 2>&1",
        "purge removes the WireGuard interface",
    )?;
    c.check(
        "[ ! -e /etc/systemd/system/multi-user.target.wants/blockhost-broker.service ]",
        "purge disables the unit",
    )?;
    c.check(
        "! dpkg -s blockhost-broker >/dev/null 2>&1 && ! dpkg -s blockhost-broker-client >/dev/null 2>&1",
        "nothing of the packages is left in dpkg's database",
    )?;
    Ok(())
}

/// The state right after an install or an upgrade to `version`.
fn installed(c: &Chroot, version: &str) -> anyhow::Result<()> {
    for name in ["blockhost-broker", "blockhost-broker-client"] {
        let got = c.sh(&format!(
            "dpkg-query -W -f='${{Version}} ${{Status}}' {name}"
        ))?;
        ensure!(
            got == format!("{version} install ok installed"),
            "{name}: {got}"
        );
    }
    c.check(
        "blockhost-broker --version && broker-client --version",
        "the binaries run",
    )?;
    c.check(
        "[ \"$(stat -c '%a %U' /usr/bin/blockhost-broker /usr/bin/broker-client)\" = \"$(printf '755 root\\n755 root')\" ]",
        "the binaries are root's, 0755",
    )?;
    let user = c.sh("getent passwd blockhost-broker")?;
    let fields: Vec<&str> = user.trim().split(':').collect();
    ensure!(fields.len() == 7, "getent passwd: {user}");
    let uid: u32 = fields[2].parse()?;
    ensure!(
        uid < 1000 && fields[5] == "/var/lib/blockhost-broker" && fields[6].ends_with("nologin"),
        "not a system user with the state directory as home and no shell: {user}"
    );
    c.check(
        "[ \"$(stat -c '%a %U:%G' /etc/blockhost-broker)\" = '750 root:blockhost-broker' ]",
        "/etc/blockhost-broker is root's, 0750, group blockhost-broker",
    )?;
    c.check(
        "[ \"$(stat -c '%a %U:%G' /var/lib/blockhost-broker)\" = '750 blockhost-broker:blockhost-broker' ]",
        "/var/lib/blockhost-broker is the user's, 0750",
    )?;
    c.check(
        "dpkg-query --control-show blockhost-broker conffiles | grep -qx /etc/blockhost-broker/config.toml.example",
        "the example configuration is a conffile",
    )?;
    c.check(
        "[ -e /usr/lib/sysusers.d/blockhost-broker.conf ] && [ -e /usr/lib/sysctl.d/60-blockhost-broker.conf ]",
        "sysusers.d and sysctl.d files are installed",
    )?;
    c.check(
        "[ -L /etc/systemd/system/multi-user.target.wants/blockhost-broker.service ]",
        "the unit is enabled",
    )?;
    Ok(())
}
