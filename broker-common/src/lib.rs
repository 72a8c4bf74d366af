//! What the broker's userspace and its eBPF programs agree on: map names,
//! key and value layouts, and counter indices. Everything here is `#[repr(C)]`
//! and plain data; the `user` feature adds `aya::Pod` so userspace can put these
//! types into maps.
#![no_std]

pub mod bench;
pub mod ndp;
