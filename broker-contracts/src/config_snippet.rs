//! The `[onchain]` section of a broker configuration, as the tools that
//! deploy contracts print it for the operator to paste.

use std::{fmt, path::Path};

use alloy::primitives::Address;

use crate::chain::redact::Endpoint;

/// The `[onchain]` lines for a deployment; optional keys are left out when
/// unknown (a broker deployed on a real network learns its registry from
/// the BlockHost project, not from its own deployment). The RPC URL is
/// shown as errors show it (scheme, host and port): a printout ends up in
/// terminals' scrollback and logs, and a hosted endpoint's path or query
/// holds its API key, so the operator completes that line.
#[derive(Clone, Copy, Debug)]
pub struct OnchainSnippet<'a> {
    pub rpc_url: &'a str,
    pub chain_id: u64,
    pub registry_contract: Option<Address>,
    pub requests_contract: Address,
    pub operator_key_file: &'a Path,
    pub ecies_key_file: Option<&'a Path>,
}

impl fmt::Display for OnchainSnippet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[onchain]")?;
        match Endpoint::parse(self.rpc_url) {
            Ok((endpoint, _)) if endpoint.hides_something() => writeln!(
                f,
                "rpc_url = {}  # complete it: the URL's path and query (they may hold an API key) are not printed",
                toml_string(endpoint.shown())
            )?,
            _ => writeln!(f, "rpc_url = {}", toml_string(self.rpc_url))?,
        }
        writeln!(f, "chain_id = {}", self.chain_id)?;
        if let Some(registry) = self.registry_contract {
            writeln!(f, "registry_contract = \"{registry}\"")?;
        }
        writeln!(f, "requests_contract = \"{}\"", self.requests_contract)?;
        writeln!(
            f,
            "operator_key_file = {}",
            toml_string(&self.operator_key_file.to_string_lossy())
        )?;
        if let Some(ecies) = self.ecies_key_file {
            writeln!(
                f,
                "ecies_key_file = {}",
                toml_string(&ecies.to_string_lossy())
            )?;
        }
        Ok(())
    }
}

/// A TOML basic string: quotes, backslashes and control characters escaped,
/// so any path or URL pastes as valid TOML.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_keys_and_escaping() {
        let snippet = OnchainSnippet {
            rpc_url: "http://127.0.0.1:8545",
            chain_id: 31337,
            registry_contract: Some(Address::repeat_byte(0x11)),
            requests_contract: Address::repeat_byte(0x22),
            operator_key_file: Path::new("/etc/a \"b\"\\c/operator.key"),
            ecies_key_file: Some(Path::new("/etc/x/ecies.key")),
        };
        assert_eq!(
            snippet.to_string(),
            "[onchain]\n\
             rpc_url = \"http://127.0.0.1:8545\"\n\
             chain_id = 31337\n\
             registry_contract = \"0x1111111111111111111111111111111111111111\"\n\
             requests_contract = \"0x2222222222222222222222222222222222222222\"\n\
             operator_key_file = \"/etc/a \\\"b\\\"\\\\c/operator.key\"\n\
             ecies_key_file = \"/etc/x/ecies.key\"\n"
        );
    }

    #[test]
    fn the_rpc_url_is_shown_without_path_query_or_credentials() {
        for url in [
            "https://rpc.example/v3/SECRET",
            "https://rpc.example/?apikey=SECRET",
            "https://user:SECRET@rpc.example",
        ] {
            let text = OnchainSnippet {
                rpc_url: url,
                chain_id: 1,
                registry_contract: None,
                requests_contract: Address::ZERO,
                operator_key_file: Path::new("k"),
                ecies_key_file: None,
            }
            .to_string();
            assert!(!text.contains("SECRET"), "{text}");
            assert!(
                text.contains("rpc_url = \"https://rpc.example\"  # complete it"),
                "{text}"
            );
        }
    }

    #[test]
    fn optional_keys_are_left_out() {
        let text = OnchainSnippet {
            rpc_url: "https://rpc.example",
            chain_id: 1,
            registry_contract: None,
            requests_contract: Address::ZERO,
            operator_key_file: Path::new("k"),
            ecies_key_file: None,
        }
        .to_string();
        assert!(!text.contains("registry_contract"));
        assert!(!text.contains("ecies_key_file"));
        assert_eq!(text.lines().count(), 5);
    }
}
