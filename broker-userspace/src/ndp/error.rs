use std::{io, path::PathBuf};

use thiserror::Error;

use super::prefixes::PrefixError;

#[derive(Debug, Error)]
pub enum NdpError {
    #[error("the NDP responder needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN: {0} missing")]
    NotPrivileged(String),
    #[error("unknown interface `{0}`")]
    UnknownInterface(String),
    #[error("interface `{name}`")]
    Interface {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Prefix(#[from] PrefixError),
    #[error("bpffs at {path}")]
    Bpffs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("loading the XDP program")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("attaching to `{interface}` in {mode} mode")]
    Attach {
        interface: String,
        mode: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "the responder pinned under {pins} is attached to {attached}; run `blockhost-broker ndp detach` first"
    )]
    AttachedElsewhere { pins: PathBuf, attached: String },
    #[error(
        "`{0}` is an L3 device: answers can only leave it from TC (`--mode tc`, which auto picks); generic XDP would send them with a wrong protocol"
    )]
    L3NeedsTc(String),
    #[error("the kernel refused a BPF link for `{0}` (Linux 6.6 or later is required)")]
    NoLink(String),
    #[error("pinning the XDP link at {path}")]
    PinLink {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("adopting the XDP link pinned at {path}")]
    AdoptLink {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {0} is missing from the program")]
    MissingMap(&'static str),
    #[error("program {0} is missing from the object")]
    MissingProgram(&'static str),
    #[error(transparent)]
    Program(#[from] aya::programs::ProgramError),
    #[error("the program's log records")]
    LogRecords(#[source] aya_log::Error),
    #[error("starting the reader of the program's log records")]
    LogReader(#[source] io::Error),
    #[error("removing {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl NdpError {
    pub(crate) fn map(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> Self {
        move |source| NdpError::Map { map, source }
    }
}
