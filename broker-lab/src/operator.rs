//! The operator's command line against the lab's broker:
//! `blockhost-broker ARGS --config <the lab's config>` in the broker's
//! namespace, as root or as another user, and what it gave.

use std::{os::unix::fs::PermissionsExt as _, time::Duration};

use anyhow::{Context as _, ensure};
use serde::de::DeserializeOwned;

use crate::{Lab, broker::binary, process::run_bounded};

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
}
