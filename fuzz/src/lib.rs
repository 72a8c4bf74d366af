//! What the fuzz targets share.

use std::sync::OnceLock;

/// A fixed secp256k1 key pair whose secret is `n` (1..=4) in every byte:
/// the broker's or the server's in the targets, fixed so that a crash
/// replays.
pub fn fixed_key(n: u8) -> ([u8; 32], [u8; 65]) {
    static PUBLIC: [OnceLock<[u8; 65]>; 4] = [const { OnceLock::new() }; 4];
    assert!((1..=4).contains(&n), "key {n}");
    let secret = [n; 32];
    let public = PUBLIC[usize::from(n - 1)].get_or_init(|| {
        broker_contracts::protocol::public_key(&secret).expect("a valid secret key")
    });
    (secret, *public)
}
