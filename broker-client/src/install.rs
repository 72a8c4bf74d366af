//! `install`: the allocation as a persistent tunnel. A wg-quick
//! configuration (mode 0600: it holds the private key, which therefore
//! never appears in an argv or a predictable temporary file), brought up by
//! systemd's `wg-quick@IFACE` when systemd runs, else by `wg-quick up`
//! directly; then a ping of the gateway through the interface.
//!
//! The tunnel address is the prefix's network address + 1 as a /128: the
//! rest of the prefix belongs to the server's VMs behind other interfaces,
//! and a /120 on the tunnel would route it back into the tunnel.
//! `AllowedIPs = ::/0` makes wg-quick route all IPv6 through the tunnel
//! (with its fwmark rules, so the tunnel's own packets still go out).

use std::{
    net::Ipv6Addr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use broker_contracts::error_text::one_line;
use ipnet::Ipv6Net;
use serde_json::json;

use crate::{
    cli::{ConfigureArgs, Global, InstallArgs, ServiceManager, TunnelArgs},
    files::{self, Allocation},
    keys::parse_wg_key,
};

/// Where `wg-quick@IFACE` looks for its configuration.
const SYSTEMD_WG_DIR: &str = "/etc/wireguard";
const CONF_MODE: u32 = 0o600;

pub async fn install(global: &Global, args: &InstallArgs) -> anyhow::Result<()> {
    let allocation = files::read_allocation(&global.config_dir)?.with_context(|| {
        format!(
            "no allocation: {} does not exist (run `request` first)",
            files::allocation_path(&global.config_dir).display()
        )
    })?;
    let check = (!args.no_check).then(|| Duration::from_secs(args.check_timeout));
    apply(&args.tunnel, &allocation, check).await
}

/// `configure`: the tunnel up from the allocation file, not persistent.
pub async fn configure(global: &Global, args: &ConfigureArgs) -> anyhow::Result<()> {
    let allocation = files::read_allocation(&global.config_dir)?.with_context(|| {
        format!(
            "no allocation: {} does not exist (run `request` first)",
            files::allocation_path(&global.config_dir).display()
        )
    })?;
    let check = (!args.no_check).then(|| Duration::from_secs(args.check_timeout));
    bring_up(&args.tunnel, &allocation, check).await
}

/// `RUNTIME_DIR/IFACE.conf`: where a tunnel that must not outlive a reboot
/// keeps its wg-quick configuration (wg-quick needs it again to take the
/// tunnel down; /run is emptied at boot).
pub fn runtime_conf_path(tunnel: &TunnelArgs) -> anyhow::Result<PathBuf> {
    let name = conf_path(tunnel)?;
    let name = name.file_name().context("a file name")?;
    Ok(tunnel.runtime_dir.join(name))
}

/// Brings the tunnel up with `wg-quick up` from a configuration under the
/// runtime directory: no unit is enabled, nothing is written to the
/// wg-quick directory, so it is gone after a reboot (the field client's
/// `configure` and `--configure-wg`).
pub async fn bring_up(
    tunnel: &TunnelArgs,
    allocation: &Allocation,
    check: Option<Duration>,
) -> anyhow::Result<()> {
    let path = runtime_conf_path(tunnel)?;
    let text = conf_text(allocation)?;
    std::fs::create_dir_all(&tunnel.runtime_dir)
        .and_then(|()| {
            std::fs::set_permissions(&tunnel.runtime_dir, std::fs::Permissions::from_mode(0o700))
        })
        .with_context(|| format!("creating {}", tunnel.runtime_dir.display()))?;
    let iface = &tunnel.interface;
    if interface_exists(iface) {
        // Replacing a running tunnel: take it down first, from the
        // configuration it came up with while that is still the old one.
        take_down(tunnel, &path)?;
    }
    files::write_atomic(&path, text.as_bytes(), CONF_MODE)?;
    eprintln!("wrote {}", path.display());
    run(Command::new("wg-quick").arg("up").arg(&path))?;
    eprintln!("brought {iface} up with `wg-quick up` (not persistent: `install` makes it so)");
    finish(iface, &path, "runtime", allocation, check).await
}

/// Takes interface IFACE down: with wg-quick from the configuration it
/// came up with (the runtime one, else the installed one), else by
/// deleting the link.
fn take_down(tunnel: &TunnelArgs, runtime: &Path) -> anyhow::Result<()> {
    let iface = &tunnel.interface;
    let installed = conf_path(tunnel)?;
    let down = [runtime, installed.as_path()]
        .into_iter()
        .filter(|p| p.exists())
        .any(|p| run(Command::new("wg-quick").arg("down").arg(p)).is_ok());
    if !down {
        run(Command::new("ip").args(["link", "del", "dev", iface]))?;
    }
    Ok(())
}

/// Writes the configuration and (re)starts the tunnel; with `check`, waits
/// that long for the gateway to answer through it.
pub async fn apply(
    tunnel: &TunnelArgs,
    allocation: &Allocation,
    check: Option<Duration>,
) -> anyhow::Result<()> {
    let path = conf_path(tunnel)?;
    let text = conf_text(allocation)?;
    let mode = mode(tunnel)?;
    let iface = &tunnel.interface;
    let runtime = runtime_conf_path(tunnel)?;
    if runtime.exists() {
        // A tunnel `configure` brought up gives way to the installed one.
        if interface_exists(iface) {
            take_down(tunnel, &runtime)?;
        }
        files::remove(&runtime)?;
    }
    files::write_atomic(&path, text.as_bytes(), CONF_MODE)?;
    eprintln!("wrote {}", path.display());
    match &mode {
        Mode::Systemd => {
            let unit = format!("wg-quick@{iface}");
            run(Command::new("systemctl").args(["enable", &unit]))?;
            run(Command::new("systemctl").args(["restart", &unit]))?;
            eprintln!("enabled and (re)started {unit}");
        }
        Mode::Direct(reason) => {
            if interface_exists(iface) {
                // Replacing a running tunnel (a renewed key): wg-quick has
                // no reload, so down and up again.
                if run(Command::new("wg-quick").arg("down").arg(&path)).is_err() {
                    let _ = run(Command::new("ip").args(["link", "del", "dev", iface]));
                }
            }
            run(Command::new("wg-quick").arg("up").arg(&path))?;
            eprintln!(
                "{reason}: brought {iface} up directly with `wg-quick up` (it will not come back after a reboot by itself)"
            );
        }
    }
    finish(iface, &path, mode.name(), allocation, check).await
}

/// Checks the gateway (with `check`) and prints the result line.
async fn finish(
    iface: &str,
    path: &Path,
    mode: &str,
    allocation: &Allocation,
    check: Option<Duration>,
) -> anyhow::Result<()> {
    let answered = match check {
        Some(limit) => {
            let took = ping_gateway(iface, &allocation.gateway, limit).await?;
            eprintln!(
                "the gateway {} answers through {iface} (after {:.1}s)",
                allocation.gateway,
                took.as_secs_f64()
            );
            Some(true)
        }
        None => None,
    };
    println!(
        "{}",
        json!({
            "interface": iface,
            "config": path.display().to_string(),
            "mode": mode,
            "address": tunnel_address(&allocation.prefix)?.to_string(),
            "gateway": allocation.gateway,
            "gateway_answers": answered,
        })
    );
    Ok(())
}

/// Takes the tunnel down and removes its configuration (and unit).
pub fn remove(tunnel: &TunnelArgs) -> anyhow::Result<()> {
    let path = conf_path(tunnel)?;
    let iface = &tunnel.interface;
    let runtime = runtime_conf_path(tunnel)?;
    if runtime.exists() {
        // A tunnel `configure` brought up.
        if interface_exists(iface) {
            take_down(tunnel, &runtime)?;
            eprintln!("took {iface} down");
        }
        files::remove(&runtime)?;
    }
    match mode(tunnel)? {
        Mode::Systemd => {
            let unit = format!("wg-quick@{iface}");
            run(Command::new("systemctl").args(["disable", "--now", &unit]))?;
            eprintln!("stopped and disabled {unit}");
        }
        Mode::Direct(_) => {
            if interface_exists(iface) {
                let down = if path.exists() {
                    run(Command::new("wg-quick").arg("down").arg(&path))
                } else {
                    Err(anyhow::anyhow!("no configuration"))
                };
                if down.is_err() {
                    run(Command::new("ip").args(["link", "del", "dev", iface]))?;
                }
                eprintln!("took {iface} down");
            }
        }
    }
    if files::remove(&path)? {
        eprintln!("removed {}", path.display());
    }
    Ok(())
}

/// `DIR/IFACE.conf`, after checking IFACE is a name wg-quick accepts.
pub fn conf_path(tunnel: &TunnelArgs) -> anyhow::Result<PathBuf> {
    let name = &tunnel.interface;
    let valid = (1..=15).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_=+.-".contains(c));
    if !valid {
        anyhow::bail!(
            "interface name {:?} is not one wg-quick accepts (1-15 of A-Z a-z 0-9 _ = + . -)",
            one_line(name)
        );
    }
    Ok(tunnel.wg_config_dir.join(format!("{name}.conf")))
}

/// The client's address: the prefix's network address + 1 (§7).
pub fn tunnel_address(prefix: &str) -> anyhow::Result<Ipv6Addr> {
    let net: Ipv6Net = prefix
        .parse()
        .with_context(|| format!("prefix {prefix:?} is not an IPv6 prefix"))?;
    let first = u128::from(net.network());
    if net.prefix_len() >= 128 {
        anyhow::bail!("prefix {prefix} has no room for a tunnel address");
    }
    Ok(Ipv6Addr::from(first + 1))
}

/// `host:port` or `[v6]:port` with nothing else in it: it goes into the
/// configuration file as it is.
pub fn check_endpoint(endpoint: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        broker_contracts::protocol::is_endpoint(endpoint),
        "endpoint {:?} is not host:port",
        one_line(endpoint)
    );
    Ok(())
}

/// The wg-quick configuration of an allocation. Every value is parsed and
/// re-printed, so the file can only say what these lines say.
pub fn conf_text(a: &Allocation) -> anyhow::Result<String> {
    let private = parse_wg_key("wg_private_key in the allocation file", &a.wg_private_key)?;
    let broker = parse_wg_key("broker_pubkey in the allocation file", &a.broker_pubkey)?;
    check_endpoint(&a.broker_endpoint)?;
    let address = tunnel_address(&a.prefix)?;
    Ok(format!(
        "# Written by broker-client from {} (request {}); `broker-client install` rewrites it.\n\
         [Interface]\n\
         PrivateKey = {}\n\
         Address = {address}/128\n\
         \n\
         [Peer]\n\
         PublicKey = {}\n\
         Endpoint = {}\n\
         AllowedIPs = ::/0\n\
         PersistentKeepalive = 25\n",
        files::ALLOCATION_FILE,
        a.request_id,
        private.to_base64(),
        broker.to_base64(),
        a.broker_endpoint,
    ))
}

enum Mode {
    Systemd,
    /// Why not systemd.
    Direct(&'static str),
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Mode::Systemd => "systemd",
            Mode::Direct(_) => "direct",
        }
    }
}

fn mode(tunnel: &TunnelArgs) -> anyhow::Result<Mode> {
    let in_systemd_dir = tunnel.wg_config_dir == Path::new(SYSTEMD_WG_DIR);
    Ok(match tunnel.service_manager {
        ServiceManager::Direct => Mode::Direct("--service-manager direct"),
        ServiceManager::Systemd if !in_systemd_dir => anyhow::bail!(
            "wg-quick@ units read {SYSTEMD_WG_DIR}: --service-manager systemd needs --wg-config-dir {SYSTEMD_WG_DIR}"
        ),
        ServiceManager::Systemd => Mode::Systemd,
        ServiceManager::Auto if !systemd_running() => Mode::Direct("systemd is not running"),
        ServiceManager::Auto if !in_systemd_dir => {
            Mode::Direct("the configuration is outside /etc/wireguard")
        }
        ServiceManager::Auto => Mode::Systemd,
    })
}

/// sd_booted(3)'s test.
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn interface_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Pings `gateway` through `iface` until it answers or `limit` passes;
/// how long it took.
async fn ping_gateway(iface: &str, gateway: &str, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    eprintln!(
        "checking that the gateway {gateway} answers through {iface} (up to {}s)",
        limit.as_secs()
    );
    loop {
        // One ping waits at most a second: blocking this thread is fine.
        let out = Command::new("ping")
            .args(["-6", "-n", "-q", "-c", "1", "-W", "1", "-I", iface, gateway])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(out) if out.status.success() => return Ok(started.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
                "ping is not installed (apt-get install iputils-ping), or use --no-check"
            ),
            Err(e) => return Err(e).context("running ping"),
        }
        if started.elapsed() >= limit {
            anyhow::bail!(
                "the tunnel {iface} is up but the gateway {gateway} did not answer within {}s (is the broker's endpoint reachable, and did it accept this key?)",
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs a tool to completion; its last stderr line on failure.
fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        anyhow::bail!(
            "{shown} failed ({}): {}",
            out.status,
            one_line(last.unwrap_or("no message"))
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::WgKeys;

    fn allocation() -> Allocation {
        let client = WgKeys::generate();
        Allocation {
            prefix: "2001:db8:0:1::100/120".into(),
            gateway: "2001:db8:0:1::2".into(),
            broker_pubkey: WgKeys::generate().public.to_base64(),
            broker_endpoint: "203.0.113.10:51820".into(),
            nft_contract: "0x5FbDB2315678afecb367f032d93F642f64180aa3".into(),
            request_id: 4,
            wg_private_key: client.private.to_base64(),
            wg_public_key: client.public.to_base64(),
            allocated_at: files::iso8601_utc(0),
            broker_wallet: String::new(),
            dns_zone: String::new(),
        }
    }

    #[test]
    fn wg_quick_configuration() {
        let a = allocation();
        let text = conf_text(&a).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "[Interface]",
                &format!("PrivateKey = {}", a.wg_private_key),
                "Address = 2001:db8:0:1::101/128",
                "",
                "[Peer]",
                &format!("PublicKey = {}", a.broker_pubkey),
                "Endpoint = 203.0.113.10:51820",
                "AllowedIPs = ::/0",
                "PersistentKeepalive = 25",
            ]
        );
    }

    #[test]
    fn tunnel_address_is_network_plus_one() {
        for (prefix, want) in [
            ("2001:db8:0:1::100/120", "2001:db8:0:1::101"),
            ("2001:db8:0:1::1ff/120", "2001:db8:0:1::101"),
            ("2001:db8:7::/64", "2001:db8:7::1"),
            ("fd00::/127", "fd00::1"),
        ] {
            assert_eq!(tunnel_address(prefix).unwrap().to_string(), want);
        }
        assert!(tunnel_address("2001:db8::1/128").is_err());
        assert!(tunnel_address("192.0.2.0/24").is_err());
    }

    #[test]
    fn endpoints_and_interface_names() {
        for ok in [
            "203.0.113.10:51820",
            "[2001:db8::1]:51820",
            "broker.example:1",
        ] {
            assert!(check_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "203.0.113.10",
            "203.0.113.10:0",
            "a b:1",
            "[zz]:1",
            "x:1\nPostUp = y",
            ":1",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad:?}");
        }
        let tunnel = |name: &str| TunnelArgs {
            interface: name.into(),
            wg_config_dir: "/tmp/wg".into(),
            service_manager: ServiceManager::Direct,
            runtime_dir: "/run/x".into(),
        };
        assert_eq!(
            conf_path(&tunnel("blockhost0")).unwrap(),
            Path::new("/tmp/wg/blockhost0.conf")
        );
        for bad in ["", "a/b", "sixteen-chars-xx", "../x"] {
            assert!(conf_path(&tunnel(bad)).is_err(), "{bad:?}");
        }
    }
}
