//! Header layouts and bounds-checked packet access.
//!
//! Layouts are made of `u16` words in network order (read and written as
//! they are in memory, never byte-swapped), so they need 2-byte alignment and
//! no more: every header we touch starts at an even offset (0, 14 or 18 from
//! the frame start, which drivers and the stack keep at least 2-aligned), and
//! the compiler can load words instead of single bytes.

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const IPV6_HLEN: usize = 40;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const ICMPV6_NS: u8 = 135;
pub const ICMPV6_NA: u8 = 136;
/// Type, code, checksum, reserved/flags, target: the fixed part of both an NS and an NA.
pub const NS_HLEN: usize = 24;
pub const NA_LEN_WITH_TLLA: usize = NS_HLEN + 8;
pub const OPT_SOURCE_LLADDR: u8 = 1;
pub const OPT_TARGET_LLADDR: u8 = 2;

/// An IPv6 address as it lies in memory.
pub type Addr = [u16; 8];

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u16; 3],
    pub src: [u16; 3],
    pub ethertype: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    pub vtc_flow: [u16; 2],
    pub payload_len: u16,
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: Addr,
    pub dst: Addr,
}

/// The fixed part of a Neighbor Solicitation, and of an Advertisement (whose
/// first reserved byte holds the flags).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NdHdr {
    pub icmp_type: u8,
    pub code: u8,
    pub checksum: u16,
    pub reserved: [u8; 4],
    pub target: Addr,
}

/// The link-layer address option of an advertisement.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LlAddrOpt {
    pub opt_type: u8,
    pub len: u8,
    pub addr: [u16; 3],
}

const _: () = assert!(core::mem::size_of::<EthHdr>() == ETH_HLEN);
const _: () = assert!(core::mem::size_of::<Ipv6Hdr>() == IPV6_HLEN);
const _: () = assert!(core::mem::size_of::<NdHdr>() == NS_HLEN);
const _: () = assert!(core::mem::size_of::<LlAddrOpt>() == 8);

/// Network-order bytes of a `u16` word as it lies in memory.
#[inline(always)]
pub fn bytes(word: u16) -> [u8; 2] {
    word.to_ne_bytes()
}

/// An address as it lies in memory, from its network-order bytes.
pub const fn words(b: [u8; 16]) -> Addr {
    let mut w = [0u16; 8];
    let mut i = 0;
    while i < 8 {
        w[i] = u16::from_ne_bytes([b[2 * i], b[2 * i + 1]]);
        i += 1;
    }
    w
}

/// The network-order bytes of an address (for the log).
#[inline(always)]
pub fn octets(a: &Addr) -> [u8; 16] {
    let mut b = [0u8; 16];
    let mut i = 0;
    while i < 8 {
        let [hi, lo] = bytes(a[i]);
        b[2 * i] = hi;
        b[2 * i + 1] = lo;
        i += 1;
    }
    b
}
