#![no_std]
// The program is the `broker-ebpf` binary (src/main.rs). This empty library
// exists so broker-userspace can name the crate as a build dependency and be
// rebuilt when it changes.
