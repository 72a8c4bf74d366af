//! The NDP responder's maps.
//!
//! Allocated prefixes live in one hash map keyed by `(length, masked address)`.
//! The XDP program masks the solicited target to each prefix length in use
//! (listed in [`NdpConfig::lens`]) and does one hash lookup per length. The
//! broker hands out prefixes of a single size, so in practice every packet
//! costs one lookup whatever the number of allocations; an LPM trie, by
//! contrast, walks more nodes as it fills.

/// Name of the `HashMap<PrefixKey, PrefixValue>` of answered prefixes.
pub const PREFIXES_MAP: &str = "NDP_PREFIXES";
/// Name of the one-element `Array<NdpConfig>`.
pub const CONFIG_MAP: &str = "NDP_CONFIG";
/// Name of the one-element `Array<u32>` holding the VLAN filter
/// ([`VLAN_FILTER_ON`] | VLAN id, or 0 for none). A map of its own rather
/// than a field of [`NdpConfig`]: the configuration map is pinned, and a
/// responder upgraded in place keeps using the value layout it was created
/// with.
pub const VLAN_MAP: &str = "NDP_VLAN";
/// Name of the `PerCpuArray<u64>` of counters, indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "NDP_COUNTERS";
/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "ndp_responder";
/// Name of the same responder as a TC classifier, for L3 upstreams.
pub const TC_PROGRAM_NAME: &str = "ndp_responder_tc";
/// Target of the programs' log records (aya-log), as they reach the
/// daemon's log: `BLOCKHOST_BROKER_LOG=info,broker_ebpf=debug` shows them.
pub const LOG_TARGET: &str = "broker_ebpf";

/// Capacity of [`PREFIXES_MAP`]. The map is created without preallocation, so
/// this bounds memory (the kernel still allocates one 16-byte bucket head per
/// entry up front: 16 MiB) rather than reserving it.
pub const MAX_PREFIXES: u32 = 1 << 20;

/// How many distinct prefix lengths can be answered at once. Each one costs a
/// hash lookup per solicitation, so keep it small; the broker itself uses one.
pub const MAX_PREFIX_LENS: usize = 8;

/// Options after the 24-byte NS header that the program will walk. Real NS
/// carry one or two (source link-layer address, DAD nonce); a longer NS is
/// counted as invalid and left to the kernel.
pub const MAX_NS_OPTION_UNITS: usize = 32;

/// Key of [`PREFIXES_MAP`]: a prefix, its host bits zeroed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PrefixKey {
    /// Prefix length, 1..=128.
    pub len: u32,
    /// Network address, in network byte order, host bits zero.
    pub addr: [u8; 16],
}

/// Value of [`PREFIXES_MAP`]. Nothing per prefix is needed on the fast path
/// yet; the value is a reserved word so the layout can grow without a new map.
pub type PrefixValue = u32;

/// The program answers nothing until userspace has set this flag, so a program
/// attached before its configuration is written passes every packet.
pub const FLAG_CONFIGURED: u8 = 1 << 0;
/// Set the Router flag in advertisements (RFC 4861 §4.4).
pub const FLAG_ROUTER: u8 = 1 << 1;
/// The interface has no link-layer header (SIT and other L3 tunnels): packets
/// start at the IPv6 header and advertisements carry no link-layer option.
pub const FLAG_L3_DEVICE: u8 = 1 << 2;
/// Userspace's record, unread by the program: it is attached through netlink
/// (a clsact filter, or XDP set on the device) because the kernel has no BPF
/// link of that kind (TCX links need Linux 6.6, XDP links 5.9).
pub const FLAG_NETLINK: u8 = 1 << 3;

/// In [`VLAN_MAP`]: answer only solicitations tagged with the VLAN id in the
/// low 12 bits (others, untagged ones included, are left to the kernel).
pub const VLAN_FILTER_ON: u32 = 1 << 16;
/// The VLAN id bits of an 802.1Q tag control field.
pub const VLAN_ID_MASK: u16 = 0x0fff;

/// How the program is attached, recorded for `ndp status`.
pub const ATTACH_MODE_NONE: u8 = 0;
pub const ATTACH_MODE_DRIVER: u8 = 1;
pub const ATTACH_MODE_GENERIC: u8 = 2;
pub const ATTACH_MODE_TC: u8 = 3;

/// The single value of [`CONFIG_MAP`].
///
/// Userspace rewrites the whole value at once and the kernel copies it without
/// locking, so a packet may see a half-written value. That is harmless by
/// construction: a slot of `lens` is only ever changed between zero and one
/// length (never from one length to another), so a torn read can skip a lookup
/// (one missed answer, retransmitted by the solicitor) but never look up a key
/// that is not in the map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NdpConfig {
    /// Source MAC of advertisements and their target link-layer option.
    pub mac: [u8; 6],
    /// `FLAG_*` bits.
    pub flags: u8,
    /// `ATTACH_MODE_*`, informational.
    pub attach_mode: u8,
    /// Interface the program is attached to, informational.
    pub ifindex: u32,
    /// Prefix lengths present in [`PREFIXES_MAP`]; 0 marks a free slot.
    pub lens: [u8; MAX_PREFIX_LENS],
}

/// Indices of [`COUNTERS_MAP`]. Every Neighbor Solicitation the program sees
/// ends in exactly one of the other four, so `Seen` is always their sum.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// ICMPv6 type 135 directly after the IPv6 header.
    Seen = 0,
    /// Turned into a Neighbor Advertisement and transmitted.
    Answered = 1,
    /// Valid, but for a target outside every prefix (or not addressed to it).
    NotOurs = 2,
    /// Failed RFC 4861 §7.1.1 validation (or longer than the program walks).
    Invalid = 3,
    /// Ours and valid, but the packet could not be resized for the answer.
    Failed = 4,
}

pub const COUNTER_COUNT: u32 = 5;

impl Counter {
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::Seen,
        Counter::Answered,
        Counter::NotOurs,
        Counter::Invalid,
        Counter::Failed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::Seen => "seen",
            Counter::Answered => "answered",
            Counter::NotOurs => "not_ours",
            Counter::Invalid => "invalid",
            Counter::Failed => "failed",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are repr(C), plain integers and byte arrays, with no padding
    // (PrefixKey: 4 + 16 bytes; NdpConfig: 6 + 1 + 1 + 4 + 8 bytes).
    unsafe impl aya::Pod for super::PrefixKey {}
    unsafe impl aya::Pod for super::NdpConfig {}
}

const _: () = assert!(core::mem::size_of::<PrefixKey>() == 20);
const _: () = assert!(core::mem::size_of::<NdpConfig>() == 20);
