//! Driving the XDP NDP responder (broker-ebpf): load it, attach it to the
//! upstream interface, keep its prefix map in step with the allocations, read
//! its counters.
//!
//! The program's maps and its XDP link are pinned under one bpffs directory
//! (`/sys/fs/bpf/blockhost-broker` by default), so answering goes on while no
//! daemon runs: a restart or an upgrade loads the new program, swaps it into
//! the pinned link atomically and keeps the pinned maps, losing no answers.

mod bpffs;
mod error;
pub mod follow_mac;
mod interface;
mod kernel_log;
mod pass;
mod pinned;
mod prefixes;
mod program;
mod responder;

pub use bpffs::{DEFAULT_PIN_DIR, PinDir};
pub use error::NdpError;
pub use follow_mac::MacFollower;
pub use interface::{Interface, LinkLayer};
pub use pass::{PassProgram, load_helper_object};
pub use pinned::{Status, detach, status};
pub use prefixes::{PrefixError, key_for, net_for, validate_prefixes};
pub use responder::{AttachMode, AttachedMode, Attachment, Counters, Responder, ResponderOptions};
