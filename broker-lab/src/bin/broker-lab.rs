//! `broker-lab demo`: the whole system brought up in network namespaces,
//! narrated step by step, then left running for the reader to try by hand
//! until Ctrl-C (`--exit`: torn down at once). `cargo xtask demo` builds the
//! binaries and runs it.

use std::{
    fs,
    os::unix::fs::DirBuilderExt as _,
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use broker_lab::{
    Lab, Narrator, Options, broker::binary, netns::Netns, pins::TestPins, scenario::server_address,
    wireguard,
};
use clap::Parser;

/// Every name the demo gives starts with this.
const NAMES: &str = "bbdemo-";
/// Keys, configurations, the broker's database and logs (tmpfs).
const DIR: &str = "/run/bbdemo";

#[derive(Parser)]
#[command(about = "The whole blockhost-broker system in network namespaces (needs root)")]
enum Cli {
    /// A chain, the provider's router, an internet host, the broker and a
    /// BlockHost server; the server gets a prefix and the internet host
    /// reaches it. Left running for you to try until Ctrl-C.
    Demo {
        /// Tear everything down at once instead of waiting for Ctrl-C.
        #[arg(long)]
        exit: bool,
    },
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() {
    let Cli::Demo { exit } = Cli::parse();
    if let Err(e) = demo(exit) {
        eprintln!("\nbroker-lab: {e:#}");
        std::process::exit(1);
    }
}

fn demo(exit: bool) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and loads XDP programs: run it as root");
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    remove_leftovers();
    fs::DirBuilder::new()
        .mode(0o700)
        .create(DIR)
        .with_context(|| format!("creating {DIR}"))?;
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(exit));
    println!("\nTearing down (namespaces, processes, pins, files)");
    let _ = fs::remove_dir_all(DIR);
    result
}

async fn run(exit: bool) -> anyhow::Result<()> {
    let options = Options {
        names: NAMES.into(),
        dir: DIR.into(),
    };
    let mut lab = Lab::start(options, Narrator::new(true)).await?;
    interrupted()?;
    lab.start_broker()?;
    interrupted()?;
    let prefix = lab.connect(1)?;
    interrupted()?;
    lab.check_traffic(1)?;
    interrupted()?;
    try_it_yourself(&lab, server_address(prefix).to_string())?;
    if exit {
        return Ok(());
    }
    println!("\nPress Ctrl-C to tear everything down.");
    while !STOP.load(Ordering::SeqCst) {
        lab.check_broker()?;
        thread::sleep(Duration::from_millis(200));
    }
    println!();
    Ok(())
}

fn interrupted() -> anyhow::Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn try_it_yourself(lab: &Lab, server: String) -> anyhow::Result<()> {
    let ns = |n: &str| format!("ip netns exec {NAMES}{n}");
    let broker = binary("blockhost-broker")?.display().to_string();
    let client = binary("broker-client")?.display().to_string();
    let [server1, server2] = [&lab.servers[0], &lab.servers[1]];
    let api = lab
        .config
        .api
        .as_ref()
        .context("the lab's broker has an [api]")?
        .listen;
    lab.narrator
        .heading("Try it yourself (as root, in another terminal)");
    println!(
        "  export BLOCKHOST_RPC_URL={} BLOCKHOST_CHAIN_ID={} BLOCKHOST_REGISTRY_CONTRACT={}",
        lab.rpc_url, lab.chain.chain_id, lab.chain.registry
    );
    let lines = [
        (
            format!("{} ping {server}", ns("internet")),
            "the internet reaches server1",
        ),
        (
            format!("{} ip -6 neigh show dev to-broker", ns("router")),
            "resolved by the XDP responder",
        ),
        (
            format!("{} wg show", ns("broker")),
            "the broker's WireGuard peers",
        ),
        (
            format!("{broker} ndp --pin-dir {} status", lab.pin_dir().display()),
            "the responder's prefixes and counters",
        ),
        (
            format!(
                "{} {broker} allocations list --config {}",
                ns("broker"),
                lab.config_path.display()
            ),
            "the allocations: peer state, last handshake, the client's endpoint",
        ),
        (
            format!("{} curl -s http://{api}/metrics", ns("broker")),
            "the broker's Prometheus metrics (open on loopback)",
        ),
        (
            format!(
                "{} {client} --config-dir {} status",
                ns("server1"),
                server1.config_dir.display()
            ),
            "server1's allocation, and its request on chain",
        ),
        (
            format!(
                "{} {client} --config-dir {} request --nft-contract {} --wallet-key {}",
                ns("server2"),
                server2.config_dir.display(),
                server2.nft,
                server2.wallet_key.display()
            ),
            "server2 asks for a prefix of its own (then `install --service-manager direct`)",
        ),
        (
            format!("less {}", lab.dir.join("broker.log").display()),
            "the broker's log",
        ),
    ];
    for (command, what) in lines {
        println!("  {command}\n      # {what}");
    }
    Ok(())
}

/// What an earlier demo left when it was killed: its namespaces (with the
/// processes in them), WireGuard sockets, pins and files.
fn remove_leftovers() {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for ns in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|ns| ns.starts_with(NAMES))
        {
            println!("removing namespace {ns} of an earlier demo");
            // Opening it as a guard kills what runs inside and deletes it.
            if let Ok(guard) = Netns::adopt(ns) {
                drop(guard);
            }
        }
    }
    for name in ["wg", "s1", "s2"] {
        wireguard::stop(&format!("{NAMES}{name}"));
    }
    let pins = format!("/sys/fs/bpf/{}", NAMES.trim_end_matches('-'));
    if Path::new(&pins).exists() {
        println!("removing the pins of an earlier demo ({pins})");
        drop(TestPins::at(pins));
    }
    let _ = fs::remove_dir_all(DIR);
}
