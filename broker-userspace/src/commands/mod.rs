//! One module per top-level command.

pub mod allocations;
pub mod check_config;
pub mod deploy_requests;
pub mod detect_ipv6;
pub mod firewall;
pub mod generate_key;
pub mod ndp;
pub mod run;
pub mod setup;
pub mod status;
pub mod token;
pub mod wallet;
