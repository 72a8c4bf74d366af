//! The project's test kit, and the whole blockhost-broker system in network
//! namespaces (as aya's `test/integration-test` is for aya). The daemon's,
//! the client's and the responder's tests, the NDP benchmark, the
//! end-to-end tests (`tests/end_to_end.rs`) and `cargo xtask demo`
//! (`src/bin/broker-lab.rs`) all build on it.
//!
//! - the pieces: [`names`] (test object names), [`files`] (new files of a
//!   mode), [`netns`] (namespaces and veth pairs), [`process`] (processes
//!   and their logs), [`wireguard`] (wireguard-go interfaces), [`pins`]
//!   (bpffs pin directories), [`relay`] (an RPC endpoint that can hang),
//!   [`faulty_rpc`] (one that drops, stalls, rate-limits or lies),
//!   [`notify`] (a service manager's notification socket),
//!   [`broker`] (the binaries, `ndp serve`), [`ndp_frames`] (solicitations
//!   and a reference model of the answers);
//! - the system: [`topology`] (the namespaces and addresses), [`lab`] (the
//!   chain, the broker with its configuration written from the real
//!   `Config`, and the servers), [`requests`] (servers played with the
//!   bindings), [`inspect`] (the broker's kernel state), [`operator`] (the
//!   operator's command line against the lab's broker), [`metrics`] (its
//!   `/metrics` scraped, promtool-checked and parsed), [`scenario`] (the
//!   steps the demo shows), [`narrate`].
//!
//! Needs root. Every namespace, process, pin and socket goes away when its
//! guard (or the [`Lab`]) drops.

pub mod accept_loop;
pub mod broker;
pub mod faulty_rpc;
pub mod files;
pub mod inspect;
pub mod lab;
pub mod metrics;
pub mod names;
pub mod narrate;
pub mod ndp_frames;
pub mod netns;
pub mod notify;
pub mod operator;
pub mod pins;
pub mod process;
pub mod relay;
pub mod requests;
pub mod rpc_limits;
pub mod scenario;
pub mod topology;
pub mod wireguard;

pub use lab::{Lab, Options, lab_test};
pub use narrate::Narrator;
