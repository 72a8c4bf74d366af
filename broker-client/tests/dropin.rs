//! broker-client as a drop-in for the field (Python) client, against the
//! whole system in broker-lab: anvil, `blockhost-broker run`, the servers'
//! namespaces and the internet host (issue 16). Needs root.
//!
//! Each BlockHost server runs the client in a mount namespace of its own
//! whose /etc is an overlay over the real one and whose /run is empty, so
//! the field client's defaults (/etc/blockhost, /etc/wireguard/wg-broker.conf,
//! /run) are used as they are and nothing lands on this machine: what the
//! client writes is in the overlay's upper directory, read here.
//!
//! - The zero-flag path: the chain host serves the registry file over
//!   HTTP; server 1 runs `broker-client request --nft-contract … --wallet-key
//!   …` with only ETH_RPC_URL, ETH_CHAIN_ID and BLOCKHOST_REGISTRY_URL set,
//!   `install`s wg-broker and pings the internet host; then the file names
//!   another registry and the client refuses it.
//! - Every command line of the field client's documentation and help,
//!   written out below, on server 2: each parses, does what it says and
//!   leaves the files the field client leaves.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use alloy::primitives::Address;
use anyhow::{Context as _, bail, ensure};
use broker_lab::{
    Lab, lab_test,
    netns::Netns,
    process::run_bounded,
    topology::{CHAIN_ADDR, INTERNET_ADDR, UPSTREAM_PREFIX},
};
use ipnet::Ipv6Net;
use serde_json::Value;

const CLIENT_BIN: &str = env!("CARGO_BIN_EXE_broker-client");

/// The registry file served over HTTP from the chain host; its content can
/// change under the clients (a tampered file).
struct RegistryServer {
    url: String,
    body: Arc<Mutex<String>>,
}

impl RegistryServer {
    /// Listens in the namespace of the calling thread (the lab's chain
    /// host); the thread ends with the test process.
    fn start(body: String) -> anyhow::Result<RegistryServer> {
        let listener = TcpListener::bind(SocketAddr::new(CHAIN_ADDR.parse()?, 0))
            .context("binding the registry file server")?;
        let url = format!("http://{}/registry.json", listener.local_addr()?);
        let body = Arc::new(Mutex::new(body));
        let served = Arc::clone(&body);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                // The request line and headers, up to the blank line.
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n")
                    && stream.read(&mut byte).is_ok_and(|n| n == 1)
                {
                    request.push(byte[0]);
                }
                let body = served.lock().unwrap().clone();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Ok(RegistryServer { url, body })
    }

    fn serve(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }
}

fn registry_file(address: Address, chain_id: u64) -> String {
    format!(
        "{{\n  \"registry_contract\": \"{address}\",\n  \"chain_id\": {chain_id},\n  \"network\": \"lab\"\n}}\n"
    )
}

/// A BlockHost server's host as the client sees it: its network namespace
/// and a mount namespace (held by a `sleep` of ours) with /etc overlaid and
/// an empty /run. Killed on drop; the namespace's guard kills the rest
/// (wireguard-go daemons) when the lab drops.
struct Host {
    holder: Child,
    /// The overlay's upper directory: what the client changed under /etc.
    upper: PathBuf,
}

impl Host {
    fn start(ns: &Netns, dir: &Path) -> anyhow::Result<Host> {
        let upper = dir.join("etc-upper");
        let work = dir.join("etc-work");
        std::fs::create_dir_all(&upper)?;
        std::fs::create_dir_all(&work)?;
        let script = format!(
            "mount -t overlay overlay -o lowerdir=/etc,upperdir={},workdir={} /etc && mount -t tmpfs tmpfs /run && echo ready && exec sleep 100000",
            upper.display(),
            work.display()
        );
        let mut holder = ns
            .command("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the mount namespace")?;
        let mut line = String::new();
        BufReader::new(holder.stdout.take().context("its stdout")?).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = holder.kill();
            let _ = holder.wait();
            bail!("the mount namespace did not come up");
        }
        Ok(Host { holder, upper })
    }

    /// `broker-client ARGS` on this host with exactly the environment `env`
    /// (and PATH), at most 200 s.
    fn client(&self, ns: &Netns, env: &[(&str, &str)], args: &[&str]) -> Out {
        let mut cmd = ns.command("nsenter");
        cmd.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()))
            .arg("--")
            .arg(CLIENT_BIN)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().copied());
        let out = run_bounded(cmd, Duration::from_secs(200)).expect("running broker-client");
        Out {
            code: out.status.and_then(|s| s.code()),
            stdout: out.stdout,
            stderr: out.stderr,
        }
    }

    /// A file the client wrote under /etc (`blockhost/…`, `wireguard/…`).
    fn etc(&self, path: &str) -> PathBuf {
        self.upper.join(path)
    }

    fn json(&self, path: &str) -> anyhow::Result<Value> {
        let path = self.etc(path);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// The names of the files in /etc/blockhost, sorted.
    fn blockhost_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.etc("blockhost"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(&self, what: &str) -> anyhow::Result<&Self> {
        ensure!(
            self.code == Some(0),
            "{what}: exit {:?}\n{}\n{}",
            self.code,
            self.stderr,
            self.stdout
        );
        Ok(self)
    }

    /// Failed, with this one last line on stderr.
    fn error(&self, what: &str) -> anyhow::Result<String> {
        ensure!(
            self.code == Some(1),
            "{what}: expected exit 1, got {:?}\n{}\n{}",
            self.code,
            self.stderr,
            self.stdout
        );
        let last = self.stderr.lines().last().unwrap_or_default().to_string();
        ensure!(
            last.starts_with("broker-client: "),
            "{what}: {}",
            self.stderr
        );
        Ok(last)
    }

    /// The command's result line (the first: one that also brought a
    /// tunnel up prints that result after it).
    fn json(&self) -> anyhow::Result<Value> {
        let line = self.stdout.lines().next().unwrap_or_default();
        serde_json::from_str(line).with_context(|| format!("stdout is not JSON: {}", self.stdout))
    }
}

fn in_pool(prefix: &str) -> anyhow::Result<Ipv6Net> {
    let prefix: Ipv6Net = prefix.parse()?;
    let pool: Ipv6Net = UPSTREAM_PREFIX.parse()?;
    ensure!(pool.contains(&prefix), "{prefix} is not in the pool {pool}");
    Ok(prefix)
}

fn interface_up(ns: &Netns, name: &str) -> bool {
    ns.ip(&["link", "show", "dev", name]).is_ok()
}

fn ping_internet(lab: &Lab, ns: &Netns) -> anyhow::Result<()> {
    lab.shell(
        ns,
        &[
            "ping",
            "-n",
            "-c",
            "3",
            "-i",
            "0.2",
            "-w",
            "15",
            INTERNET_ADDR,
        ],
    )
    .map(|_| ())
    .with_context(|| format!("{} cannot reach the internet host", ns.name()))
}

#[test]
fn the_field_clients_command_lines_and_its_zero_flag_path_work_unchanged() {
    lab_test("dropin", async |lab: &mut Lab| {
        lab.start_broker()?;
        let chain_id = lab.chain.chain_id.to_string();
        let registry =
            RegistryServer::start(registry_file(lab.chain.registry, lab.chain.chain_id))?;
        zero_flag_path(lab, &registry, &chain_id)?;
        command_lines(lab, &registry, &chain_id)?;
        lab.stop_broker()?;
        Ok(())
    });
}

/// Server 1, as BlockHost's installer runs the field client.
fn zero_flag_path(lab: &Lab, registry: &RegistryServer, chain_id: &str) -> anyhow::Result<()> {
    let ns = &lab.net.servers[0];
    let server = &lab.servers[0];
    let host = Host::start(ns, &lab.dir.join("host1"))?;
    let env = [
        ("ETH_RPC_URL", lab.rpc_url.as_str()),
        ("ETH_CHAIN_ID", chain_id),
        ("BLOCKHOST_REGISTRY_URL", registry.url.as_str()),
    ];
    let nft = server.nft.to_string();
    let key = server.wallet_key.to_str().context("a UTF-8 path")?;
    // As BlockHost installs /etc/blockhost/deployer.key: 0640, group-read
    // for its components (the group is root's here).
    std::fs::set_permissions(
        &server.wallet_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )?;

    let out = host.client(
        ns,
        &env,
        &["request", "--nft-contract", &nft, "--wallet-key", key],
    );
    out.ok("request with no other flag")?;
    ensure!(
        out.stderr.contains(&registry.url),
        "the registry file was not read: {}",
        out.stderr
    );
    let allocation = host.json("blockhost/broker-allocation.json")?;
    let prefix = in_pool(allocation["prefix"].as_str().unwrap_or_default())?;
    ensure!(allocation["nft_contract"] == nft, "{allocation}");
    let known = host.json("blockhost/known-registry.json")?;
    ensure!(
        known[chain_id]["registry_contract"] == lab.chain.registry.to_string()
            && known[chain_id]["source"] == registry.url,
        "the registry used is not remembered: {known}"
    );
    ensure!(
        host.blockhost_files()
            == [
                "broker-allocation.json",
                "broker-contract.json",
                "known-registry.json",
                "server.key"
            ],
        "{:?}",
        host.blockhost_files()
    );

    let out = host.client(ns, &env, &["install"]);
    let installed = out.ok("install")?.json()?;
    ensure!(
        installed["interface"] == "wg-broker" && installed["gateway_answers"] == true,
        "{installed}"
    );
    ensure!(
        host.etc("wireguard/wg-broker.conf").is_file(),
        "no wg-broker.conf"
    );
    ensure!(interface_up(ns, "wg-broker"), "wg-broker is not up");
    ping_internet(lab, ns)?;
    eprintln!("zero-flag path: {prefix} on wg-broker, the internet host answers");

    // The installer run again: the allocation is recovered, nothing sent.
    let out = host.client(
        ns,
        &env,
        &["request", "--nft-contract", &nft, "--wallet-key", key],
    );
    ensure!(
        out.ok("request run again")?
            .stderr
            .contains("already allocated"),
        "{}",
        out.stderr
    );
    ensure!(host.json("blockhost/broker-allocation.json")? == allocation);

    // The published file now names another registry: refused, with the way
    // out in the message; the flag takes it.
    let other = Address::repeat_byte(0x77);
    registry.serve(registry_file(other, lab.chain.chain_id));
    let line = host
        .client(ns, &env, &["list-brokers"])
        .error("a changed registry")?;
    ensure!(
        line.contains(&format!(
            "names {other}, not {} used before",
            lab.chain.registry
        )) && line.contains("--accept-new-registry"),
        "{line}"
    );
    let nft_args = [
        "request",
        "--nft-contract",
        &nft,
        "--wallet-key",
        key,
        "--force",
    ];
    let line = host
        .client(ns, &env, &nft_args)
        .error("request with a changed registry")?;
    ensure!(line.contains("--accept-new-registry"), "{line}");
    let line = host
        .client(ns, &env, &["list-brokers", "--accept-new-registry"])
        .error("a changed registry, accepted")?;
    ensure!(
        line.contains(&other.to_string()) && line.contains("no contract"),
        "{line}"
    );
    // The allocation is untouched by all this.
    ensure!(host.json("blockhost/broker-allocation.json")? == allocation);

    // A local registry file is preferred to the URL.
    let local = lab.dir.join("registry.json");
    std::fs::write(
        &local,
        registry_file(lab.chain.registry, lab.chain.chain_id),
    )?;
    let copied = ns
        .command("nsenter")
        .arg(format!("--mount=/proc/{}/ns/mnt", host.holder.id()))
        .args(["--", "cp"])
        .arg(&local)
        .arg("/etc/blockhost/registry.json")
        .status()?;
    ensure!(copied.success(), "copying registry.json");
    let out = host.client(ns, &env, &["list-brokers"]);
    ensure!(
        out.ok("list-brokers with a local registry.json")?
            .stdout
            .contains(&lab.chain.requests.to_string()),
        "{}",
        out.stdout
    );
    ensure!(!out.stderr.contains(&registry.url), "{}", out.stderr);
    Ok(())
}

/// What a row checks after its command line ran (exit 0 is checked first).
type Check = fn(&Lab, &Host, &Out) -> anyhow::Result<()>;

/// Server 2: the field client's documented command lines, in the order an
/// operator would run them.
fn command_lines(lab: &Lab, registry: &RegistryServer, chain_id: &str) -> anyhow::Result<()> {
    let ns = &lab.net.servers[1];
    let server = &lab.servers[1];
    let host = Host::start(ns, &lab.dir.join("host2"))?;
    let env = [
        ("ETH_RPC_URL", lab.rpc_url.as_str()),
        ("ETH_CHAIN_ID", chain_id),
        ("BLOCKHOST_REGISTRY_URL", registry.url.as_str()),
    ];
    registry.serve(registry_file(lab.chain.registry, lab.chain.chain_id));
    let values = [
        ("{NFT}", server.nft.to_string()),
        ("{KEY}", server.wallet_key.display().to_string()),
        ("{REGISTRY}", lab.chain.registry.to_string()),
        ("{REQUESTS}", lab.chain.requests.to_string()),
        ("{PUBKEY}", hex::encode(lab.chain.ecies_public)),
        ("{IF}", server.interface.clone()),
        ("{RPC}", lab.rpc_url.clone()),
        ("{CHAIN}", chain_id.to_string()),
    ];
    // (command line as the field client's README and --help give it, check)
    let rows: Vec<(&str, Check)> = vec![
        ("--version", |_, _, out| {
            ensure!(out.stdout.starts_with("broker-client "), "{}", out.stdout);
            Ok(())
        }),
        // BlockHost's installer (finalize.py, `_finalize_ipv6`), which reads
        // `prefix` and `broker_id` from the first stdout line that is JSON.
        (
            "--registry-contract {REGISTRY} request --nft-contract {NFT} --wallet-key {KEY} --configure-wg --timeout 120",
            |lab, host, out| {
                let line = out.json()?;
                let a = host.json("blockhost/broker-allocation.json")?;
                ensure!(
                    line["prefix"] == a["prefix"] && line["broker_id"] == 1,
                    "{line}"
                );
                in_pool(a["prefix"].as_str().unwrap_or_default())?;
                ensure!(
                    interface_up(&lab.net.servers[1], "wg-broker"),
                    "wg-broker is not up"
                );
                Ok(())
            },
        ),
        (
            "release --wallet-key {KEY} --cleanup-wg",
            |lab, host, out| {
                ensure!(out.json()?["released"] == true, "{}", out.stdout);
                ensure!(!host.etc("blockhost/broker-allocation.json").exists());
                ensure!(
                    !interface_up(&lab.net.servers[1], "wg-broker"),
                    "wg-broker is still up"
                );
                Ok(())
            },
        ),
        (
            "--registry-contract {REGISTRY} list-brokers",
            |lab, _, out| {
                ensure!(
                    out.stdout.contains(&lab.chain.requests.to_string()),
                    "{}",
                    out.stdout
                );
                Ok(())
            },
        ),
        (
            "--rpc-url {RPC} --chain-id {CHAIN} --registry-contract {REGISTRY} request --nft-contract {NFT} --wallet-key {KEY} --region lab --timeout 120 --poll-interval 2",
            |lab, host, _| {
                let a = host.json("blockhost/broker-allocation.json")?;
                in_pool(a["prefix"].as_str().unwrap_or_default())?;
                ensure!(a["nft_contract"] == lab.servers[1].nft.to_string(), "{a}");
                let c = host.json("blockhost/broker-contract.json")?;
                ensure!(c["broker_id"] == 1, "{c}");
                ensure!(
                    c["requests_contract"] == lab.chain.requests.to_string(),
                    "{c}"
                );
                Ok(())
            },
        ),
        ("status", |_, host, out| {
            let a = host.json("blockhost/broker-allocation.json")?;
            let prefix = a["prefix"].as_str().unwrap_or_default();
            ensure!(out.stdout.contains(prefix), "{}", out.stdout);
            Ok(())
        }),
        (
            "status --nft-contract {NFT} --requests-contract {REQUESTS}",
            |_, _, out| {
                ensure!(out.stdout.contains("status: approved"), "{}", out.stdout);
                Ok(())
            },
        ),
        ("configure --wg-interface {IF}", |lab, host, out| {
            let iface = &lab.servers[1].interface;
            ensure!(
                interface_up(&lab.net.servers[1], iface),
                "{iface} is not up"
            );
            ensure!(out.json()?["gateway_answers"] == true, "{}", out.stdout);
            // Not persistent: nothing under /etc/wireguard.
            ensure!(!host.etc(&format!("wireguard/{iface}.conf")).exists());
            Ok(())
        }),
        (
            "renew --nft-contract {NFT} --wallet-key {KEY} --poll-interval 2 --wg-interface {IF}",
            |_, _, out| {
                let r = out.json()?;
                ensure!(r["prefix_kept"] == true, "{r}");
                Ok(())
            },
        ),
        ("install --wg-interface {IF}", |lab, host, out| {
            let iface = &lab.servers[1].interface;
            ensure!(out.json()?["gateway_answers"] == true, "{}", out.stdout);
            ensure!(host.etc(&format!("wireguard/{iface}.conf")).is_file());
            ping_internet(lab, &lab.net.servers[1])
        }),
        (
            "release --nft-contract {NFT} --wallet-key {KEY} --requests-contract {REQUESTS} --cleanup-wg --wg-interface {IF}",
            |lab, host, out| {
                let iface = &lab.servers[1].interface;
                ensure!(out.json()?["released"] == true, "{}", out.stdout);
                ensure!(!host.etc("blockhost/broker-allocation.json").exists());
                ensure!(!host.etc(&format!("wireguard/{iface}.conf")).exists());
                ensure!(
                    !interface_up(&lab.net.servers[1], iface),
                    "{iface} is still up"
                );
                Ok(())
            },
        ),
        (
            "release --nft-contract {NFT} --wallet-key {KEY} --requests-contract {REQUESTS} --force",
            |_, _, out| {
                ensure!(out.json()?["released"] == false, "{}", out.stdout);
                Ok(())
            },
        ),
        (
            "request --nft-contract {NFT} --wallet-key {KEY} --requests-contract {REQUESTS} --broker-pubkey {PUBKEY} --configure-wg --wg-interface {IF} --poll-interval 2",
            |lab, host, _| {
                let c = host.json("blockhost/broker-contract.json")?;
                ensure!(c["broker_id"] == 0, "{c}");
                let iface = &lab.servers[1].interface;
                ensure!(
                    interface_up(&lab.net.servers[1], iface),
                    "{iface} is not up"
                );
                Ok(())
            },
        ),
        (
            "release --wallet-key {KEY} --cleanup-wg --wg-interface {IF}",
            |lab, host, _| {
                let iface = &lab.servers[1].interface;
                ensure!(!host.etc("blockhost/broker-allocation.json").exists());
                ensure!(
                    !interface_up(&lab.net.servers[1], iface),
                    "{iface} is still up"
                );
                Ok(())
            },
        ),
    ];
    for (line, check) in rows {
        let mut text = line.to_string();
        for (name, value) in &values {
            text = text.replace(name, value);
        }
        let args: Vec<&str> = text.split_whitespace().collect();
        eprintln!("server2$ broker-client {line}");
        let out = host.client(ns, &env, &args);
        out.ok(line)?;
        check(lab, &host, &out).with_context(|| format!("broker-client {line}"))?;
    }
    // The files the field client leaves (and the remembered registry).
    ensure!(
        host.blockhost_files() == ["broker-contract.json", "known-registry.json", "server.key"],
        "{:?}",
        host.blockhost_files()
    );
    Ok(())
}
