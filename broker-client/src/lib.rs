//! broker-client's modules, as a library so that the fuzz targets (fuzz/)
//! reach the very code that reads a broker's answer; the binary is
//! src/main.rs.

pub mod cli;
pub mod discovery;
pub mod files;
pub mod install;
pub mod keys;
pub mod registry;
pub mod release;
pub mod request;
pub mod response;
pub mod status;
