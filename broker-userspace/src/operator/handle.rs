//! The link between the daemon's loop and those who ask it: the snapshot it
//! publishes after every poll (read by anyone, any time, without waiting for
//! the loop), and the commands it executes between polls (a release), each
//! answered on its own oneshot channel.

use std::sync::Arc;

use ipnet::Ipv6Net;
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    allocation::{self, AllocationView},
    release::Released,
    status::{PeerCounts, Status},
};
use crate::{
    config::Config,
    store::{Store, StoreError, audit, tokens::Token},
    tunnel::Peer,
};

/// The daemon's figures at one moment. The allocations themselves are not
/// in it: they are read when asked ([`Handle::allocations`]).
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub status: Status,
    /// The audit log's last [`RECENT`] entries (allocations, answers,
    /// rejections and why, releases), oldest first: the manager's "recent
    /// requests".
    pub recent: Vec<audit::Entry>,
}

/// Audit entries a snapshot carries.
pub const RECENT: usize = 20;

impl Snapshot {
    /// The database's figures, with the handshakes of `peers` when known
    /// (None: no daemon to ask the kernel).
    pub fn from_store(
        config: &Config,
        store: &Store,
        peers: Option<&[Peer]>,
        now: u64,
    ) -> Result<Snapshot, StoreError> {
        let all = store.allocations()?;
        let mut status = Status::from_store(config, store, all.len(), now)?;
        // Counted, not kept.
        status.peers = PeerCounts::of(&allocation::views(&all, peers, now));
        Ok(Snapshot {
            status,
            recent: store.audit_tail(RECENT)?,
        })
    }

    /// The database's figures read with no daemon running (redb lets no
    /// second process open the file while it runs): read-only, without
    /// the chain, the wallet and the peers.
    pub fn read_offline(config: &Config) -> Result<Snapshot, StoreError> {
        let store = Store::open_read_only(&config.database.path, config.broker.pool)?;
        Snapshot::from_store(config, &store, None, crate::store::now())
    }
}

/// A command for the daemon's loop.
#[derive(Debug)]
pub enum Command {
    /// Release the allocation of `prefix`; the reply says what was done, or
    /// why nothing was.
    Release {
        prefix: Ipv6Net,
        reply: oneshot::Sender<Result<Released, String>>,
    },
    /// Change the API's tokens; the reply comes once the new list is
    /// published (a revoked token is refused from then on).
    Token {
        change: TokenChange,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// A change to the API's tokens.
#[derive(Debug)]
pub enum TokenChange {
    Create(Token),
    Revoke { name: String },
}

/// The daemon's end: publishes snapshots, receives commands.
pub struct Publisher {
    snapshot: watch::Sender<Arc<Snapshot>>,
    tokens: watch::Sender<Arc<Vec<Token>>>,
    pub commands: mpsc::Receiver<Command>,
}

/// The askers' end (cheap to clone): the control socket's, the API's.
#[derive(Clone)]
pub struct Handle {
    snapshot: watch::Receiver<Arc<Snapshot>>,
    allocations: allocation::Reader,
    tokens: watch::Receiver<Arc<Vec<Token>>>,
    commands: mpsc::Sender<Command>,
}

/// Commands waiting for the loop; more wait for a place.
const QUEUED_COMMANDS: usize = 16;

/// A publisher starting at `first` and `tokens`, and its handle, which
/// reads the allocations through `allocations`.
pub fn channel(
    first: Snapshot,
    tokens: Vec<Token>,
    allocations: allocation::Reader,
) -> (Publisher, Handle) {
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(first));
    let (tokens_tx, tokens_rx) = watch::channel(Arc::new(tokens));
    let (commands_tx, commands_rx) = mpsc::channel(QUEUED_COMMANDS);
    (
        Publisher {
            snapshot: snapshot_tx,
            tokens: tokens_tx,
            commands: commands_rx,
        },
        Handle {
            snapshot: snapshot_rx,
            allocations,
            tokens: tokens_rx,
            commands: commands_tx,
        },
    )
}

impl Publisher {
    pub fn publish(&self, snapshot: Snapshot) {
        self.snapshot.send_replace(Arc::new(snapshot));
    }

    pub fn publish_tokens(&self, tokens: Vec<Token>) {
        self.tokens.send_replace(Arc::new(tokens));
    }

    /// The snapshot published last.
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }
}

impl Handle {
    /// The snapshot published last.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Every allocation as of now, in prefix order.
    pub async fn allocations(&self) -> Result<Vec<AllocationView>, String> {
        self.read_allocations(|reader| reader.all()).await
    }

    /// The allocation of `prefix` as of now, if it is one.
    pub async fn allocation(&self, prefix: Ipv6Net) -> Result<Option<AllocationView>, String> {
        self.read_allocations(move |reader| reader.one(prefix))
            .await
    }

    /// Database and device reads block: off the runtime's threads.
    async fn read_allocations<T: Send + 'static>(
        &self,
        read: impl FnOnce(&allocation::Reader) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, String> {
        let reader = self.allocations.clone();
        match tokio::task::spawn_blocking(move || read(&reader)).await {
            Ok(result) => result.map_err(|e| format!("reading the allocations: {e}")),
            Err(e) => Err(format!("reading the allocations: {e}")),
        }
    }

    /// The API's tokens as the daemon has them now.
    pub fn tokens(&self) -> Arc<Vec<Token>> {
        self.tokens.borrow().clone()
    }

    /// Has the daemon change the API's tokens, and waits until it has.
    pub async fn change_tokens(&self, change: TokenChange) -> Result<(), String> {
        self.ask(|reply| Command::Token { change, reply }).await
    }

    /// Has the daemon release `prefix`, and waits until it has (the loop
    /// takes it at the end of the poll in progress).
    pub async fn release(&self, prefix: Ipv6Net) -> Result<Released, String> {
        self.ask(|reply| Command::Release { prefix, reply }).await
    }

    /// Sends the loop `command` and waits for its reply.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Command,
    ) -> Result<T, String> {
        let (reply, answer) = oneshot::channel();
        let stopped = || "the daemon is stopping".to_string();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}
