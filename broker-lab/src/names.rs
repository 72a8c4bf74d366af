//! Names of the kernel objects the tests make: every namespace, pin
//! directory and WireGuard interface starts with [`TEST_PREFIX`] and the
//! test process's id, so tests running at once never collide and
//! `cargo xtask test` can sweep up after a run that was killed (it keeps the
//! objects whose process still runs; see xtask/src/test.rs).

use std::sync::atomic::{AtomicU32, Ordering};

/// Every name a test gives starts with this (xtask's sweep looks for it).
pub const TEST_PREFIX: &str = "bbt-";

/// The longest interface name Linux takes (IFNAMSIZ - 1).
pub const MAX_INTERFACE_NAME: usize = 15;

fn next() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `bbt-<pid>-<n>-<tag>`, unique to this process and call: for namespaces
/// and pin directories.
pub fn unique_name(tag: &str) -> String {
    format!("{TEST_PREFIX}{}-{}-{tag}", std::process::id(), next())
}

/// `bbt-<pid in hex>-<n><tag>`, unique to this process and call, at most 15
/// characters: for interfaces, whose wireguard-go sockets under
/// /var/run/wireguard are shared by every namespace.
pub fn interface_name(tag: &str) -> String {
    let name = format!("{TEST_PREFIX}{:x}-{}{tag}", std::process::id(), next());
    assert!(
        name.len() <= MAX_INTERFACE_NAME,
        "{name} is too long for an interface"
    );
    name
}

/// `bbt-<pid in hex>-<n>-`: the prefix of every name of one lab
/// ([`crate::Lab`]: its namespaces, interfaces and pin directory).
pub fn lab_prefix() -> String {
    format!("{TEST_PREFIX}{:x}-{:x}-", std::process::id(), next())
}
