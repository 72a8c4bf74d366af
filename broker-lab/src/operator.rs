//! The operator's command line against the lab's broker:
//! `blockhost-broker ARGS --config <the lab's config>` in the broker's
//! namespace, as root or as another user, and what it gave; and the
//! figures the operator's tests compare with it (requests answered, the
//! kernel's state, releases on chain).

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    time::{Duration, Instant},
};

use alloy::primitives::Address;
use anyhow::{Context as _, ensure};
use broker_userspace::operator::{AllocationView, Status};
use ipnet::Ipv6Net;
use serde::de::DeserializeOwned;

use crate::{
    Lab,
    broker::binary,
    process::run_bounded,
    requests::{CLIENT, Client},
    topology::server_v4,
    wireguard::listen_port,
};

/// The broker's peers (key, prefix), routes through the tunnel, and the
/// NDP map's prefixes, each sorted.
pub type KernelState = (Vec<(String, String)>, Vec<Ipv6Net>, Vec<Ipv6Net>);

/// How long a CLI run may take before it counts as hung.
const CLI_LIMIT: Duration = Duration::from_secs(60);

/// What a CLI run gave.
#[derive(Debug)]
pub struct CliRun {
    /// None when it was killed at the limit, or by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    /// Its stdout, if it exited 0.
    pub fn ok(&self) -> anyhow::Result<&str> {
        ensure!(
            self.code == Some(0),
            "exit {:?}:\n{}\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(&self.stdout)
    }

    /// Its stdout parsed as JSON (`--json`), if it exited 0.
    pub fn json<T: DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_str(self.ok()?).with_context(|| format!("parsing {}", self.stdout))
    }

    /// Exit status 1, with `needle` in stderr.
    pub fn fails_with(&self, needle: &str) -> anyhow::Result<()> {
        ensure!(
            self.code == Some(1),
            "exit {:?}, not 1:\n{}\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        ensure!(
            self.stderr.contains(needle),
            "{needle:?} not in {}",
            self.stderr
        );
        Ok(())
    }
}

impl Lab {
    /// Waits until the broker started last serves its control socket.
    pub fn wait_control_socket(&mut self) -> anyhow::Result<()> {
        self.broker()?
            .wait_log(&["control socket ready"], 1, Duration::from_secs(30))?;
        Ok(())
    }

    /// `blockhost-broker ARGS --config <the lab's config>` in the broker's
    /// namespace, as root (the configuration is the one the last broker
    /// start wrote).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<CliRun> {
        self.cli_as(None, args)
    }

    /// [`Lab::cli`] as user `uid` (its group `uid`, no supplementary
    /// groups) when given, through setpriv. The lab's directories are made
    /// traversable by others for it (the keys stay 0600): the user reads
    /// the configuration and reaches the control socket as an operator's
    /// account would.
    pub fn cli_as(&self, uid: Option<u32>, args: &[&str]) -> anyhow::Result<CliRun> {
        let broker = binary("blockhost-broker")?;
        let mut cmd = match uid {
            Some(uid) => {
                let config_dir = self
                    .config_path
                    .parent()
                    .context("the config's directory")?;
                for dir in [self.dir.as_path(), config_dir] {
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                        .with_context(|| format!("opening {} to others", dir.display()))?;
                }
                let mut cmd = self.net.broker.command("setpriv");
                cmd.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .arg(broker);
                cmd
            }
            None => self.net.broker.command(broker),
        };
        cmd.args(args)
            .arg("--config")
            .arg(&self.config_path)
            .env("NO_COLOR", "1")
            // The control socket is the configuration's, not systemd's.
            .env_remove("RUNTIME_DIRECTORY");
        let out = run_bounded(cmd, CLI_LIMIT)
            .with_context(|| format!("running blockhost-broker {}", args.join(" ")))?;
        Ok(CliRun {
            code: out.status.and_then(|s| s.code()),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    /// Starts the broker (with crash points `failpoints`, see
    /// [`Lab::spawn_crashing`]) and waits until it serves its control
    /// socket.
    pub fn start_broker_serving(&mut self, failpoints: Option<&str>) -> anyhow::Result<()> {
        match failpoints {
            Some(points) => self.spawn_crashing(points).map(drop)?,
            None => self.start_broker().map(drop)?,
        }
        self.wait_control_socket()
    }

    /// `blockhost-broker status --json`: the operator's status (not a
    /// request's, which is [`Lab::status`]).
    pub fn operator_status(&self) -> anyhow::Result<Status> {
        self.cli(&["status", "--json"])?.json()
    }

    /// `blockhost-broker allocations list --json [--state STATE]`.
    pub fn list_allocations(&self, state: Option<&str>) -> anyhow::Result<Vec<AllocationView>> {
        let mut args = vec!["allocations", "list", "--json"];
        args.extend(state.map(|s| ["--state", s]).iter().flatten());
        self.cli(&args)?.json()
    }

    /// A request from a new server of anvil account [`CLIENT`], for an NFT
    /// of its own: the server, the NFT and the request id.
    pub async fn request_from_new_server(&self) -> anyhow::Result<(Client, Address, u64)> {
        let client = Client::new(CLIENT);
        let nft = self.nft(CLIENT).await?;
        let id = self.request_tunnel(&client, nft).await?;
        Ok((client, nft, id))
    }

    /// Waits (30 s at most) until the operator's status shows `answered`
    /// answered requests; that status.
    pub async fn wait_answered(&mut self, answered: u64) -> anyhow::Result<Status> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.operator_status()?;
            if status.contracts[0].requests.answered >= answered {
                return Ok(status);
            }
            self.check_broker()?;
            ensure!(Instant::now() < deadline, "{answered} answers: {status:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// How many `AllocationReleased` events `nft` has.
    pub async fn released_on_chain(&self, nft: Address) -> anyhow::Result<usize> {
        let events = self.released_events().await?;
        Ok(events.iter().filter(|(_, of, _)| *of == nft).count())
    }

    /// Where the broker sees server `number`'s WireGuard packets come from:
    /// the server's address and its interface's listen port.
    pub fn server_endpoint(&self, number: usize) -> anyhow::Result<SocketAddr> {
        let port = listen_port(
            &self.net.servers[number - 1],
            &self.servers[number - 1].interface,
        )?;
        Ok(SocketAddr::from((server_v4(number), port)))
    }

    /// The broker's peers, tunnel routes and NDP prefixes.
    pub fn kernel_state(&self) -> anyhow::Result<KernelState> {
        Ok((self.peers()?, self.routes()?, self.ndp_prefixes()?))
    }
}
