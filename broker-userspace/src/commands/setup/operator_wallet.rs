//! The operator's wallet: generated, imported, or found from an earlier run.

use std::path::{Path, PathBuf};

use alloy::signers::local::PrivateKeySigner;
use anyhow::Context as _;
use broker_contracts::keys;
use broker_userspace::wallet;

use super::{Setup, ask::Question, files};

/// The operator's key: made here, imported, or found from an earlier run.
pub(super) enum Wallet {
    Generate,
    Import(PathBuf, PrivateKeySigner),
}

/// A wallet answer, shown without its key.
pub(super) struct WalletChoice(Wallet);

impl std::fmt::Display for WalletChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Wallet::Generate => f.write_str("generate a new key"),
            Wallet::Import(path, signer) => {
                write!(f, "import {} ({})", path.display(), signer.address())
            }
        }
    }
}

impl Setup<'_> {
    pub(super) fn operator_wallet(
        &mut self,
        path: &Path,
        owner: Option<&files::User>,
    ) -> anyhow::Result<PrivateKeySigner> {
        if path.exists() {
            let signer = keys::read_private_signer(path).with_context(|| {
                format!("the operator key {} from an earlier run", path.display())
            })?;
            if let Some(given) = &self.args.operator_key
                && given != "generate"
            {
                let imported = keys::read_private_signer(Path::new(given))
                    .with_context(|| format!("--operator-key {given}"))?;
                anyhow::ensure!(
                    imported.address() == signer.address(),
                    "{} already holds the key of {}, not {}'s {}: move it away first (whatever its address holds is lost with it)",
                    path.display(),
                    signer.address(),
                    given,
                    imported.address()
                );
            }
            self.ask.say(&format!(
                "  operator {} (the key in {}, kept)",
                signer.address(),
                path.display()
            ));
            return Ok(signer);
        }
        let choice = self.ask.value(
            Question {
                text: "Operator wallet: `generate` a new key, or the path of a key file to import",
                flag: "--operator-key",
                given: self.args.operator_key.clone(),
                default: Some("generate".into()),
            },
            |text| {
                if text == "generate" {
                    return Ok(WalletChoice(Wallet::Generate));
                }
                let source = PathBuf::from(text);
                keys::read_private_signer(&source)
                    .map(|signer| WalletChoice(Wallet::Import(source, signer)))
                    .map_err(|e| e.to_string())
            },
        )?;
        let signer = match choice.0 {
            Wallet::Generate => {
                wallet::generate(path, false)?;
                keys::read_private_signer(path)?
            }
            Wallet::Import(_, signer) => {
                keys::create_secret(path, &signer.to_bytes().0)
                    .with_context(|| format!("writing {}", path.display()))?;
                signer
            }
        };
        files::give(path, owner)?;
        self.ask.say(&format!(
            "  operator {} (key written to {}, mode 0600)",
            signer.address(),
            path.display()
        ));
        Ok(signer)
    }
}
