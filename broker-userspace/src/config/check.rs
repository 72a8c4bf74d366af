//! Checking the file section by section, every problem on its own line.
//!
//! Typed values arrive as strings and are parsed here with their own
//! `Deserialize` (the counterpart of the `Serialize` that writes them), so a
//! malformed value is one problem among the others instead of the end of
//! the reading. Each section's function checks its fields and builds its
//! part of [`Config`]; a part comes out `None` when a value it needs is
//! unusable, and the problems say why.

use std::{net::SocketAddr, path::Path};

use alloy::{primitives::Address, transports::http::reqwest::Url};
use broker_contracts::{error_text::describe, keys, protocol};
use clap::ValueEnum;
use ipnet::Ipv6Net;
use serde::de::{DeserializeOwned, IntoDeserializer as _, value};

use super::{
    Api, Broker, Config, Confirm, DEFAULT_CONFIRM, Database, MAX_RETENTION_DAYS, Manager, Onchain,
    Wireguard, file,
};
use crate::{
    firewall::{self, Allowed},
    ipam::Pool,
};

/// Whether the key files' contents are checked (their mode always is).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Keys {
    Read,
    /// For commands that use no key and may be run by users who cannot
    /// read them.
    Skip,
}

/// What is wrong so far, one line a problem.
pub(super) struct Problems {
    lines: Vec<String>,
    keys: Keys,
}

impl Problems {
    pub fn new(keys: Keys) -> Self {
        Problems {
            lines: Vec::new(),
            keys,
        }
    }

    pub fn into_lines(self) -> Vec<String> {
        self.lines
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn add(&mut self, line: String) {
        self.lines.push(line);
    }

    fn require(&mut self, ok: bool, line: &str) {
        if !ok {
            self.add(line.into());
        }
    }

    /// `text` read as a `T`, or a problem saying that `what` is not
    /// `expected` (serde's own messages name types, not the forms to write).
    fn parse<T: DeserializeOwned>(&mut self, what: &str, text: &str, expected: &str) -> Option<T> {
        self.parse_with(what, text, expected, read)
    }

    /// [`Problems::parse`] with a parser of its own.
    fn parse_with<T>(
        &mut self,
        what: &str,
        text: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let value = parse(text);
        if value.is_none() {
            self.add(format!("{what} \"{text}\" is not {expected}"));
        }
        value
    }

    /// One of an enum's values, spelt as on the command line; its default
    /// when the key is absent.
    fn choice<E>(&mut self, what: &str, text: Option<&str>) -> Option<E>
    where
        E: ValueEnum + DeserializeOwned + Default,
    {
        let Some(text) = text else {
            return Some(E::default());
        };
        let names: Vec<_> = E::value_variants()
            .iter()
            .filter_map(|v| Some(v.to_possible_value()?.get_name().to_owned()))
            .collect();
        self.parse(what, text, &format!("one of {}", names.join(", ")))
    }
}

/// `text` read with `T`'s own `Deserialize`, the counterpart of the
/// `Serialize` that writes it.
fn read<T: DeserializeOwned>(text: &str) -> Option<T> {
    T::deserialize(text.into_deserializer())
        .map_err(|_: value::Error| ())
        .ok()
}

pub(super) fn config(file: file::File, p: &mut Problems) -> Option<Config> {
    let upstream_interface = file.broker.upstream_interface.clone();
    let broker = broker(file.broker, p);
    let wireguard = wireguard(file.wireguard, &upstream_interface, p);
    let manager = manager(file.manager, file.api.is_some(), p);
    let api = file.api.map(|a| api(a, p));
    let onchain = onchain(file.onchain, p);
    let database = database(file.database, p);
    Some(Config {
        broker: broker?,
        wireguard: wireguard?,
        api: api.map_or(Some(None), |a| a.map(Some))?,
        manager: manager?,
        database: database?,
        onchain: onchain?,
    })
}

/// The longest `[manager] session_secs`: a day.
const MAX_SESSION_SECS: u64 = 24 * 3600;

fn manager(m: file::Manager, has_api: bool, p: &mut Problems) -> Option<Manager> {
    let mut admins = Vec::new();
    let mut ok = true;
    for text in &m.admins {
        match p.parse::<Address>(
            "[manager] admins",
            text,
            "an Ethereum address (0x and 40 hex digits)",
        ) {
            Some(a) if admins.contains(&a) => {
                p.add(format!("[manager] admins lists {a} twice"));
                ok = false;
            }
            Some(a) => admins.push(a),
            None => ok = false,
        }
    }
    if admins.contains(&Address::ZERO) {
        p.add("[manager] admins: the zero address signs nothing; name a wallet".into());
        ok = false;
    }
    // Served on the API's listener: admins without it would be a manager
    // that silently never opens.
    if !m.admins.is_empty() && !has_api {
        p.add("[manager] admins are given but there is no [api] section: the manager is served on the API's listener".into());
        ok = false;
    }
    let session_secs = m.session_secs.unwrap_or(super::DEFAULT_SESSION_SECS);
    if !(1..=MAX_SESSION_SECS).contains(&session_secs) {
        p.add(format!(
            "[manager] session_secs {session_secs} is not between 1 and {MAX_SESSION_SECS} (a day)"
        ));
        ok = false;
    }
    ok.then_some(Manager {
        admins,
        session_secs,
    })
}

fn database(d: file::Database, p: &mut Problems) -> Option<Database> {
    if !(1..=MAX_RETENTION_DAYS).contains(&d.retention_days) {
        p.add(format!(
            "[database] retention_days must be 1 to {MAX_RETENTION_DAYS} (finished requests and audit entries are kept that long, then pruned)"
        ));
        return None;
    }
    Some(Database {
        path: d.path,
        retention_days: d.retention_days,
    })
}

fn api(a: file::Api, p: &mut Problems) -> Option<Api> {
    let listen: SocketAddr = p.parse("[api] listen", &a.listen, "an address:port")?;
    if a.tls_cert.is_some() != a.tls_key.is_some() {
        p.add("[api] tls_cert and tls_key go together: give both, or neither".into());
        return None;
    }
    // Bearer tokens must not cross a network in clear unless the operator
    // says so.
    if !listen.ip().is_loopback() && a.tls_cert.is_none() && !a.insecure_plaintext {
        p.add(format!(
            "[api] listen {listen} is not a loopback address: serving it needs TLS \
             (tls_cert and tls_key), or insecure_plaintext = true to send the API's tokens in clear"
        ));
        return None;
    }
    Some(Api {
        listen,
        tls_cert: a.tls_cert,
        tls_key: a.tls_key,
        insecure_plaintext: a.insecure_plaintext,
    })
}

fn broker(b: file::Broker, p: &mut Problems) -> Option<Broker> {
    interface_name("[broker] upstream_interface", &b.upstream_interface, p);
    let pool = pool(&b, p);
    let ndp_mode = p.choice("[broker] ndp_mode", b.ndp_mode.as_deref());
    let control_socket = b.control_socket.filter(|path| socket_path(path, p));
    // 0 means "no tag" in 802.1Q and 4095 is reserved.
    let ndp_vlan = match b.ndp_vlan {
        Some(id) if !(1..=4094).contains(&id) => {
            p.add(format!(
                "[broker] ndp_vlan {id} is not a VLAN id (1 to 4094); leave it out for no VLAN filter"
            ));
            return None;
        }
        id => id,
    };
    Some(Broker {
        upstream_interface: b.upstream_interface,
        pool: pool?,
        ndp_mode: ndp_mode?,
        ndp_router_flag: b.ndp_router_flag,
        ndp_vlan,
        ndp_pin_dir: b.ndp_pin_dir,
        dns_zone: b.dns_zone,
        control_socket,
        pipeline_answers: b.pipeline_answers,
    })
}

fn pool(b: &file::Broker, p: &mut Problems) -> Option<Pool> {
    let net: Ipv6Net = p.parse(
        "[broker] upstream_prefix",
        &b.upstream_prefix,
        "an IPv6 prefix",
    )?;
    if net.network() != net.addr() {
        p.add(format!(
            "[broker] upstream_prefix {net} has host bits set; did you mean {}?",
            net.trunc()
        ));
        return None;
    }
    Pool::new(net, b.allocation_size)
        .map_err(|e| p.add(format!("[broker] allocation_size: {e}")))
        .ok()
}

fn wireguard(w: file::Wireguard, upstream_interface: &str, p: &mut Problems) -> Option<Wireguard> {
    interface_name("[wireguard] interface", &w.interface, p);
    p.require(
        w.interface != upstream_interface,
        "[wireguard] interface must differ from [broker] upstream_interface",
    );
    p.require(w.listen_port != 0, "[wireguard] listen_port must not be 0");
    if !protocol::is_endpoint(&w.endpoint) {
        p.add(format!(
            "[wireguard] endpoint \"{}\" is not host:port (e.g. 203.0.113.10:51820 or [2001:db8::1]:51820)",
            w.endpoint
        ));
    }
    key_file(
        "[wireguard] private_key_file",
        &w.private_key_file,
        wireguard_key,
        p,
    );
    let implementation = p.choice("[wireguard] implementation", w.implementation.as_deref());
    p.require(
        w.handshake_timeout_secs >= 10,
        "[wireguard] handshake_timeout_secs must be at least 10",
    );
    p.require(
        firewall::quotable(&w.interface),
        "[wireguard] interface must not contain '\"', '\\' or control characters (it goes into an nftables rule)",
    );
    let mut allow_to_broker = Vec::new();
    for entry in &w.allow_to_broker {
        match entry.parse::<Allowed>() {
            Ok(a) => allow_to_broker.push(a),
            Err(e) => p.add(format!("[wireguard] allow_to_broker: {e}")),
        }
    }
    Some(Wireguard {
        interface: w.interface,
        listen_port: w.listen_port,
        endpoint: w.endpoint,
        private_key_file: w.private_key_file,
        implementation: implementation?,
        handshake_timeout_secs: w.handshake_timeout_secs,
        allow_to_broker,
    })
}

fn onchain(o: file::Onchain, p: &mut Problems) -> Option<Onchain> {
    rpc_url(&o.rpc_url, p);
    let requests_contract = contract("[onchain] requests_contract", &o.requests_contract, p);
    let registry_contract = match &o.registry_contract {
        None => Some(None),
        Some(text) => contract("[onchain] registry_contract", text, p).map(Some),
    };
    let legacy = legacy_contracts(&o.legacy_requests_contracts, requests_contract, p);
    key_file(
        "[onchain] operator_key_file",
        &o.operator_key_file,
        secp256k1_key,
        p,
    );
    key_file(
        "[onchain] ecies_key_file",
        &o.ecies_key_file,
        secp256k1_key,
        p,
    );
    p.require(
        o.poll_interval_secs >= 1,
        "[onchain] poll_interval_secs must be at least 1",
    );
    p.require(
        o.max_requests_per_poll >= 1,
        "[onchain] max_requests_per_poll must be at least 1",
    );
    p.require(
        (1..=1_000_000).contains(&o.log_range_blocks),
        "[onchain] log_range_blocks must be 1 to 1000000",
    );
    p.require(
        o.start_request_id >= 1,
        "[onchain] start_request_id must be at least 1 (request ids start at 1)",
    );
    let confirm = confirm(o.confirm, o.confirmations, p);
    let low_balance_wei = p.parse_with(
        "[onchain] low_balance_eth",
        &o.low_balance_eth,
        "an amount of ETH (e.g. \"0.05\")",
        |text| alloy::primitives::utils::parse_ether(text).ok(),
    );
    Some(Onchain {
        rpc_url: o.rpc_url,
        chain_id: o.chain_id,
        requests_contract: requests_contract?,
        registry_contract: registry_contract?,
        legacy_requests_contracts: legacy,
        operator_key_file: o.operator_key_file,
        ecies_key_file: o.ecies_key_file,
        poll_interval_secs: o.poll_interval_secs,
        confirm: confirm?,
        start_request_id: o.start_request_id,
        max_requests_per_poll: o.max_requests_per_poll,
        log_range_blocks: o.log_range_blocks,
        low_balance_wei: low_balance_wei?,
    })
}

/// `[onchain] confirm`, or its older spelling `confirmations` (a number of
/// blocks): one of them at most.
fn confirm(
    confirm: Option<file::Confirm>,
    confirmations: Option<u64>,
    p: &mut Problems,
) -> Option<Confirm> {
    const EXPECTED: &str = "\"safe\", \"finalized\" or a number of blocks (0 or more)";
    match (confirm, confirmations) {
        (Some(_), Some(_)) => {
            p.add(
                "[onchain] confirm and confirmations are both given: keep confirm \
                 (confirmations is its older spelling)"
                    .into(),
            );
            None
        }
        (None, None) => Some(DEFAULT_CONFIRM),
        (None, Some(blocks)) => Some(Confirm::Blocks(blocks)),
        (Some(file::Confirm::Blocks(n)), None) => {
            p.parse_with("[onchain] confirm", &n.to_string(), EXPECTED, |_| {
                u64::try_from(n).ok().map(Confirm::Blocks)
            })
        }
        // A number written as a string ("6") is read as one too.
        (Some(file::Confirm::Tag(text)), None) => {
            p.parse_with("[onchain] confirm", &text, EXPECTED, Confirm::parse)
        }
    }
}

fn interface_name(what: &str, name: &str, p: &mut Problems) {
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
        p.add(format!(
            "{what} \"{name}\" is not an interface name (1 to 15 characters, no '/' or spaces)"
        ));
    }
}

/// An absolute path that fits a Unix socket address (108 bytes with its
/// terminating NUL).
fn socket_path(path: &Path, p: &mut Problems) -> bool {
    let what = "[broker] control_socket";
    let ok = path.is_absolute() && path.as_os_str().len() < 108;
    if !ok {
        p.add(format!(
            "{what} \"{}\" must be an absolute path of at most 107 bytes",
            path.display()
        ));
    }
    ok
}

fn rpc_url(text: &str, p: &mut Problems) {
    let http = read::<Url>(text).is_some_and(|url| ["http", "https"].contains(&url.scheme()));
    if !http {
        p.add(format!(
            "[onchain] rpc_url \"{text}\" is not an http(s) URL"
        ));
    }
}

fn contract(what: &str, text: &str, p: &mut Problems) -> Option<Address> {
    let address: Address = p.parse(what, text, "an address (0x and 40 hex digits)")?;
    if address == Address::ZERO {
        p.add(format!("{what} must not be the zero address"));
        return None;
    }
    Some(address)
}

/// The contracts still watched after a move, each once and none of them the
/// current one.
fn legacy_contracts(texts: &[String], current: Option<Address>, p: &mut Problems) -> Vec<Address> {
    let what = "[onchain] legacy_requests_contracts";
    let mut legacy = Vec::new();
    for text in texts {
        if let Some(a) = contract(what, text, p) {
            if Some(a) == current || legacy.contains(&a) {
                p.add(format!("{what} lists {a} twice or with requests_contract"));
            }
            legacy.push(a);
        }
    }
    legacy
}

/// The file exists, only its owner can read it, and `holds_key` finds a key
/// of the expected form in it. Problems name the file, never its content.
fn key_file(what: &str, path: &Path, holds_key: fn(&Path) -> Result<(), String>, p: &mut Problems) {
    let checked = keys::check_private(path)
        .map_err(|e| describe(&e))
        .and_then(|()| match p.keys {
            Keys::Read => holds_key(path),
            Keys::Skip => Ok(()),
        });
    if let Err(message) = checked {
        p.add(format!("{what}: {message}"));
    }
}

/// 64 hex digits that make a secp256k1 secret (operator key, ECIES key).
fn secp256k1_key(path: &Path) -> Result<(), String> {
    let secret = keys::read_secret(path).map_err(|e| describe(&e))?;
    ecies::SecretKey::parse_slice(&secret)
        .map(drop)
        .map_err(|_| format!("{} is not a valid secp256k1 secret key", path.display()))
}

/// A WireGuard private key as `wg genkey` writes it (base64).
fn wireguard_key(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    wireguard_control::Key::from_base64(text.trim())
        .map(drop)
        .map_err(|_| {
            format!(
                "{} does not hold a WireGuard private key (`wg genkey` format)",
                path.display()
            )
        })
}
