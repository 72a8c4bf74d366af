//! One module per top-level command.

pub mod deploy_requests;
pub mod ndp;
