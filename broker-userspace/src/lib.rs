//! blockhost-broker: hands IPv6 prefixes to BlockHost servers over WireGuard,
//! authenticated on-chain. The binary (`src/main.rs`) is a thin CLI over these
//! modules.

pub mod api;
pub mod chain;
pub mod config;
pub mod daemon;
pub mod firewall;
pub mod host_ipv4;
pub mod host_ipv6;
pub mod ipam;
pub mod manager;
pub mod ndp;
pub mod numbers;
pub mod operator;
pub mod store;
pub mod tunnel;
pub mod wallet;
