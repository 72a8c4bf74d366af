//! The compiled eBPF objects, embedded at build time by build.rs.

/// The responder (broker-ebpf's main binary), aligned as aya's loader requires.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/broker-ebpf"));

/// A program that passes everything, for veth peers (see [`super::PassProgram`]).
pub(crate) static PASS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-pass"));
