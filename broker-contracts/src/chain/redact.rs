//! The endpoint as errors show it. Hosted endpoints carry API keys in their
//! path or query, so only the scheme, host and port ever appear in an error:
//! node and transport messages that quote the full URL (in any of its
//! spellings) have it replaced.

use alloy::transports::http::reqwest::Url;

use super::ChainError;

/// Checks that `rpc_url` is an http(s) URL (the only transport built in).
/// A refused URL is quoted up to its host: a mistyped hosted endpoint
/// still carries its API key.
pub fn parse_rpc_url(rpc_url: &str) -> Result<Url, ChainError> {
    let quoted = up_to_host(rpc_url);
    let bad = |reason: String| ChainError::Config(format!("invalid RPC URL `{quoted}`: {reason}"));
    let url: Url = rpc_url.parse().map_err(|e| bad(format!("{e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "the scheme must be http or https, not `{}`",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host".into()));
    }
    Ok(url)
}

/// `scheme://host:port` of `url` (credentials dropped), `/…` marking what
/// is left out; without a scheme, nothing of it (it may be a bare key).
fn up_to_host(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.len() <= "localhost:65535".len() && !url.contains(['/', '?', '#', '@']) {
            url.to_string()
        } else {
            "…".into()
        };
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let left_out = end < rest.len() || host.len() < authority.len();
    format!("{scheme}://{host}{}", if left_out { "/…" } else { "" })
}

/// An RPC endpoint: what errors show of it, and what they must not.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `scheme://host:port`.
    shown: String,
    /// Spellings of the full URL (as given, as parsed), longest first so a
    /// shorter spelling never breaks a longer one.
    hidden: Vec<String>,
    /// Whether the URL has more than `shown` says (a path, a query, a
    /// fragment or credentials): what a printout must then leave out.
    hides_something: bool,
}

impl Endpoint {
    /// The endpoint of `rpc_url` as given, and the URL to connect to.
    pub fn parse(rpc_url: &str) -> Result<(Endpoint, Url), ChainError> {
        let url = parse_rpc_url(rpc_url)?;
        let shown = url.origin().ascii_serialization();
        let mut hidden: Vec<String> = [rpc_url, url.as_str()]
            .into_iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .filter(|u| *u != shown && !u.is_empty())
            .collect();
        hidden.sort_by_key(|u| std::cmp::Reverse(u.len()));
        hidden.dedup();
        let hides_something = url.path() != "/"
            || url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some();
        Ok((
            Endpoint {
                shown,
                hidden,
                hides_something,
            },
            url,
        ))
    }

    /// `scheme://host:port`.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Whether [`Self::shown`] leaves part of the URL out (its path, query,
    /// fragment or credentials, where API keys live).
    pub fn hides_something(&self) -> bool {
        self.hides_something
    }

    /// `text` with every spelling of the full URL replaced by [`Self::shown`].
    pub fn redact(&self, mut text: String) -> String {
        for hidden in &self.hidden {
            text = text.replace(hidden.as_str(), &self.shown);
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for good in ["http://127.0.0.1:8545", "https://rpc.example/v3/abc"] {
            assert!(parse_rpc_url(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "not a url",
            "localhost:8545",
            "ws://127.0.0.1:8545",
            "http://",
        ] {
            let e = parse_rpc_url(bad).unwrap_err();
            assert!(matches!(e, ChainError::Config(_)), "{bad}: {e}");
            assert!(e.to_string().starts_with("invalid RPC URL"), "{e}");
        }
    }

    #[test]
    fn a_refused_url_is_quoted_up_to_its_host() {
        for (url, quoted) in [
            (
                "htps://mainnet.example/v3/secret-key",
                "`htps://mainnet.example/…`",
            ),
            (
                "wss://user:secret@rpc.example:8546",
                "`wss://rpc.example:8546/…`",
            ),
            ("ws://127.0.0.1:8545", "`ws://127.0.0.1:8545`"),
            ("mainnet.example/v3/secret-key", "`…`"),
            ("localhost:8545", "`localhost:8545`"),
        ] {
            let e = parse_rpc_url(url).unwrap_err().to_string();
            assert!(e.contains(quoted), "{url}: {e}");
            assert!(!e.contains("secret"), "{url}: {e}");
        }
    }

    #[test]
    fn only_scheme_host_and_port_are_shown() {
        let (endpoint, _) =
            Endpoint::parse("https://RPC.example:8443/v3/secret-key?token=secret").unwrap();
        assert_eq!(endpoint.shown(), "https://rpc.example:8443");
        // Both the given spelling and the parsed (lower-cased host) one.
        for quoted in [
            "error sending request for url (https://rpc.example:8443/v3/secret-key?token=secret)",
            "error sending request for url (https://RPC.example:8443/v3/secret-key?token=secret/)",
        ] {
            let redacted = endpoint.redact(quoted.to_string());
            assert!(!redacted.contains("secret"), "{redacted}");
            assert!(redacted.contains("https://rpc.example:8443"), "{redacted}");
        }
        // The default port is not shown; a bare origin has nothing to hide.
        assert!(endpoint.hides_something());
        let (endpoint, _) = Endpoint::parse("http://127.0.0.1:8545/").unwrap();
        assert_eq!(endpoint.shown(), "http://127.0.0.1:8545");
        assert!(!endpoint.hides_something());
        for url in [
            "https://RPC.example",
            "https://rpc.example:443/",
            "http://127.0.0.1:8545",
        ] {
            assert!(!Endpoint::parse(url).unwrap().0.hides_something(), "{url}");
        }
        for url in [
            "https://rpc.example/k",
            "https://rpc.example/?k=1",
            "https://rpc.example/#k",
            "https://user:pass@rpc.example",
            "https://user@rpc.example",
        ] {
            assert!(Endpoint::parse(url).unwrap().0.hides_something(), "{url}");
        }
        assert_eq!(
            endpoint.redact("x http://127.0.0.1:8545/ y".into()),
            "x http://127.0.0.1:8545/ y"
        );
        let (endpoint, _) = Endpoint::parse("https://rpc.example/key").unwrap();
        assert_eq!(endpoint.shown(), "https://rpc.example");
        assert_eq!(
            endpoint.redact("at https://rpc.example/key".into()),
            "at https://rpc.example"
        );
    }
}
