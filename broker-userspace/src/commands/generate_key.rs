//! `blockhost-broker generate-key -o FILE`: a new ECIES key for the broker.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, bail};
use broker_contracts::{keys, protocol};

#[derive(clap::Args)]
pub struct GenerateKeyArgs {
    /// Where to write the secret key (64 hex digits, mode 0600).
    #[arg(long, short)]
    output: PathBuf,
    /// Replace an existing file. Without it an existing key is never
    /// overwritten: losing it makes every pending request undecryptable.
    #[arg(long)]
    force: bool,
}

pub fn run(args: GenerateKeyArgs) -> anyhow::Result<ExitCode> {
    let (secret, _) = ecies::utils::generate_keypair();
    let secret = secret.serialize();
    let public = protocol::public_key(&secret).context("deriving the public key")?;
    // create_secret refuses an existing file when it makes the name: no
    // window between a check and the write.
    let written = if args.force {
        keys::write_secret(&args.output, &secret)
    } else {
        keys::create_secret(&args.output, &secret)
    };
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "{} exists; pass --force to replace it (requests encrypted to the old key become unreadable)",
            args.output.display()
        ),
        written => written.with_context(|| format!("writing {}", args.output.display()))?,
    }
    eprintln!(
        "wrote the ECIES secret key to {} (mode 0600); its public key, for the registry:",
        args.output.display()
    );
    println!("{}", hex::encode(public));
    Ok(ExitCode::SUCCESS)
}
