//! `blockhost-broker token create|list|revoke`: the HTTP API's bearer
//! tokens. Through the daemon when it runs (redb locks the database, and the
//! daemon must refuse a revoked token at once); in the database itself when
//! no daemon runs.

use std::{process::ExitCode, time::Duration};

use broker_userspace::{
    api::auth,
    config::Config,
    operator::control::{self, AskError, Request},
    store::{Store, tokens::Token},
};
use clap::Subcommand;

use super::status::{CommonArgs, READ_TIMEOUT, utc};

/// A change waits for the daemon's poll in progress.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token and print it, once: only its hash is kept.
    Create {
        #[command(flatten)]
        common: CommonArgs,
        /// What it is for (unique; `token revoke` takes it).
        #[arg(long)]
        name: String,
        /// It may read (GET), not release (DELETE).
        #[arg(long)]
        read_only: bool,
    },
    /// The tokens: name, mode, when made.
    List {
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Remove a token: the API refuses it from now on.
    Revoke {
        #[command(flatten)]
        common: CommonArgs,
        name: String,
    },
}

pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TokenCommand::Create {
            common,
            name,
            read_only,
        } => create(&common, name, read_only),
        TokenCommand::List { common } => list(&common),
        TokenCommand::Revoke { common, name } => revoke(&common, name),
    }
}

/// The daemon's answer to `request`, or `offline(store)` on the database
/// (read-write when `write`) when no daemon runs.
fn ask_or_open<T: serde::de::DeserializeOwned>(
    config: &Config,
    request: &Request,
    write: bool,
    offline: impl FnOnce(&Store) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let socket = control::socket_path(config);
    let timeout = if write { CHANGE_TIMEOUT } else { READ_TIMEOUT };
    match control::ask(&socket, request, timeout) {
        Err(AskError::NoDaemon { .. }) => {
            let (path, pool) = (&config.database.path, config.broker.pool);
            let store = if write {
                Store::open(path, pool)
            } else {
                Store::open_read_only(path, pool)
            };
            let store = store.map_err(|e| {
                anyhow::anyhow!("no daemon answers on {}, and {e}", socket.display())
            })?;
            offline(&store)
        }
        answer => Ok(answer?),
    }
}

fn create(common: &CommonArgs, name: String, read_only: bool) -> anyhow::Result<ExitCode> {
    let config = common.load()?;
    let secret = create_token(&config, name.clone(), read_only)?;
    if common.json {
        let shown = serde_json::json!({"name": name, "read_only": read_only, "token": secret});
        println!("{}", serde_json::to_string_pretty(&shown)?);
    } else {
        eprintln!(
            "token {name:?} created{}; it is shown this once:",
            if read_only { " (read-only)" } else { "" }
        );
        println!("{secret}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Makes token `name` (through the daemon when it runs) and returns its
/// secret, which exists nowhere else from then on.
pub(super) fn create_token(
    config: &Config,
    name: String,
    read_only: bool,
) -> anyhow::Result<String> {
    anyhow::ensure!(
        !name.is_empty() && name.len() <= 64 && !name.chars().any(char::is_control),
        "a token's name is 1 to 64 characters, none a control character"
    );
    let secret = auth::generate();
    let token = Token {
        name,
        hash: auth::hash(&secret),
        read_only,
        created_at: broker_userspace::store::now(),
    };
    let request = Request::CreateToken {
        token: token.clone(),
    };
    let () = ask_or_open(config, &request, true, |store| {
        anyhow::ensure!(
            store.create_token(&token)?,
            "a token named {:?} exists",
            token.name
        );
        Ok(())
    })?;
    Ok(secret)
}

fn list(common: &CommonArgs) -> anyhow::Result<ExitCode> {
    let config = common.load()?;
    let tokens: Vec<Token> =
        ask_or_open(
            &config,
            &Request::Tokens,
            false,
            |store| Ok(store.tokens()?),
        )?;
    if common.json {
        let shown: Vec<_> = tokens
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "read_only": t.read_only, "created_at": t.created_at}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(ExitCode::SUCCESS);
    }
    let width = tokens
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    println!("{:<width$}  {:<10}  CREATED", "NAME", "MODE");
    for t in &tokens {
        let mode = if t.read_only {
            "read-only"
        } else {
            "read-write"
        };
        println!("{:<width$}  {mode:<10}  {}", t.name, utc(t.created_at));
    }
    Ok(ExitCode::SUCCESS)
}

fn revoke(common: &CommonArgs, name: String) -> anyhow::Result<ExitCode> {
    let config = common.load()?;
    let request = Request::RevokeToken { name: name.clone() };
    let () = ask_or_open(&config, &request, true, |store| {
        anyhow::ensure!(store.revoke_token(&name)?, "no token is named {name:?}");
        Ok(())
    })?;
    eprintln!("token {name:?} revoked");
    Ok(ExitCode::SUCCESS)
}
