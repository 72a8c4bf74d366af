//! `blockhost-broker setup`, from an empty machine state to a broker that
//! answers a request: once at a terminal (a pseudo-terminal driven by
//! rexpect, answering like an operator, mistakes included), once with
//! `--non-interactive` as a script or cloud-init runs it. Each broker is
//! then registered by the registry's owner from what setup printed, started
//! with the configuration setup wrote, and a BlockHost server's
//! `broker-client request` gets its prefix from it.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Stdio,
};

use alloy::signers::local::PrivateKeySigner;
use alloy::{
    network::TransactionBuilder as _,
    primitives::{Address, Bytes, U256},
    providers::Provider as _,
    rpc::types::TransactionRequest,
};
use anyhow::{Context as _, ensure};
use broker_contracts::{BrokerRegistry, keys};
use broker_lab::{Lab, broker::binary, lab_test};
use broker_userspace::config::Config;
use rexpect::session::{PtySession, spawn_command};

/// The pool and size the operator picks (the lab's router routes the /48).
const POOL: &str = "2001:db8:100::/48";
const SIZE: &str = "120";
/// The wallet the wizard is told to let into the manager.
const MANAGER_ADMIN: alloy::primitives::Address =
    alloy::primitives::address!("0x70997970C51812dc3A010C7d01b50e0d17dc79C8");

/// Each expectation waits this long at most (a deployment is mined at once
/// on anvil; the slowest step is the funds wait, which the test ends).
const EXPECT_MS: u64 = 60_000;

/// Where a setup run writes: its configuration and its state directory.
struct Target {
    config: PathBuf,
    state: PathBuf,
}

impl Target {
    fn new(lab: &Lab, name: &str) -> Target {
        let dir = lab.dir.join(name);
        Target {
            config: dir.join("etc/config.toml"),
            state: dir.join("state"),
        }
    }

    /// The flags every run gets: where files go, and the lab's own names
    /// for what a test must clean up (pins, control socket).
    fn args(&self, lab: &Lab) -> Vec<String> {
        let mut args: Vec<String> = vec!["setup".into(), "--config".into()];
        args.push(self.config.display().to_string());
        args.extend(["--state-dir".into(), self.state.display().to_string()]);
        args.extend([
            "--ndp-pin-dir".into(),
            lab.pin_dir().display().to_string(),
            "--control-socket".into(),
            self.config
                .with_file_name("control.sock")
                .display()
                .to_string(),
            // A veth answers natively only when its peer runs XDP too.
            "--ndp-mode".into(),
            "generic".into(),
            // anvil mines a block per transaction, none in between.
            "--confirmations".into(),
            "0".into(),
            "--poll-interval".into(),
            "1".into(),
        ]);
        args
    }
}

fn setup_command(lab: &Lab, args: &[String]) -> anyhow::Result<std::process::Command> {
    let mut cmd = lab.net.broker.command(binary("blockhost-broker")?);
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env_remove("BLOCKHOST_BROKER_CONFIG");
    Ok(cmd)
}

/// Waits for `text`, with what came before it.
fn expect(p: &mut PtySession, text: &str) -> anyhow::Result<String> {
    p.exp_string(text)
        .with_context(|| format!("waiting for {text:?}"))
}

/// Answers the question whose prompt ends in `prompt`.
fn answer(p: &mut PtySession, prompt: &str, line: &str) -> anyhow::Result<()> {
    expect(p, prompt)?;
    p.send_line(line).context("typing")?;
    Ok(())
}

/// The first address (0x and 40 hex digits) after `label` in `text`.
fn address_after(text: &str, label: &str) -> anyhow::Result<Address> {
    let at = text
        .rfind(label)
        .with_context(|| format!("{label:?} in {text}"))?;
    let rest = &text[at + label.len()..];
    let start = rest
        .find("0x")
        .with_context(|| format!("an address after {label:?}"))?;
    rest[start..start + 42]
        .parse()
        .with_context(|| format!("the address after {label:?}"))
}

/// What setup printed for the registry's owner.
struct Registration {
    operator: Address,
    requests: Address,
    pubkey: Bytes,
    region: String,
    capacity: U256,
}

impl Registration {
    fn parse(text: &str) -> anyhow::Result<Registration> {
        let heading = "For the BlockHost registry's owner";
        let text = &text[text
            .find(heading)
            .with_context(|| format!("{heading:?} in {text}"))?..];
        let field = |name: &str| -> anyhow::Result<String> {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
                .with_context(|| format!("{name} in {text}"))
        };
        Ok(Registration {
            operator: field("operator ")?.parse()?,
            requests: field("requestsContract ")?.parse()?,
            pubkey: field("encryptionPubkey ")?.parse()?,
            region: field("region ")?,
            capacity: field("capacity ")?.parse()?,
        })
    }

    /// The registry's owner (anvil account 0) registers the broker; its id.
    async fn register(&self, lab: &Lab) -> anyhow::Result<u64> {
        let registry = BrokerRegistry::new(lab.chain.registry, lab.wallet(0)?);
        registry
            .registerBroker(
                self.operator,
                self.requests,
                self.pubkey.clone(),
                self.region.clone(),
                self.capacity,
            )
            .send()
            .await?
            .get_receipt()
            .await?;
        Ok(registry.getBrokerCount().call().await?.to::<u64>())
    }
}

/// Starts the broker on the configuration setup wrote, has server `server`
/// request a prefix from broker `id`, and checks it is in the pool.
fn serve_a_request(lab: &mut Lab, config: &Path, server: usize, id: u64) -> anyhow::Result<()> {
    lab.config = Config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    lab.config_path = config.to_path_buf();
    lab.start_broker()?;
    let nft = lab.servers[server - 1].nft.to_string();
    let id = id.to_string();
    lab.client(
        server,
        &["request", "--nft-contract", &nft, "--broker-id", &id],
    )?;
    let prefix = lab.prefix(server)?;
    let pool: ipnet::Ipv6Net = POOL.parse()?;
    ensure!(
        pool.contains(&prefix) && prefix.prefix_len().to_string() == SIZE,
        "{prefix} is not a /{SIZE} of {pool}"
    );
    lab.stop_broker()
}

/// Sends `to` 1 ETH from anvil account 0.
async fn fund(lab: &Lab, to: Address) -> anyhow::Result<()> {
    let one_eth = TransactionRequest::default()
        .with_to(to)
        .with_value(U256::from(10u64).pow(U256::from(18)));
    lab.wallet(0)?
        .send_transaction(one_eth)
        .await?
        .get_receipt()
        .await?;
    Ok(())
}

fn mode(path: &Path) -> anyhow::Result<u32> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .permissions()
        .mode()
        & 0o777)
}

#[test]
fn at_a_terminal_setup_goes_from_nothing_to_a_broker_that_answers() {
    lab_test("setup-tty", async |lab| {
        let target = Target::new(lab, "tty");
        let mut cmd = setup_command(lab, &target.args(lab))?;
        // The lab's commands read /dev/null; setup needs the terminal.
        cmd.stdin(Stdio::inherit());
        let mut p = spawn_command(cmd, Some(EXPECT_MS)).context("spawning setup on a pty")?;

        // A URL that is no endpoint is refused and asked again.
        answer(
            &mut p,
            "JSON-RPC endpoint of the chain: ",
            "ftp://192.0.2.2",
        )?;
        expect(&mut p, "! invalid RPC URL")?;
        answer(&mut p, "JSON-RPC endpoint of the chain: ", &lab.rpc_url)?;
        answer(&mut p, &format!("Chain id [{}]: ", lab.chain.chain_id), "")?;
        answer(&mut p, "[generate]: ", "")?;
        let said = expect(&mut p, "(key written to")?;
        let operator = address_after(&said, "operator ")?;
        answer(&mut p, "[deploy]: ", "")?;
        answer(
            &mut p,
            "(`none`: skip) [none]: ",
            &lab.chain.registry.to_string(),
        )?;
        answer(&mut p, "[unspecified]: ", "lab-setup")?;
        answer(&mut p, "[0.01]: ", "")?;
        answer(
            &mut p,
            "Upstream interface (toward the provider's router) [upstream]: ",
            "",
        )?;
        answer(&mut p, "Pool (a prefix, or a number from the list)", POOL)?;
        // A /128 would give clients the router's and the gateway's
        // addresses: refused with the reason, asked again.
        answer(
            &mut p,
            "Allocation size: the prefix length each client gets [64]: ",
            "128",
        )?;
        expect(&mut p, "allocation size /128 is too long: /126 at most")?;
        answer(&mut p, "[64]: ", SIZE)?;
        answer(
            &mut p,
            "WireGuard interface [wg-broker]: ",
            &lab.config.wireguard.interface,
        )?;
        answer(&mut p, "WireGuard port (UDP) [51820]: ", "")?;
        // The default endpoint is the broker's own IPv4 address.
        answer(&mut p, "(host:port) [198.51.100.2:51820]: ", "")?;
        answer(&mut p, "bearer tokens) [y/N]: ", "y")?;
        answer(&mut p, "API address [127.0.0.1:8080]: ", "")?;
        answer(&mut p, "(none: closed) [none]: ", "0x12")?;
        expect(&mut p, "is not a wallet address")?;
        answer(&mut p, "[none]: ", &MANAGER_ADMIN.to_string())?;

        // The new wallet is empty: setup waits until it is funded.
        expect(&mut p, "Waiting for the funds")?;
        fund(lab, operator).await?;
        expect(&mut p, "funded: 1 ETH")?;
        let said = expect(&mut p, "(check-config: ok)")?;
        ensure!(
            said.contains("BrokerRequests at 0x"),
            "no deployment in {said}"
        );
        expect(&mut p, "shown this once")?;
        let registration = expect(&mut p, "Start the broker: blockhost-broker run")?;
        p.exp_eof().context("setup's end")?;
        let status = p.process.wait().context("setup's exit")?;
        ensure!(
            matches!(status, rexpect::process::wait::WaitStatus::Exited(_, 0)),
            "setup: {status:?}"
        );

        let config_dir = target.config.parent().context("the config's directory")?;
        for key in ["operator.key", "ecies.key", "wireguard.key"] {
            ensure!(mode(&config_dir.join(key))? == 0o600, "{key} is not 0600");
        }
        ensure!(
            mode(&target.config)? == 0o640,
            "the configuration is not 0640"
        );
        ensure!(
            keys::read_private_signer(&config_dir.join("operator.key"))?.address() == operator,
            "operator.key is not the wallet setup showed"
        );

        let registration = Registration::parse(&registration)?;
        ensure!(registration.operator == operator && registration.region == "lab-setup");
        ensure!(
            registration.capacity == U256::from((1u128 << 72) - 1),
            "a /48 in /120s, but the broker's own: {}",
            registration.capacity
        );
        let id = registration.register(lab).await?;
        let written = Config::load(&target.config).map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(
            written.manager.admins == [MANAGER_ADMIN],
            "[manager] admins: {:?}",
            written.manager.admins
        );
        serve_a_request(lab, &target.config, 1, id)?;
        // The token setup printed is the API's.
        let tokens = lab.cli(&["token", "list"])?;
        ensure!(tokens.ok()?.contains("setup"), "{tokens:?}");
        Ok(())
    });
}

#[test]
fn non_interactive_setup_takes_flags_and_names_what_is_missing() {
    lab_test("setup-script", async |lab| {
        let target = Target::new(lab, "script");
        let run = |extra: &[&str], lab: &Lab| -> anyhow::Result<std::process::Output> {
            let mut args = target.args(lab);
            args.extend(extra.iter().map(|s| s.to_string()));
            let out = setup_command(lab, &args)?.output()?;
            Ok(out)
        };
        let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();

        // Without a terminal and without --non-interactive: refused at once.
        let out = run(&[], lab)?;
        ensure!(
            out.status.code() == Some(1) && stderr(&out).contains("--non-interactive"),
            "{}",
            stderr(&out)
        );
        // A question without a default names its flag.
        let out = run(&["--non-interactive"], lab)?;
        ensure!(
            out.status.code() == Some(1) && stderr(&out).contains("pass --rpc-url"),
            "{}",
            stderr(&out)
        );

        // An operator key imported from a file (a funded account), a
        // contract deployed, everything else from flags.
        let wallet = PrivateKeySigner::random();
        fund(lab, wallet.address()).await?;
        let imported = lab.dir.join("imported.key");
        keys::write_secret(&imported, &wallet.to_bytes().0)?;
        let chain_id = lab.chain.chain_id.to_string();
        let registry = lab.chain.registry.to_string();
        let interface = lab.config.wireguard.interface.clone();
        let imported = imported.display().to_string();
        let rpc_url = lab.rpc_url.clone();
        let flags = [
            "--non-interactive",
            "--rpc-url",
            &rpc_url,
            "--chain-id",
            &chain_id,
            "--operator-key",
            &imported,
            "--registry-contract",
            &registry,
            "--region",
            "lab-script",
            "--pool",
            POOL,
            "--wg-interface",
            &interface,
            "--wg-endpoint",
            "198.51.100.2:51820",
            "--no-api",
        ];
        // The lab's own requests contract is the lab operator's, not this
        // key's: refused, with why.
        let lab_requests = lab.chain.requests.to_string();
        let mut refused: Vec<&str> = flags.to_vec();
        refused.extend([
            "--allocation-size",
            SIZE,
            "--requests-contract",
            &lab_requests,
        ]);
        let out = run(&refused, lab)?;
        ensure!(
            out.status.code() == Some(1) && stderr(&out).contains("not by the operator"),
            "{}",
            stderr(&out)
        );
        // /127 is refused as a flag too.
        let mut refused: Vec<&str> = flags.to_vec();
        refused.extend(["--allocation-size", "127", "--requests-contract", "deploy"]);
        let out = run(&refused, lab)?;
        ensure!(
            out.status.code() == Some(1)
                && stderr(&out)
                    .contains("--allocation-size: allocation size /127 is too long: /126 at most, since the broker's own prefix (the pool's first) must hold the router's ::1 and the gateway ::2"),
            "{}",
            stderr(&out)
        );

        let mut flags: Vec<&str> = flags.to_vec();
        flags.extend(["--allocation-size", SIZE]);
        let out = run(&flags, lab)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(out.status.success(), "{}\n{stdout}", stderr(&out));
        ensure!(stdout.contains("(check-config: ok)"), "{stdout}");
        ensure!(
            mode(&target.config.with_file_name("operator.key"))? == 0o600,
            "the imported key is not 0600"
        );
        let registration = Registration::parse(&stdout)?;
        ensure!(registration.operator == wallet.address());
        let id = registration.register(lab).await?;
        serve_a_request(lab, &target.config, 2, id)?;

        // Run again: refused without --force; with it, the keys are kept.
        let out = run(&flags, lab)?;
        ensure!(stderr(&out).contains("pass --force"), "{}", stderr(&out));
        let ecies = std::fs::read(target.config.with_file_name("ecies.key"))?;
        let mut again: Vec<&str> = flags.to_vec();
        let requests = registration.requests.to_string();
        again.extend(["--force", "--requests-contract", &requests]);
        let out = run(&again, lab)?;
        ensure!(out.status.success(), "{}", stderr(&out));
        ensure!(
            std::fs::read(target.config.with_file_name("ecies.key"))? == ecies,
            "the ECIES key changed"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            stdout.contains("The registry lists this operator"),
            "{stdout}"
        );
        Ok(())
    });
}
