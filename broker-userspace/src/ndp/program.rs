//! The compiled eBPF object, embedded at build time by build.rs.

/// The ELF object of broker-ebpf, aligned as aya's loader requires.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/broker-ebpf"));
