//! The broker VPS image (image/README.md) booted under qemu: its virtio NIC
//! on a tap device in a namespace that plays the provider's router and the
//! chain (anvil, the contracts deployed), configured by a NoCloud seed whose
//! user-data runs `blockhost-broker setup --non-interactive`. It boots
//! first under BIOS, and the reboot is a power-off and a boot under UEFI
//! (OVMF), so that both of the image's boot paths are exercised.
//!
//! Run by `cargo xtask image-test` (it needs a built image, qemu, and a few
//! minutes of TCG emulation, hence `#[ignore]`). The image is never written:
//! the VM runs on a qcow2 overlay in a temporary directory. The namespace,
//! the tap and qemu go away on drop, also when the test fails.

use std::{
    fmt::Write as _,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use alloy::{
    network::EthereumWallet,
    primitives::U256,
    providers::{Provider as _, ProviderBuilder},
};
use anyhow::{Context as _, bail, ensure};
use broker_contracts::{
    BrokerRequests, TestNFT,
    devchain::{self, ANVIL_KEYS, DevChain},
    protocol::{self, ResponsePayload},
};
use broker_lab::{
    names,
    netns::{self, Netns},
    process::{self, Process},
    relay::Relay,
    requests,
    wireguard::{ClientTunnel, WireguardGo},
};
use ipnet::Ipv6Net;
use wireguard_control::Key;

/// The provider's router on the VM's link, the VM's own address there, and
/// the /48 routed to the broker (on-link at the router: every address in it
/// is resolved with neighbor discovery, which the XDP responder answers).
const ROUTER: &str = "2001:db8:42::1";
const VM: &str = "2001:db8:42::2";
const POOL: &str = "2001:db8:100::/48";
const RPC_PORT: u16 = 8545;
const VM_MAC: &str = "52:54:00:b1:0c:01";
/// The BlockHost server's own link to the router.
const LINK: &str = "2001:db8:42::/64";
const CLIENT_ROUTER: &str = "2001:db8:43::1";
const CLIENT: &str = "2001:db8:43::2";
const SSH_USER: &str = "bbt";

/// Bounds of each stage under TCG on a shared 2-core machine (measured:
/// see image/README.md, "Boot test").
const BOOT_LIMIT: Duration = Duration::from_secs(360);
const ACTIVE_LIMIT: Duration = Duration::from_secs(240);

fn image_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("BBT_IMAGE") {
        return Ok(PathBuf::from(p));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/image");
    let mut images: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("{} (run `cargo xtask image`)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "qcow2"))
        .collect();
    images.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
    images
        .pop()
        .with_context(|| format!("no .qcow2 in {} (run `cargo xtask image`)", dir.display()))
}

/// The VM, reached with ssh from the router namespace (the test's thread
/// is in it).
struct Vm {
    qemu: Process,
    key: PathBuf,
    console: PathBuf,
}

impl Vm {
    fn ssh_command(&self, command: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-i")
            .arg(&self.key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=5",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg(format!("{SSH_USER}@{VM}"))
            .arg(command);
        cmd
    }

    /// Runs `command` (a shell line) in the VM; its stdout, or an error with
    /// its stderr when it fails.
    fn sh(&self, command: &str) -> anyhow::Result<String> {
        let out = process::run_bounded(self.ssh_command(command), Duration::from_secs(60))
            .with_context(|| format!("ssh: {command}"))?;
        ensure!(
            out.status.is_some_and(|s| s.success()),
            "in the VM, `{command}` failed ({:?}): {}{}",
            out.status,
            out.stdout,
            out.stderr
        );
        Ok(out.stdout)
    }

    fn console_tail(&self) -> String {
        process::tail(
            &String::from_utf8_lossy(&fs::read(&self.console).unwrap_or_default()),
            40,
        )
    }

    /// Waits until ssh answers (cloud-init has made the user and the host
    /// keys), or fails with the console's last lines.
    fn wait_ssh(&mut self, limit: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.qemu.exited() {
                bail!(
                    "qemu exited ({status}): {}\nconsole:\n{}",
                    self.qemu.log(),
                    self.console_tail()
                );
            }
            if self.sh("true").is_ok() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                bail!("no ssh within {limit:?}; console:\n{}", self.console_tail());
            }
            thread::sleep(Duration::from_secs(3));
        }
    }

    /// Waits until the unit is active (READY=1 received: it is Type=notify).
    fn wait_active(&self, limit: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            let state = self
                .sh("systemctl is-active blockhost-broker || true")
                .unwrap_or_default();
            if state.trim() == "active" {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                let why = self
                    .sh("sudo grep -v -e '^[|+]' -e key /var/log/cloud-init-output.log | tail -n 30; \
                         sudo journalctl --no-pager -n 30 -u blockhost-broker; true")
                    .unwrap_or_else(|e| format!("{e:#}"));
                bail!(
                    "blockhost-broker not active within {limit:?} (is {}):\n{why}",
                    state.trim()
                );
            }
            thread::sleep(Duration::from_secs(3));
        }
    }
}

/// The package the image was built with (BBT_IMAGE_DEB), rebuilt with a
/// higher version: a newer build, as an upgrade brings. None without one.
fn newer_deb(dir: &Path) -> anyhow::Result<Option<(PathBuf, String)>> {
    let Some(deb) = std::env::var_os("BBT_IMAGE_DEB") else {
        return Ok(None);
    };
    let tree = dir.join("newer-deb");
    netns::run(Command::new("dpkg-deb").arg("-R").arg(&deb).arg(&tree))?;
    let control = tree.join("DEBIAN/control");
    let text = fs::read_to_string(&control)?;
    let old = text
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .context("no Version in the package")?
        .to_string();
    let version = format!("{old}+bbt1");
    fs::write(
        &control,
        text.replace(&format!("Version: {old}"), &format!("Version: {version}")),
    )?;
    let out = dir.join("newer.deb");
    netns::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-b"])
            .arg(&tree)
            .arg(&out),
    )?;
    Ok(Some((out, version)))
}

/// The grub-pc package the image was built with, from the build's package
/// cache beside it (`cargo xtask image` keeps target/image/apt-cache).
fn grub_deb(image: &Path) -> Option<PathBuf> {
    let cache = image.parent()?.join("apt-cache");
    fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("grub-pc_") && n.ends_with(".deb"))
        })
}

impl Vm {
    /// Fails unless the VM booted from `firmware`.
    fn booted_from(&self, firmware: Firmware) -> anyhow::Result<()> {
        let booted = self.sh("test -d /sys/firmware/efi && echo uefi || echo bios")?;
        let uefi = matches!(firmware, Firmware::Uefi);
        ensure!(
            (booted.trim() == "uefi") == uefi,
            "meant to boot from {firmware:?}, booted from {}",
            booted.trim()
        );
        Ok(())
    }

    /// Copies `file` into the VM as `to`.
    fn copy_in(&self, file: &Path, to: &str) -> anyhow::Result<()> {
        let mut copy = self.ssh_command(&format!("cat > {to}"));
        copy.stdin(fs::File::open(file)?);
        let out = copy
            .output()
            .with_context(|| format!("copying {} into the VM", file.display()))?;
        ensure!(out.status.success(), "copying {}: {out:?}", file.display());
        Ok(())
    }
}

/// The NoCloud seed: an iso9660 volume labelled `cidata`.
fn seed(dir: &Path, chain: &DevChain, ssh_public: &str) -> anyhow::Result<PathBuf> {
    let seed = dir.join("seed");
    fs::create_dir_all(&seed)?;
    fs::write(
        seed.join("meta-data"),
        "instance-id: bbt-image-1\nlocal-hostname: broker\n",
    )?;
    // What a provider gives: a static address and route from its metadata.
    fs::write(
        seed.join("network-config"),
        format!(
            "version: 2\nethernets:\n  upstream:\n    match:\n      macaddress: \"{VM_MAC}\"\n    \
             addresses: [\"{VM}/64\"]\n    routes:\n      - to: \"::/0\"\n        via: \"{ROUTER}\"\n    \
             accept-ra: false\n"
        ),
    )?;
    let mut user = String::new();
    writeln!(user, "#cloud-config")?;
    writeln!(user, "users:")?;
    writeln!(user, "  - name: {SSH_USER}")?;
    writeln!(user, "    sudo: \"ALL=(ALL) NOPASSWD:ALL\"")?;
    writeln!(user, "    shell: /bin/bash")?;
    writeln!(user, "    ssh_authorized_keys: [\"{}\"]", ssh_public.trim())?;
    // The chain's operator wallet (it owns the deployed BrokerRequests) and
    // the ECIES key the registry lists for this broker: setup keeps keys it
    // finds beside the configuration.
    writeln!(user, "write_files:")?;
    for (path, secret) in [
        ("/root/operator.key", ANVIL_KEYS[1].to_string()),
        (
            "/etc/blockhost-broker/ecies.key",
            hex::encode(chain.ecies_secret),
        ),
    ] {
        writeln!(user, "  - path: {path}")?;
        writeln!(user, "    permissions: \"0600\"")?;
        writeln!(user, "    content: \"{secret}\\n\"")?;
    }
    let rpc = format!("http://[{ROUTER}]:{RPC_PORT}");
    let setup = [
        "blockhost-broker",
        "setup",
        "--non-interactive",
        "--rpc-url",
        &rpc,
        "--chain-id",
        &chain.chain_id.to_string(),
        "--operator-key",
        "/root/operator.key",
        "--requests-contract",
        &chain.requests.to_string(),
        "--registry-contract",
        &chain.registry.to_string(),
        "--confirmations",
        "0",
        "--poll-interval",
        "1",
        "--pool",
        POOL,
        "--allocation-size",
        "64",
        "--wg-endpoint",
        &format!("[{VM}]:51820"),
        "--start",
    ];
    writeln!(user, "runcmd:")?;
    writeln!(
        user,
        "  - [{}]",
        setup
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    fs::write(seed.join("user-data"), user)?;
    let iso = dir.join("seed.iso");
    let out = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-r", "-o"])
        .arg(&iso)
        .arg(&seed)
        .output()
        .context("xorriso (cargo xtask setup installs it)")?;
    ensure!(
        out.status.success(),
        "xorriso: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(iso)
}

/// The firmware a boot starts from: the image boots on both.
#[derive(Clone, Copy, Debug)]
enum Firmware {
    /// qemu's default (SeaBIOS): GRUB from the MBR and the BIOS boot partition.
    Bios,
    /// OVMF (Debian's `ovmf`): GRUB from the EFI system partition's
    /// removable-media path.
    Uefi,
}

/// OVMF as Debian's `ovmf` installs it (`cargo xtask setup`).
const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// The VM's disk: larger than the image's, as a provider's is, so that the
/// first boot must grow the root partition and file system.
const DISK_GIB: u64 = 3;

/// A copy-on-write overlay of the image: the VM's disk, across its boots.
fn overlay(dir: &Path, image: &Path) -> anyhow::Result<PathBuf> {
    let overlay = dir.join("overlay.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(image)
        .arg(&overlay)
        .arg(format!("{DISK_GIB}G"))
        .output()
        .context("qemu-img")?;
    ensure!(
        out.status.success(),
        "qemu-img create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(overlay)
}

fn boot(dir: &Path, disk: &Path, seed: &Path, tap: &str, firmware: Firmware) -> anyhow::Result<Vm> {
    let name = format!("{firmware:?}").to_lowercase();
    let key = dir.join("id_ed25519");
    let console = dir.join(format!("console-{name}.log"));
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-m", "1024", "-smp", "2"])
        .args(["-display", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", disk.display()))
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            seed.display()
        ))
        .arg("-netdev")
        .arg(format!("tap,id=up,ifname={tap},script=no,downscript=no"))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=up,mac={VM_MAC}"));
    if let Firmware::Uefi = firmware {
        ensure!(
            Path::new(OVMF).exists(),
            "{OVMF} is missing (Debian's ovmf; `cargo xtask setup` installs it)"
        );
        qemu.args(["-bios", OVMF]);
    }
    let qemu = Process::spawn_logged(
        &format!("qemu ({name})"),
        qemu,
        dir.join(format!("qemu-{name}.log")),
    )?;
    Ok(Vm { qemu, key, console })
}

#[test]
#[ignore = "boots the VPS image under qemu (minutes): cargo xtask image-test"]
fn the_image_boots_configures_itself_and_serves() {
    if let Err(e) = image_test() {
        panic!("{e:#}");
    }
}

fn image_test() -> anyhow::Result<()> {
    let image = image_path()?;
    eprintln!("image: {}", image.display());
    let dir = tempfile::Builder::new().prefix("bbt-image-").tempdir()?;
    let started = Instant::now();

    // The router namespace: this thread lives in it from here on, so that
    // anvil, the relay, qemu's tap and ssh are all there.
    let router = Netns::unique("img")?;
    router.enter()?;
    let tap = names::interface_name("t");
    router.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
    router.ip(&["link", "set", &tap, "up"])?;
    router.ip(&["addr", "add", &format!("{ROUTER}/64"), "dev", &tap])?;
    router.ip(&["route", "add", POOL, "dev", &tap])?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // anvil on this namespace's loopback (the test's own calls), reached by
    // the VM through a relay on the router's address.
    let chain = runtime
        .block_on(DevChain::start(&devchain::Options {
            region: "image".into(),
            ..devchain::Options::default()
        }))
        .context("starting the chain")?;
    let _relay = Relay::listen(SocketAddr::new(ROUTER.parse()?, RPC_PORT), &chain.rpc_url)?;

    let key = dir.path().join("id_ed25519");
    netns::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key),
    )?;
    let ssh_public = fs::read_to_string(key.with_extension("pub"))?;
    let seed = seed(dir.path(), &chain, &ssh_public)?;

    let disk = overlay(dir.path(), &image)?;
    let mut vm = boot(dir.path(), &disk, &seed, &tap, Firmware::Bios)?;
    let to_ssh = vm.wait_ssh(BOOT_LIMIT)?;
    eprintln!("ssh answers {to_ssh:.0?} after qemu started");
    vm.booted_from(Firmware::Bios)?;
    // Powers the VM off and boots it again from the same disk; how long
    // until ssh answered.
    let power_cycle = |vm: &mut Vm, firmware: Firmware| -> anyhow::Result<Duration> {
        let _ = vm.sh("sudo systemctl poweroff");
        let status = vm
            .qemu
            .wait_exit(Duration::from_secs(120))
            .context("the VM did not power off")?;
        eprintln!("powered off ({status}); booting again from {firmware:?}");
        *vm = boot(dir.path(), &disk, &seed, &tap, firmware)?;
        let to_ssh = vm.wait_ssh(BOOT_LIMIT)?;
        vm.booted_from(firmware)?;
        Ok(to_ssh)
    };
    // cloud-init grew the root (the last GPT partition) to the disk.
    let root_bytes: u64 = vm
        .sh("findmnt --bytes --noheadings --output SIZE /")?
        .trim()
        .parse()
        .context("findmnt's size of /")?;
    ensure!(
        root_bytes > (DISK_GIB << 30) * 9 / 10,
        "the root file system was not grown to the {DISK_GIB} GiB disk: {root_bytes} bytes"
    );
    eprintln!(
        "root file system grown to {:.1} GiB",
        root_bytes as f64 / (1u64 << 30) as f64
    );
    let to_active = vm.wait_active(ACTIVE_LIMIT)?;
    eprintln!("blockhost-broker active {to_active:.0?} later (setup ran from cloud-init)");

    // The console said how to set the broker up: the banner is written
    // before the login prompt, before cloud-init's setup has run.
    let console = String::from_utf8_lossy(&fs::read(&vm.console)?).into_owned();
    ensure!(
        console.contains("blockhost-broker is not configured yet")
            && console.contains("blockhost-broker setup"),
        "the console never told the operator to run `blockhost-broker setup`:\n{}",
        vm.console_tail()
    );
    // The ssh login message, now that it is set up, says its state.
    // pam_motd runs the scripts as root (the configuration is not
    // readable by others).
    let motd = vm.sh("sudo /etc/update-motd.d/60-blockhost-broker")?;
    ensure!(
        motd.contains("blockhost-broker: active"),
        "the login message after setup: {motd}"
    );
    // Debian's kernels have WireGuard: the image uses it, not wireguard-go.
    let link = vm.sh("ip -d link show wg-broker")?;
    ensure!(
        link.contains("wireguard"),
        "wg-broker is not a kernel WireGuard interface: {link}"
    );
    ensure!(
        vm.sh("pgrep -x wireguard-go").is_err(),
        "wireguard-go runs in the image"
    );
    eprintln!("console banner, login message, kernel WireGuard: as expected");

    // (a) the unit is what the package says: notify, with a watchdog.
    let show = vm.sh("systemctl show -p Type -p WatchdogUSec -p NRestarts blockhost-broker")?;
    eprintln!("{}", show.trim());
    ensure!(show.contains("Type=notify"), "not Type=notify: {show}");
    let watchdog = show
        .lines()
        .find_map(|l| l.strip_prefix("WatchdogUSec="))
        .context("no WatchdogUSec")?;
    ensure!(
        watchdog != "0" && watchdog != "infinity",
        "no watchdog: WatchdogUSec={watchdog}"
    );
    let security = vm.sh("systemd-analyze security --no-pager blockhost-broker")?;
    let exposure = security
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .context("systemd-analyze security printed no exposure")?;
    eprintln!(
        "systemd-analyze security blockhost-broker: {}",
        exposure.trim()
    );
    let level: f64 = exposure
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .context("exposure level is not a number")?;
    ensure!(level <= 3.0, "exposure {level} > 3.0:\n{security}");

    // (b) the responder on the virtio NIC; a real request answered on
    // anvil; the router resolves an address of the prefix with neighbor
    // discovery and reaches it through the client's tunnel.
    let ndp = vm.sh("sudo blockhost-broker ndp status")?;
    eprintln!("ndp status in the VM:\n{}", ndp.trim_end());
    let mode = ndp
        .lines()
        .find_map(|l| l.strip_prefix("mode:"))
        .context("ndp status names no mode")?
        // "driver (XDP link)": the mode, then how it is attached.
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    ensure!(
        mode == "driver" || mode == "generic",
        "the responder is attached in mode {mode}"
    );

    let client_ns = Netns::unique("imgc")?;
    let (r_end, c_end) = (names::interface_name("r"), names::interface_name("c"));
    netns::veth(
        netns::End::new(&router, &r_end),
        netns::End::new(&client_ns, &c_end),
    )?;
    router.enable_forwarding()?;
    router.ip(&["addr", "add", &format!("{CLIENT_ROUTER}/64"), "dev", &r_end])?;
    client_ns.ip(&["addr", "add", &format!("{CLIENT}/64"), "dev", &c_end])?;
    client_ns.ip(&["route", "add", LINK, "via", CLIENT_ROUTER])?;

    let operator = devchain::anvil_signer(1).address();
    let wallet = ProviderBuilder::new()
        .wallet(EthereumWallet::from(devchain::anvil_signer(
            requests::CLIENT,
        )))
        .connect_http(chain.rpc_url.parse()?)
        .erased();
    let server = requests::Client::new(requests::CLIENT);
    let (id, answer) = runtime.block_on(async {
        let nft = *TestNFT::deploy(
            wallet.clone(),
            devchain::anvil_signer(requests::CLIENT).address(),
        )
        .await
        .context("deploying a TestNFT")?
        .address();
        let payload = protocol::encrypt(
            &chain.ecies_public,
            server.payload(nft).to_json().as_bytes(),
        )?;
        let receipt = BrokerRequests::new(chain.requests, wallet.clone())
            .submitRequest(nft, payload.into())
            .gas(requests::CLIENT_TX_GAS)
            .send()
            .await?
            .get_receipt()
            .await?;
        ensure!(receipt.status(), "submitRequest reverted");
        let id = requests::request_id(&receipt)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let request = BrokerRequests::new(chain.requests, wallet.clone())
                .getRequest(U256::from(id))
                .call()
                .await?;
            if request.status == requests::APPROVED {
                let (_, ciphertext) = protocol::unframe_response(&request.responsePayload)?;
                let plain = protocol::decrypt(&server.secret, ciphertext)?;
                return Ok::<_, anyhow::Error>((id, ResponsePayload::parse(&plain)?));
            }
            ensure!(
                request.status == requests::PENDING,
                "request {id} in status {}",
                request.status
            );
            ensure!(
                Instant::now() < deadline,
                "request {id} not answered within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })?;
    let prefix: Ipv6Net = answer.prefix.parse()?;
    let address = requests::client_address(prefix);
    eprintln!(
        "request {id} answered: {prefix}, tunnel to {}",
        answer.broker_endpoint
    );

    let wg = names::interface_name("w");
    let _wg_guard = WireguardGo::guard(&client_ns, &wg);
    let broker_key = Key::from_base64(&answer.broker_pubkey).context("the broker's key")?;
    ClientTunnel {
        ns: &client_ns,
        name: &wg,
        key_dir: dir.path(),
        endpoint: &answer.broker_endpoint,
        allowed_ips: "::/0",
        route: "::/0",
    }
    .start(&server.wg, &broker_key, &address)?;
    let reached = |vm: &Vm, what: &str| -> anyhow::Result<()> {
        if !router.ping(&address, 20) {
            let vm_side = vm
                .sh(
                    "sudo wg show; sudo blockhost-broker ndp status; ip -6 route; \
                     sudo nft list ruleset | head -n 40; true",
                )
                .unwrap_or_else(|e| format!("{e:#}"));
            let client_side = client_ns
                .output("wg", &["show"])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            bail!(
                "{what}: the router cannot reach {address} (in {prefix}) through the tunnel\n\
                 router's neighbours: {}\nVM:\n{vm_side}\nclient:\n{client_side}",
                router
                    .ip(&["-6", "neigh", "show", "dev", &tap])
                    .unwrap_or_default()
            );
        }
        let neigh = router
            .neigh(&tap, &address)?
            .with_context(|| format!("{what}: no neighbour entry for {address}"))?;
        ensure!(
            neigh.lladdr.as_deref() == Some(VM_MAC),
            "{what}: {address} resolved to {:?}, not the VM's {VM_MAC}",
            neigh.lladdr
        );
        eprintln!(
            "{what}: the router resolved {address} to {VM_MAC} (NDP) and pinged it through the tunnel"
        );
        Ok(())
    };
    reached(&vm, "first boot")?;

    // (c) after a reboot: the allocation, the peer and NDP answering are
    // back, and the operator sent nothing more.
    let nonce = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async { wallet.get_transaction_count(operator).await })
            .context("the operator's nonce")
    };
    let before = nonce(&runtime)?;
    // update-grub first, as a kernel upgrade on the server runs it; then
    // the VM powers off and boots again from the same disk under UEFI: the
    // reboot also proves the image's second boot path, reading the
    // grub.cfg the server itself wrote.
    vm.sh("sudo update-grub 2>&1")?;
    router.ip(&["-6", "neigh", "flush", "dev", &tap])?;
    let to_ssh = power_cycle(&mut vm, Firmware::Uefi)?;
    let to_active = vm.wait_active(ACTIVE_LIMIT)?;
    eprintln!("rebooted under UEFI: ssh after {to_ssh:.0?}, active {to_active:.0?} later");
    let peers = vm.sh("sudo wg show wg-broker allowed-ips")?;
    ensure!(
        peers.contains(&server.wg_public()) && peers.contains(&prefix.to_string()),
        "after the reboot the peer is not back: {peers}"
    );
    reached(&vm, "after the reboot")?;
    let after = nonce(&runtime)?;
    ensure!(
        after == before,
        "the operator sent {} transactions around the reboot",
        after - before
    );

    // (d) a newer build of the package over the running broker (the path
    // of an upgrade): the service restarts and keeps the allocation, the
    // peer and NDP answering, with no new transaction.
    match newer_deb(dir.path())? {
        None => eprintln!("(d) skipped: no package given (BBT_IMAGE_DEB)"),
        Some((deb, version)) => {
            vm.copy_in(&deb, "/tmp/blockhost-broker.deb")?;
            let started_at = "systemctl show -p ExecMainStartTimestampMonotonic blockhost-broker";
            let old_start = vm.sh(started_at)?;
            let installed = vm.sh("sudo dpkg -i /tmp/blockhost-broker.deb 2>&1")?;
            ensure!(
                vm.sh("dpkg-query -W -f '${Version}' blockhost-broker")? == version,
                "the VM did not take {version}: {installed}"
            );
            vm.wait_active(ACTIVE_LIMIT)?;
            ensure!(
                vm.sh(started_at)? != old_start,
                "the upgrade did not restart the service: {installed}"
            );
            let peers = vm.sh("sudo wg show wg-broker allowed-ips")?;
            ensure!(
                peers.contains(&server.wg_public()) && peers.contains(&prefix.to_string()),
                "after the upgrade the peer is not there: {peers}"
            );
            router.ip(&["-6", "neigh", "flush", "dev", &tap])?;
            reached(&vm, &format!("after dpkg -i of {version}"))?;
            let upgraded = nonce(&runtime)?;
            ensure!(
                upgraded == before,
                "the operator sent {} transactions around the upgrade",
                upgraded - before
            );
        }
    }

    // (e) a GRUB update as apt or unattended-upgrades installs one, with
    // no terminal: it succeeds, reinstalls GRUB's BIOS boot code on the disk
    // the server booted from (the image's grub-device unit named it), and
    // the server boots from that disk under BIOS again.
    match grub_deb(&image) {
        None => eprintln!("(e) skipped: no grub-pc package in the image's apt-cache"),
        Some(deb) => {
            vm.copy_in(&deb, "/tmp/grub-pc.deb")?;
            let installed =
                vm.sh("sudo DEBIAN_FRONTEND=noninteractive dpkg -i /tmp/grub-pc.deb 2>&1")?;
            ensure!(
                installed.contains("Installing for i386-pc platform"),
                "the GRUB update installed GRUB nowhere: {installed}"
            );
            let to_ssh = power_cycle(&mut vm, Firmware::Bios)?;
            vm.wait_active(ACTIVE_LIMIT)?;
            let peers = vm.sh("sudo wg show wg-broker allowed-ips")?;
            ensure!(
                peers.contains(&server.wg_public()),
                "after the GRUB update and a boot the peer is not back: {peers}"
            );
            eprintln!(
                "(e) a GRUB update installed GRUB on the boot disk; BIOS boot from it: ssh after {to_ssh:.0?}"
            );
        }
    }

    eprintln!("image test done in {:.0?}", started.elapsed());
    vm.qemu.kill();
    Ok(())
}
