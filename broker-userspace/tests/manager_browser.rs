//! The web manager in a real browser: Debian's chromium driven by
//! playwright-core (`tests/browser/manager.mjs`, installed by `cargo xtask
//! setup`) against the daemon in broker-lab's lab, with a test wallet that
//! signs and pays through anvil's unlocked dev accounts. The script runs in
//! the broker's namespace (where the API listens on loopback and anvil is
//! reached through the lab's relay) and reports as JSON; this test then
//! checks the chain and the kernel: the release happened on chain once, the
//! server's tunnel stopped answering, the top-up added exactly its amount.
//! Screenshots go to target/manager-screenshots/. Needs root.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use alloy::primitives::{Address, address};
use anyhow::{Context as _, bail, ensure};
use broker_lab::{Lab, lab_test};
use broker_userspace::ipam::Pool;
use serde_json::Value;

/// anvil's dev accounts 5 (the admin) and 6 (a wallet not listed): unlocked
/// in anvil, which signs for them; the lab uses accounts 0 to 3.
const ADMIN: Address = address!("0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc");
const STRANGER: Address = address!("0x976EA74026E726554dB657fA54763abd0C3a0aa9");
/// An amount no float carries exactly (0.123456789012345678 ETH).
const TOPUP_WEI: u128 = 123_456_789_012_345_678;
/// Short, so that the script sees a session end.
const SESSION_SECS: u64 = 40;
/// The clients' gateway in the pool below.
const GATEWAY: &str = "2001:db8:100::2";
/// The whole script at most.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(420);

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/manager-screenshots")
}

/// Runs the script in the broker's namespace; its report.
async fn run_script(lab: &Lab, prefix: &str) -> anyhow::Result<Value> {
    let dir = browser_dir();
    ensure!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run `cargo xtask setup` (it installs Debian's chromium)"
    );
    ensure!(
        dir.join("node_modules/playwright-core").is_dir(),
        "{} has no playwright-core: run `cargo xtask setup` (npm ci there)",
        dir.display()
    );
    let mut child = lab
        .net
        .broker
        .command("node")
        .arg("manager.mjs")
        .current_dir(&dir)
        .env("MANAGER_URL", "http://127.0.0.1:8080/manager/")
        .env("RPC_URL", &lab.config.onchain.rpc_url)
        .env("CHAIN_ID", lab.config.onchain.chain_id.to_string())
        .env("ADMIN", ADMIN.to_string())
        .env("STRANGER", STRANGER.to_string())
        .env("PREFIX", prefix)
        .env("TOPUP_WEI", TOPUP_WEI.to_string())
        .env("SESSION_SECS", SESSION_SECS.to_string())
        .env("SCREENSHOT_DIR", screenshot_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting node")?;
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            bail!("the browser script ran past {SCRIPT_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let read = |pipe: Option<&mut dyn std::io::Read>| {
        let mut text = String::new();
        if let Some(p) = pipe {
            let _ = p.read_to_string(&mut text);
        }
        text
    };
    let stdout = read(child.stdout.as_mut().map(|p| p as &mut dyn std::io::Read));
    let stderr = read(child.stderr.as_mut().map(|p| p as &mut dyn std::io::Read));
    let report: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("no report from the script ({status}):\n{stdout}\n{stderr}"))?;
    let failed: Vec<&Value> = report["scenarios"]
        .as_array()
        .context("no scenarios")?
        .iter()
        .filter(|s| s["ok"] != true)
        .collect();
    ensure!(
        failed.is_empty() && report.get("page_errors").is_none() && status.success(),
        "the browser scenarios failed ({status}): {failed:#?}\npage errors: {}\n{stderr}",
        report["page_errors"]
    );
    Ok(report)
}

#[test]
fn the_manager_works_in_a_real_browser() {
    lab_test("mgb", async |lab: &mut Lab| {
        lab.config.broker.pool = Pool::new("2001:db8:100::/64".parse()?, 120)?;
        lab.config.manager.admins = vec![ADMIN];
        lab.config.manager.session_secs = SESSION_SECS;
        lab.start_broker_serving(None)?;
        let (client, _, id) = lab.request_from_new_server().await?;
        lab.wait_answered(1).await?;
        let prefix = lab.list_allocations(None)?[0].prefix.to_string();
        // The server's tunnel up and answering: the release must stop it.
        let answer = lab.wait_answer(id, &client, Duration::from_secs(5)).await?;
        lab.bring_up_tunnel(&client, &answer)?;
        ensure!(
            lab.net.servers[0].ping(GATEWAY, 10),
            "the server's tunnel does not answer before the release"
        );
        let before: Vec<String> = lab.operator_calls().await?;

        let report = run_script(lab, &prefix).await?;
        eprintln!("browser report: {report}");

        // The release: once on chain, through the daemon; the kernel's
        // state gone; the server's pings unanswered.
        let after = lab.operator_calls().await?;
        let releases: Vec<&String> = after[before.len()..]
            .iter()
            .filter(|c| c.starts_with("releaseAllocation"))
            .collect();
        ensure!(releases.len() == 1, "on-chain calls after: {after:?}");
        ensure!(lab.list_allocations(None)?.is_empty(), "still allocated");
        ensure!(
            !lab.net.servers[0].ping(GATEWAY, 2),
            "the server's tunnel still answers after the release"
        );
        ensure!(
            report["release_tx"].as_str().is_some_and(|t| t.len() == 66),
            "{report}"
        );
        // The top-up: exactly its amount (no float on the way).
        ensure!(
            report["topup_delta_wei"] == TOPUP_WEI.to_string(),
            "{report}"
        );
        ensure!(
            report["added_chain"]
                .as_str()
                .is_some_and(|a| a.contains(&lab.config.onchain.rpc_url)),
            "{report}"
        );
        for shot in ["login.png", "dashboard.png", "dashboard-phone.png"] {
            let path = screenshot_dir().join(shot);
            let size = std::fs::metadata(&path)
                .with_context(|| format!("{}", path.display()))?
                .len();
            ensure!(size > 1000, "{} is {size} bytes", path.display());
        }
        Ok(())
    });
}
