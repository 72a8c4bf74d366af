//! The broker's configuration file, written from the real [`Config`] type:
//! a lab builds a `Config`, a test changes the fields it is about, and
//! [`write`] puts it where `blockhost-broker run --config` reads it.

use std::{fs, path::Path};

use anyhow::Context as _;
use broker_userspace::{
    config::{Config, WireguardImplementation},
    ndp::AttachMode,
};
use toml::{Table, Value};

/// Writes `config` as `blockhost-broker run` reads it.
pub fn write(config: &Config, path: &Path) -> anyhow::Result<()> {
    let text = toml::to_string(&to_toml(config)).context("serialising the configuration")?;
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

// `Config` does not implement `Serialize` yet: its fields, one by one, as
// config.rs reads them.
fn to_toml(config: &Config) -> Table {
    let path = |p: &Path| Value::String(p.display().to_string());
    let int = |n: u64| Value::Integer(n as i64);
    let b = &config.broker;
    let mut broker = Table::new();
    broker.insert(
        "upstream_interface".into(),
        b.upstream_interface.clone().into(),
    );
    broker.insert(
        "upstream_prefix".into(),
        b.pool.upstream().to_string().into(),
    );
    broker.insert(
        "allocation_size".into(),
        int(b.pool.allocation_size().into()),
    );
    let mode = match b.ndp_mode {
        AttachMode::Auto => "auto",
        AttachMode::Driver => "driver",
        AttachMode::Generic => "generic",
        AttachMode::Tc => "tc",
    };
    broker.insert("ndp_mode".into(), mode.into());
    broker.insert("ndp_router_flag".into(), b.ndp_router_flag.into());
    broker.insert("ndp_pin_dir".into(), path(&b.ndp_pin_dir));
    if let Some(zone) = &b.dns_zone {
        broker.insert("dns_zone".into(), zone.clone().into());
    }

    let w = &config.wireguard;
    let mut wireguard = Table::new();
    wireguard.insert("interface".into(), w.interface.clone().into());
    wireguard.insert("listen_port".into(), int(w.listen_port.into()));
    wireguard.insert("endpoint".into(), w.endpoint.clone().into());
    wireguard.insert("private_key_file".into(), path(&w.private_key_file));
    let implementation = match w.implementation {
        WireguardImplementation::Auto => "auto",
        WireguardImplementation::Kernel => "kernel",
        WireguardImplementation::Userspace => "userspace",
    };
    wireguard.insert("implementation".into(), implementation.into());
    wireguard.insert(
        "handshake_timeout_secs".into(),
        int(w.handshake_timeout_secs),
    );

    let mut database = Table::new();
    database.insert("path".into(), path(&config.database_path));

    let o = &config.onchain;
    let mut onchain = Table::new();
    onchain.insert("rpc_url".into(), o.rpc_url.clone().into());
    onchain.insert("chain_id".into(), int(o.chain_id));
    onchain.insert(
        "requests_contract".into(),
        o.requests_contract.to_string().into(),
    );
    if let Some(registry) = o.registry_contract {
        onchain.insert("registry_contract".into(), registry.to_string().into());
    }
    let legacy = o.legacy_requests_contracts.iter();
    onchain.insert(
        "legacy_requests_contracts".into(),
        Value::Array(legacy.map(|a| a.to_string().into()).collect()),
    );
    onchain.insert("operator_key_file".into(), path(&o.operator_key_file));
    onchain.insert("ecies_key_file".into(), path(&o.ecies_key_file));
    onchain.insert("poll_interval_secs".into(), int(o.poll_interval_secs));
    onchain.insert("confirmations".into(), int(o.confirmations));
    onchain.insert("start_request_id".into(), int(o.start_request_id));
    onchain.insert("max_requests_per_poll".into(), int(o.max_requests_per_poll));

    let mut file = Table::new();
    file.insert("broker".into(), broker.into());
    file.insert("wireguard".into(), wireguard.into());
    if let Some(listen) = config.api_listen {
        let mut api = Table::new();
        api.insert("listen".into(), listen.to_string().into());
        file.insert("api".into(), api.into());
    }
    file.insert("database".into(), database.into());
    file.insert("onchain".into(), onchain.into());
    file
}
