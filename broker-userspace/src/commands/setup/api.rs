//! The operator API: whether to serve it, and its first token.

use std::{fmt, net::SocketAddr};

use alloy::primitives::Address;
use anyhow::bail;
use broker_userspace::config::{self, Config};

use super::{Setup, ask::Question, files};

impl Setup<'_> {
    pub(super) fn api(&mut self) -> anyhow::Result<Option<config::Api>> {
        let given = match (self.args.api, self.args.no_api) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        };
        let on = self.ask.yes_no(
            "Serve the HTTP API (status, allocations, release, metrics; bearer tokens)",
            "--api / --no-api",
            given,
            Some(false),
        )?;
        if !on {
            return Ok(None);
        }
        let listen = self.ask.value(
            Question {
                text: "API address",
                flag: "--api-listen",
                given: self.args.api_listen.clone(),
                default: Some(config::DEFAULT_API_LISTEN.into()),
            },
            |text| {
                text.parse::<SocketAddr>()
                    .map_err(|_| format!("{text:?} is not address:port (e.g. 127.0.0.1:8080)"))
            },
        )?;
        let (tls_cert, tls_key) = (
            self.args.api_tls_cert.clone(),
            self.args.api_tls_key.clone(),
        );
        let insecure_plaintext = self.args.api_insecure_plaintext;
        if !listen.ip().is_loopback() && tls_cert.is_none() && !insecure_plaintext {
            bail!(
                "the API on {listen} (not loopback) needs TLS: pass --api-tls-cert and --api-tls-key, or --api-insecure-plaintext to send tokens in clear"
            );
        }
        Ok(Some(config::Api {
            listen,
            tls_cert,
            tls_key,
            insecure_plaintext,
        }))
    }

    /// `[manager] admins`: one wallet, or none (closed). Asked only when
    /// the API is served, as the manager is served on its listener.
    pub(super) fn manager(&mut self, api: bool) -> anyhow::Result<config::Manager> {
        if !api {
            if self
                .args
                .manager_admin
                .as_deref()
                .is_some_and(|a| a != "none")
            {
                bail!(
                    "--manager-admin needs the API (--api): the manager is served on its listener"
                );
            }
            return Ok(config::Manager::default());
        }
        let admin = self.ask.value(
            Question {
                text: "Wallet allowed into the web manager (none: closed)",
                flag: "--manager-admin",
                given: self.args.manager_admin.clone(),
                default: Some("none".into()),
            },
            |text| match text {
                "none" => Ok(Admin(None)),
                _ => text
                    .parse::<Address>()
                    .ok()
                    .filter(|a| !a.is_zero())
                    .map(|a| Admin(Some(a)))
                    .ok_or_else(|| {
                        format!("{text:?} is not a wallet address (0x and 40 hex digits) or none")
                    }),
            },
        )?;
        Ok(config::Manager {
            admins: admin.0.into_iter().collect(),
            ..config::Manager::default()
        })
    }

    /// Makes the API's first token when the API is on and the token does
    /// not exist yet; its secret.
    pub(super) fn api_token(
        &mut self,
        config: &Config,
        owner: Option<&files::User>,
    ) -> anyhow::Result<Option<String>> {
        if config.api.is_none() {
            return Ok(None);
        }
        let name = self.args.api_token_name.clone();
        let secret = match crate::commands::token::create_token(config, name.clone(), false) {
            Ok(secret) => secret,
            Err(e) if e.to_string().contains("exists") => {
                self.ask.say(&format!(
                    "  the API token {name:?} exists (from an earlier run); `blockhost-broker token create` makes another"
                ));
                return Ok(None);
            }
            Err(e) => return Err(e.context("making the API token")),
        };
        files::give(&config.database.path, owner)?;
        Ok(Some(secret))
    }
}

/// The manager's admin as the wizard shows it.
struct Admin(Option<Address>);

impl fmt::Display for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("none"),
        }
    }
}
