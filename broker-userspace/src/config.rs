//! `/etc/blockhost-broker/config.toml`: read strictly, checked whole.
//!
//! Unknown keys are errors (a misspelt key must not silently fall back to a
//! default), and so are malformed prefixes, an allocation size not longer
//! than the upstream prefix, and key files that are missing, malformed or
//! readable by group or others. [`Config::load`] reports every problem it
//! finds, one line each, rather than stopping at the first.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use alloy::{primitives::Address, transports::http::reqwest::Url};
use broker_contracts::{error_text::describe, keys};
use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize, Serializer};

use crate::{ipam::Pool, ndp::AttachMode};

pub const DEFAULT_PATH: &str = "/etc/blockhost-broker/config.toml";

/// Everything wrong with a configuration file, one problem per line.
#[derive(Debug)]
pub struct ConfigErrors {
    pub path: PathBuf,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {p}", self.path.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// The file as written. Validated into `Config` below.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    broker: RawBroker,
    wireguard: RawWireguard,
    #[serde(default)]
    api: RawApi,
    database: RawDatabase,
    onchain: RawOnchain,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    upstream_interface: String,
    upstream_prefix: String,
    allocation_size: u8,
    #[serde(default = "default_ndp_mode")]
    ndp_mode: String,
    #[serde(default = "default_true")]
    ndp_router_flag: bool,
    #[serde(default = "default_pin_dir")]
    ndp_pin_dir: PathBuf,
    #[serde(default)]
    dns_zone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWireguard {
    #[serde(default = "default_wg_interface")]
    interface: String,
    #[serde(default = "default_wg_port")]
    listen_port: u16,
    endpoint: String,
    private_key_file: PathBuf,
    #[serde(default = "default_implementation")]
    implementation: String,
    #[serde(default = "default_handshake_timeout")]
    handshake_timeout_secs: u64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApi {
    #[serde(default)]
    listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOnchain {
    rpc_url: String,
    chain_id: u64,
    requests_contract: String,
    #[serde(default)]
    registry_contract: Option<String>,
    #[serde(default)]
    legacy_requests_contracts: Vec<String>,
    operator_key_file: PathBuf,
    ecies_key_file: PathBuf,
    #[serde(default = "default_poll_interval")]
    poll_interval_secs: u64,
    #[serde(default = "default_confirmations")]
    confirmations: u64,
    #[serde(default = "default_start_request_id")]
    start_request_id: u64,
    #[serde(default = "default_max_requests_per_poll")]
    max_requests_per_poll: u64,
}

fn default_ndp_mode() -> String {
    "auto".into()
}
fn default_true() -> bool {
    true
}
fn default_pin_dir() -> PathBuf {
    crate::ndp::DEFAULT_PIN_DIR.into()
}
fn default_wg_interface() -> String {
    "wg-broker".into()
}
fn default_wg_port() -> u16 {
    51820
}
fn default_implementation() -> String {
    "auto".into()
}
fn default_handshake_timeout() -> u64 {
    120
}
fn default_poll_interval() -> u64 {
    5
}
fn default_confirmations() -> u64 {
    1
}
fn default_start_request_id() -> u64 {
    1
}
fn default_max_requests_per_poll() -> u64 {
    50
}

/// How WireGuard interfaces are driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WireguardImplementation {
    /// The kernel module when present, else wireguard-go.
    Auto,
    Kernel,
    Userspace,
}

/// A checked configuration. It serialises to the file it was read from
/// (`toml::to_string` gives what [`Config::load`] reads back as the same
/// `Config`), which is how tests and set-up write one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    pub broker: Broker,
    pub wireguard: Wireguard,
    /// `[api] listen`: address of the local status API, if enabled.
    #[serde(
        rename = "api",
        serialize_with = "api_table",
        skip_serializing_if = "Option::is_none"
    )]
    pub api_listen: Option<SocketAddr>,
    /// `[database] path`.
    #[serde(rename = "database", serialize_with = "database_table")]
    pub database_path: PathBuf,
    pub onchain: Onchain,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Broker {
    pub upstream_interface: String,
    /// `upstream_prefix` and `allocation_size`.
    #[serde(flatten, serialize_with = "pool_keys")]
    pub pool: Pool,
    pub ndp_mode: AttachMode,
    pub ndp_router_flag: bool,
    pub ndp_pin_dir: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_zone: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Wireguard {
    pub interface: String,
    pub listen_port: u16,
    /// `host:port` that clients connect to (the response's `brokerEndpoint`).
    pub endpoint: String,
    pub private_key_file: PathBuf,
    pub implementation: WireguardImplementation,
    pub handshake_timeout_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Onchain {
    pub rpc_url: String,
    pub chain_id: u64,
    pub requests_contract: Address,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_contract: Option<Address>,
    pub legacy_requests_contracts: Vec<Address>,
    pub operator_key_file: PathBuf,
    pub ecies_key_file: PathBuf,
    pub poll_interval_secs: u64,
    pub confirmations: u64,
    pub start_request_id: u64,
    pub max_requests_per_poll: u64,
}

// The keys of the file that `Config` holds in other shapes.

fn api_table<S: Serializer>(listen: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Api<'a> {
        listen: &'a Option<SocketAddr>,
    }
    Api { listen }.serialize(s)
}

fn database_table<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Database<'a> {
        path: &'a Path,
    }
    Database { path }.serialize(s)
}

fn pool_keys<S: Serializer>(pool: &Pool, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct PoolKeys {
        upstream_prefix: Ipv6Net,
        allocation_size: u8,
    }
    PoolKeys {
        upstream_prefix: pool.upstream(),
        allocation_size: pool.allocation_size(),
    }
    .serialize(s)
}

impl Config {
    /// Reads and checks `path`, reporting every problem found.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let fail = |problems: Vec<String>| ConfigErrors {
            path: path.to_path_buf(),
            problems,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(vec![e.to_string()]))?;
        let raw: RawConfig =
            toml::from_str(&text).map_err(|e| fail(vec![toml_error(&text, &e)]))?;
        let mut problems = Vec::new();
        let config = check(raw, &mut problems);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(fail(problems)),
        }
    }
}

/// toml's message on one line, with the line it points at.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().lines().next().unwrap_or("invalid TOML").trim();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message.to_string(),
    }
}

fn check(raw: RawConfig, problems: &mut Vec<String>) -> Option<Config> {
    let mut problem = |s: String| problems.push(s);

    let b = raw.broker;
    check_interface_name(
        "[broker] upstream_interface",
        &b.upstream_interface,
        &mut problem,
    );
    let pool = match b.upstream_prefix.parse::<Ipv6Net>() {
        Ok(net) if net.network() != net.addr() => {
            problem(format!(
                "[broker] upstream_prefix {net} has host bits set; did you mean {}?",
                net.trunc()
            ));
            None
        }
        Ok(net) => match Pool::new(net, b.allocation_size) {
            Ok(pool) => Some(pool),
            Err(e) => {
                problem(format!("[broker] allocation_size: {e}"));
                None
            }
        },
        Err(_) => {
            problem(format!(
                "[broker] upstream_prefix \"{}\" is not an IPv6 prefix",
                b.upstream_prefix
            ));
            None
        }
    };
    let ndp_mode = match b.ndp_mode.as_str() {
        "auto" => Some(AttachMode::Auto),
        "driver" => Some(AttachMode::Driver),
        "generic" => Some(AttachMode::Generic),
        "tc" => Some(AttachMode::Tc),
        other => {
            problem(format!(
                "[broker] ndp_mode \"{other}\" is not one of auto, driver, generic, tc"
            ));
            None
        }
    };

    let w = raw.wireguard;
    check_interface_name("[wireguard] interface", &w.interface, &mut problem);
    if w.interface == b.upstream_interface {
        problem("[wireguard] interface must differ from [broker] upstream_interface".into());
    }
    if w.listen_port == 0 {
        problem("[wireguard] listen_port must not be 0".into());
    }
    if !valid_endpoint(&w.endpoint) {
        problem(format!(
            "[wireguard] endpoint \"{}\" is not host:port (e.g. 203.0.113.10:51820 or [2001:db8::1]:51820)",
            w.endpoint
        ));
    }
    check_key_file(
        "[wireguard] private_key_file",
        &w.private_key_file,
        KeyKind::Wireguard,
        &mut problem,
    );
    let implementation = match w.implementation.as_str() {
        "auto" => Some(WireguardImplementation::Auto),
        "kernel" => Some(WireguardImplementation::Kernel),
        "userspace" => Some(WireguardImplementation::Userspace),
        other => {
            problem(format!(
                "[wireguard] implementation \"{other}\" is not one of auto, kernel, userspace"
            ));
            None
        }
    };
    if w.handshake_timeout_secs < 10 {
        problem("[wireguard] handshake_timeout_secs must be at least 10".into());
    }

    let api_listen = match raw.api.listen {
        None => None,
        Some(s) => match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                problem(format!("[api] listen \"{s}\" is not an address:port"));
                None
            }
        },
    };

    let o = raw.onchain;
    match o.rpc_url.parse::<Url>() {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
        _ => problem(format!(
            "[onchain] rpc_url \"{}\" is not an http(s) URL",
            o.rpc_url
        )),
    }
    let requests_contract = parse_address(
        "[onchain] requests_contract",
        &o.requests_contract,
        &mut problem,
    );
    let registry_contract = o
        .registry_contract
        .as_deref()
        .map(|s| parse_address("[onchain] registry_contract", s, &mut problem));
    let mut legacy = Vec::new();
    for s in &o.legacy_requests_contracts {
        if let Some(a) = parse_address("[onchain] legacy_requests_contracts", s, &mut problem) {
            if Some(a) == requests_contract || legacy.contains(&a) {
                problem(format!(
                    "[onchain] legacy_requests_contracts lists {a} twice or with requests_contract"
                ));
            }
            legacy.push(a);
        }
    }
    check_key_file(
        "[onchain] operator_key_file",
        &o.operator_key_file,
        KeyKind::Secp256k1,
        &mut problem,
    );
    check_key_file(
        "[onchain] ecies_key_file",
        &o.ecies_key_file,
        KeyKind::Secp256k1,
        &mut problem,
    );
    if o.poll_interval_secs == 0 {
        problem("[onchain] poll_interval_secs must be at least 1".into());
    }
    if o.max_requests_per_poll == 0 {
        problem("[onchain] max_requests_per_poll must be at least 1".into());
    }
    if o.start_request_id == 0 {
        problem("[onchain] start_request_id must be at least 1 (request ids start at 1)".into());
    }

    Some(Config {
        broker: Broker {
            upstream_interface: b.upstream_interface,
            pool: pool?,
            ndp_mode: ndp_mode?,
            ndp_router_flag: b.ndp_router_flag,
            ndp_pin_dir: b.ndp_pin_dir,
            dns_zone: b.dns_zone,
        },
        wireguard: Wireguard {
            interface: w.interface,
            listen_port: w.listen_port,
            endpoint: w.endpoint,
            private_key_file: w.private_key_file,
            implementation: implementation?,
            handshake_timeout_secs: w.handshake_timeout_secs,
        },
        api_listen,
        database_path: raw.database.path,
        onchain: Onchain {
            rpc_url: o.rpc_url,
            chain_id: o.chain_id,
            requests_contract: requests_contract?,
            registry_contract: registry_contract.flatten(),
            legacy_requests_contracts: legacy,
            operator_key_file: o.operator_key_file,
            ecies_key_file: o.ecies_key_file,
            poll_interval_secs: o.poll_interval_secs,
            confirmations: o.confirmations,
            start_request_id: o.start_request_id,
            max_requests_per_poll: o.max_requests_per_poll,
        },
    })
}

fn check_interface_name(what: &str, name: &str, problem: &mut impl FnMut(String)) {
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
        problem(format!(
            "{what} \"{name}\" is not an interface name (1 to 15 characters, no '/' or spaces)"
        ));
    }
}

fn valid_endpoint(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p != 0)
}

fn parse_address(what: &str, s: &str, problem: &mut impl FnMut(String)) -> Option<Address> {
    match s.parse::<Address>() {
        Ok(a) if a != Address::ZERO => Some(a),
        Ok(_) => {
            problem(format!("{what} must not be the zero address"));
            None
        }
        Err(_) => {
            problem(format!(
                "{what} \"{s}\" is not an address (0x and 40 hex digits)"
            ));
            None
        }
    }
}

enum KeyKind {
    /// 64 hex digits (operator key, ECIES key).
    Secp256k1,
    /// `wg genkey` base64.
    Wireguard,
}

/// The file exists, only its owner can read it, and it holds a key of the
/// expected form. Problems name the file, never its content.
fn check_key_file(what: &str, path: &Path, kind: KeyKind, problem: &mut impl FnMut(String)) {
    let checked = keys::check_private(path)
        .map_err(|e| describe(&e))
        .and_then(|()| match kind {
            KeyKind::Secp256k1 => {
                let secret = keys::read_secret(path).map_err(|e| describe(&e))?;
                ecies::SecretKey::parse_slice(&secret)
                    .map(drop)
                    .map_err(|_| format!("{} is not a valid secp256k1 secret key", path.display()))
            }
            KeyKind::Wireguard => std::fs::read_to_string(path)
                .ok()
                .filter(|s| wireguard_control::Key::from_base64(s.trim()).is_ok())
                .map(drop)
                .ok_or_else(|| {
                    format!(
                        "{} does not hold a WireGuard private key (`wg genkey` format)",
                        path.display()
                    )
                }),
        });
    if let Err(message) = checked {
        problem(format!("{what}: {message}"));
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let f = Fixture { dir };
            f.key("ecies.key", &"11".repeat(32), 0o600);
            f.key("operator.key", &format!("0x{}", "22".repeat(32)), 0o600);
            let wg = wireguard_control::Key::generate_private().to_base64();
            f.key("wg.key", &wg, 0o600);
            f
        }

        fn key(&self, name: &str, content: &str, mode: u32) {
            let path = self.dir.path().join(name);
            std::fs::write(&path, format!("{content}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }

        fn text(&self) -> String {
            let d = self.dir.path().display();
            format!(
                r#"
[broker]
upstream_interface = "eth0"
upstream_prefix = "2001:db8:100::/48"
allocation_size = 120

[wireguard]
endpoint = "203.0.113.10:51820"
private_key_file = "{d}/wg.key"

[database]
path = "{d}/broker.redb"

[onchain]
rpc_url = "http://127.0.0.1:8545"
chain_id = 31337
requests_contract = "0x8464135c8F25Da09e49BC8782676a84730C318bC"
legacy_requests_contracts = ["0x5FbDB2315678afecb367f032d93F642f64180aa3"]
operator_key_file = "{d}/operator.key"
ecies_key_file = "{d}/ecies.key"
"#
            )
        }

        fn load(&self, text: &str) -> Result<Config, ConfigErrors> {
            let path = self.dir.path().join("config.toml");
            std::fs::write(&path, text).unwrap();
            Config::load(&path)
        }

        fn problems(&self, text: &str) -> Vec<String> {
            self.load(text).unwrap_err().problems
        }
    }

    #[test]
    fn loads_a_valid_file_with_defaults() {
        let f = Fixture::new();
        let c = f.load(&f.text()).unwrap();
        assert_eq!(c.broker.pool.allocation_size(), 120);
        assert_eq!(c.broker.ndp_mode, AttachMode::Auto);
        assert_eq!(c.wireguard.interface, "wg-broker");
        assert_eq!(c.wireguard.handshake_timeout_secs, 120);
        assert_eq!(c.onchain.legacy_requests_contracts.len(), 1);
        assert_eq!(c.onchain.poll_interval_secs, 5);
        assert_eq!(c.api_listen, None);
    }

    /// What `toml::to_string` writes, `Config::load` reads back as the same
    /// `Config`, and writing that again gives the same text: with the
    /// defaults, and with every optional key set to something else.
    #[test]
    fn a_serialised_config_loads_as_itself() {
        let f = Fixture::new();
        let all_keys = f
            .text()
            .replace(
                "allocation_size = 120",
                "allocation_size = 64\nndp_mode = \"tc\"\nndp_router_flag = false\n\
                 ndp_pin_dir = \"/sys/fs/bpf/other\"\ndns_zone = \"tunnels.example\"",
            )
            .replace(
                "[wireguard]",
                "[wireguard]\ninterface = \"wg9\"\nlisten_port = 51999\n\
                 implementation = \"userspace\"\nhandshake_timeout_secs = 30",
            )
            .replace("[database]", "[api]\nlisten = \"[::1]:8080\"\n\n[database]")
            .replace(
                "chain_id = 31337",
                "chain_id = 31337\nregistry_contract = \"0x5FbDB2315678afecb367f032d93F642f64180aa3\"\n\
                 poll_interval_secs = 2\nconfirmations = 3\nstart_request_id = 7\n\
                 max_requests_per_poll = 9",
            );
        for text in [f.text(), all_keys.clone()] {
            let config = f.load(&text).unwrap();
            let written = toml::to_string(&config).unwrap();
            let reloaded = f
                .load(&written)
                .unwrap_or_else(|e| panic!("{e}\n{written}"));
            assert_eq!(reloaded, config, "{written}");
            assert_eq!(toml::to_string(&reloaded).unwrap(), written);
        }
        let c = f.load(&all_keys).unwrap();
        assert_eq!(c.broker.ndp_mode, AttachMode::Tc);
        assert_eq!(
            c.wireguard.implementation,
            WireguardImplementation::Userspace
        );
        assert_eq!(c.api_listen, Some("[::1]:8080".parse().unwrap()));
        assert!(c.onchain.registry_contract.is_some());
        assert_eq!(c.onchain.max_requests_per_poll, 9);
    }

    #[test]
    fn unknown_keys_are_errors_with_their_line() {
        let f = Fixture::new();
        let text = f.text().replace(
            "allocation_size = 120",
            "allocation_size = 120\nalocation = 1",
        );
        let p = f.problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("line 6: unknown field `alocation`"),
            "{p:?}"
        );
        let p = f.problems(&(f.text() + "\n[extra]\nx = 1\n"));
        assert!(p[0].contains("unknown field `extra`"), "{p:?}");
    }

    #[test]
    fn every_problem_is_reported_once_on_its_own_line() {
        let f = Fixture::new();
        f.key("ecies.key", &"11".repeat(32), 0o644);
        f.key("operator.key", "not hex", 0o600);
        let text = f
            .text()
            .replace("2001:db8:100::/48", "2001:db8:100::/4x")
            .replace("203.0.113.10:51820", "no-port")
            .replace("0x8464135c8F25Da09e49BC8782676a84730C318bC", "0x1234");
        let p = f.problems(&text);
        let expect = [
            "upstream_prefix \"2001:db8:100::/4x\" is not an IPv6 prefix",
            "endpoint \"no-port\" is not host:port",
            "requests_contract \"0x1234\" is not an address",
            "operator_key_file: key file",
            "ecies_key_file: key file",
        ];
        assert_eq!(p.len(), expect.len(), "{p:#?}");
        for e in expect {
            assert!(p.iter().any(|line| line.contains(e)), "{e}: {p:#?}");
        }
        assert!(p.iter().all(|line| !line.contains('\n')));
        assert!(
            p.iter().any(|l| l.contains("readable by group or others")),
            "{p:#?}"
        );
        let shown = ConfigErrors {
            path: "/c".into(),
            problems: p,
        }
        .to_string();
        assert!(!shown.contains("not hex"), "key content leaked: {shown}");
    }

    #[test]
    fn allocation_size_must_be_longer_than_the_upstream_prefix() {
        let f = Fixture::new();
        for (size, ok) in [
            ("48", false),
            ("40", false),
            ("49", true),
            ("128", true),
            ("129", false),
        ] {
            let text = f.text().replace(
                "allocation_size = 120",
                &format!("allocation_size = {size}"),
            );
            assert_eq!(f.load(&text).is_ok(), ok, "/{size}");
        }
        let text = f.text().replace("2001:db8:100::/48", "2001:db8:100::1/48");
        assert!(f.problems(&text)[0].contains("did you mean 2001:db8:100::/48?"));
    }

    #[test]
    fn missing_and_malformed_key_files() {
        let f = Fixture::new();
        std::fs::remove_file(f.dir.path().join("wg.key")).unwrap();
        let p = f.problems(&f.text());
        assert!(
            p[0].contains("private_key_file") && p[0].contains("No such file"),
            "{p:?}"
        );
        f.key("wg.key", "short", 0o600);
        let p = f.problems(&f.text());
        assert!(p[0].contains("WireGuard private key"), "{p:?}");
        f.key("ecies.key", &"00".repeat(32), 0o600);
        f.key(
            "wg.key",
            &wireguard_control::Key::generate_private().to_base64(),
            0o600,
        );
        let p = f.problems(&f.text());
        assert!(p[0].contains("not a valid secp256k1 secret key"), "{p:?}");
    }
}
