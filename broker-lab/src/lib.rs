//! The whole blockhost-broker system in network namespaces, for the
//! end-to-end tests (`tests/end_to_end.rs`) and `cargo xtask demo`
//! (`src/bin/broker-lab.rs`): a chain host running anvil, the provider's
//! router with the broker's prefix on-link, an internet host behind it, the
//! broker VPS (XDP NDP responder, WireGuard, `blockhost-broker run`) and
//! BlockHost servers running `broker-client`. See [`topology`] for the map.
//!
//! Needs root. Every namespace, process, pin and socket goes away when the
//! [`Lab`] drops.

pub mod lab;
pub mod narrate;
pub mod netns;
pub mod process;
pub mod scenario;
pub mod topology;

pub use lab::{Lab, Options};
pub use narrate::Narrator;
