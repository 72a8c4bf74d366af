//! What the daemon tells its operator, and what it does for them: a status
//! snapshot ([`status`]), the allocations as an operator sees them
//! ([`allocation`]), releasing one ([`release`]), the link between the
//! daemon's loop and whoever asks ([`handle`]: the control socket here, the
//! HTTP API later), and the control socket with its client ([`control`]).
//!
//! The daemon owns the database (redb locks the file) and the operator key
//! (one nonce sequence): everything goes through it. Reads are answered from
//! a snapshot it publishes after every poll; a release is a command its loop
//! executes between polls, so it never races the daemon's own transactions.

pub mod allocation;
pub mod control;
pub mod handle;
pub mod release;
pub mod status;

pub use allocation::{AllocationView, PeerState, Reader};
pub use handle::{Command, Handle, Publisher, Snapshot, TokenChange};
pub use release::{OnChainRelease, PrefixError, Released};
pub use status::Status;
