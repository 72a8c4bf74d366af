//! The NDP responder: an XDP program on the broker's upstream interface that
//! answers IPv6 Neighbor Solicitations for every address of every allocated
//! prefix, so the upstream router can reach them without one proxy entry per
//! address.
//!
//! A valid solicitation (RFC 4861 §7.1.1) whose target lies in a prefix of
//! `NDP_PREFIXES` is rewritten in place into a Neighbor Advertisement and sent
//! back out of the interface it came in on (XDP_TX). Everything else, including
//! solicitations we decline, is passed to the kernel untouched. No logging on
//! this path: a log record per packet costs a third of the throughput.
//!
//! Every packet read goes through its own bounds check with a constant size:
//! the verifier cannot carry a check of a variable length (the IP payload
//! length) over to later reads, and the compiler would merge such checks.
#![no_std]
#![no_main]

mod checksum;
mod frame;
mod packet;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_OK, xdp_action},
    helpers::generated::bpf_redirect,
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use broker_common::ndp::{
    BENCH_FRAME_LEN, BENCH_MAX_FRAMES, BenchFrame, COUNTER_COUNT, Counter, FLAG_CONFIGURED,
    FLAG_L3_DEVICE, FLAG_ROUTER, MAX_NS_OPTION_UNITS, MAX_PREFIX_LENS, MAX_PREFIXES, NdpConfig,
    PrefixKey, PrefixValue,
};

use crate::{
    checksum::Checksum,
    frame::{Frame, ptr_at},
    packet::{
        Addr, ETH_HLEN, ETH_P_8021Q, ETH_P_IPV6, EthHdr, ICMPV6_NA, ICMPV6_NS, IPPROTO_ICMPV6,
        IPV6_HLEN, Ipv6Hdr, LlAddrOpt, NA_LEN_WITH_TLLA, NS_HLEN, NdHdr, OPT_SOURCE_LLADDR,
        OPT_TARGET_LLADDR, bytes,
    },
};

#[map(name = "NDP_PREFIXES")]
static NDP_PREFIXES: HashMap<PrefixKey, PrefixValue> =
    HashMap::pinned(MAX_PREFIXES, BPF_F_NO_PREALLOC);

#[map(name = "NDP_CONFIG")]
static NDP_CONFIG: Array<NdpConfig> = Array::pinned(1, 0);

#[map(name = "NDP_COUNTERS")]
static NDP_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_COUNT, 0);

#[map(name = "NDP_BENCH_FRAMES")]
static NDP_BENCH_FRAMES: Array<BenchFrame> = Array::with_max_entries(BENCH_MAX_FRAMES, 0);

#[map(name = "NDP_BENCH_COUNT")]
static NDP_BENCH_COUNT: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "NDP_BENCH_CURSOR")]
static NDP_BENCH_CURSOR: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// ff02::1, where answers to DAD probes go, as it lies in memory.
const ALL_NODES: Addr = words([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
const ALL_NODES_MAC: [u16; 3] = [
    u16::from_ne_bytes([0x33, 0x33]),
    0,
    u16::from_ne_bytes([0, 1]),
];
const UNSPECIFIED: Addr = [0; 8];

const fn words(b: [u8; 16]) -> Addr {
    let mut w = [0u16; 8];
    let mut i = 0;
    while i < 8 {
        w[i] = u16::from_ne_bytes([b[2 * i], b[2 * i + 1]]);
        i += 1;
    }
    w
}

#[xdp]
pub fn ndp_responder(ctx: XdpContext) -> u32 {
    match respond(&ctx) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_PASS,
    }
}

/// The same responder at TC ingress, for L3 upstreams (SIT and other
/// tunnels). Generic XDP cannot answer there: after the program runs, the
/// kernel reads the packet's first 14 bytes as an Ethernet header and, as
/// those bytes changed (they are the IPv6 source address's), re-derives the
/// packet's protocol from them, so the answer left as a non-IPv6 packet that
/// the tunnel drops. At TC the protocol stays IPv6, and the answer goes out
/// of the same device with bpf_redirect.
#[classifier]
pub fn ndp_responder_tc(ctx: TcContext) -> i32 {
    if !linearize(&ctx) {
        return TC_ACT_OK as i32;
    }
    match respond(&ctx) {
        // SAFETY: a plain helper call; the skb is ours to redirect.
        Some(()) => unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) as i32 },
        None => TC_ACT_OK as i32,
    }
}

/// Direct packet access only reaches an skb's linear part. Tunnels deliver
/// headers there, but a solicitation must be whole: for the (cheaply
/// recognised) ICMPv6 packets on an L3 device, pull as much as a solicitation
/// can have. False when the pull fails.
#[inline(always)]
fn linearize(ctx: &TcContext) -> bool {
    let len = ctx.len() as usize;
    let linear = ctx.data_end() - ctx.data();
    let want = if len < NS_MAX_L3_LEN {
        len
    } else {
        NS_MAX_L3_LEN
    };
    if linear >= want {
        return true;
    }
    let Ok(next_header) = ctx.load::<u8>(6) else {
        return true;
    };
    if next_header != IPPROTO_ICMPV6 {
        return true;
    }
    ctx.pull_data(want as u32).is_ok()
}

/// The longest solicitation (on an L3 device) the responder walks.
const NS_MAX_L3_LEN: usize = IPV6_HLEN + NS_HLEN + 8 * MAX_NS_OPTION_UNITS;

/// For benchmarks only, never attached: see `broker_common::ndp::BENCH_PROGRAM_NAME`.
/// Copies the next benchmark frame over the packet (whose length must match),
/// then runs the responder unchanged.
#[xdp]
pub fn ndp_responder_bench(ctx: XdpContext) -> u32 {
    rearm(&ctx);
    match respond(&ctx) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn rearm(ctx: &XdpContext) -> Option<()> {
    let count = *NDP_BENCH_COUNT.get(0)?;
    let cursor = NDP_BENCH_CURSOR.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot.
    let index = unsafe {
        let i = *cursor;
        *cursor = i.wrapping_add(1);
        if count == 0 { 0 } else { i % count }
    };
    let frame = NDP_BENCH_FRAMES.get(index)?;
    // Eight bytes at a time while they fit, then two (frames have even length).
    let mut off = 0;
    while off + 8 <= BENCH_FRAME_LEN {
        let Some(dst) = ptr_at::<[u8; 8], _>(ctx, off) else {
            break;
        };
        let mut word = [0u8; 8];
        word.copy_from_slice(&frame.data[off..off + 8]);
        // SAFETY: ptr_at checked the bounds.
        unsafe { *dst = word };
        off += 8;
    }
    let mut tail = 0;
    while tail < 4 {
        let at = off + 2 * tail;
        if at + 2 > BENCH_FRAME_LEN {
            break;
        }
        let Some(dst) = ptr_at::<[u8; 2], _>(ctx, at) else {
            break;
        };
        // SAFETY: ptr_at checked the bounds.
        unsafe { *dst = [frame.data[at], frame.data[at + 1]] };
        tail += 1;
    }
    Some(())
}

/// Answers the solicitation in `ctx` in place, or leaves it untouched and
/// returns None.
#[inline(always)]
fn respond<F: Frame>(ctx: &F) -> Option<()> {
    let cfg: *const NdpConfig = NDP_CONFIG.get_ptr(0)?;
    // SAFETY: an array map's value stays valid for the whole program run.
    let cfg = unsafe { &*cfg };
    if cfg.flags & FLAG_CONFIGURED == 0 {
        return None;
    }
    let l3 = cfg.flags & FLAG_L3_DEVICE != 0;

    let l3_off = if l3 {
        0
    } else {
        let eth: *const EthHdr = ptr_at(ctx, 0)?;
        // SAFETY (all packet reads below): ptr_at checked the bounds.
        let mut ethertype = u16::from_be(unsafe { (*eth).ethertype });
        let mut off = ETH_HLEN;
        // One 802.1Q tag. The answer keeps it: only the Ethernet addresses
        // are rewritten.
        if ethertype == ETH_P_8021Q {
            let inner: *const [u16; 2] = ptr_at(ctx, ETH_HLEN)?;
            ethertype = u16::from_be(unsafe { (*inner)[1] });
            off += 4;
        }
        if ethertype != ETH_P_IPV6 {
            return None;
        }
        off
    };

    let ip: *const Ipv6Hdr = ptr_at(ctx, l3_off)?;
    let ip = unsafe { &*ip };
    // An NS behind extension headers is legal but unheard of; it is left to
    // the kernel rather than paying for a header walk on every packet.
    if bytes(ip.vtc_flow[0])[0] >> 4 != 6 || ip.next_header != IPPROTO_ICMPV6 {
        return None;
    }
    let icmp_off = l3_off + IPV6_HLEN;
    let icmp_type: *const u8 = ptr_at(ctx, icmp_off)?;
    if unsafe { *icmp_type } != ICMPV6_NS {
        return None;
    }
    count(Counter::Seen);

    let target = match validate(ctx, ip, icmp_off) {
        Ok(target) => target,
        Err(counter) => {
            count(counter);
            return None;
        }
    };
    if !is_ours(cfg, &target) {
        count(Counter::NotOurs);
        return None;
    }
    match advertise(ctx, cfg, l3_off, target) {
        Some(()) => {
            count(Counter::Answered);
            Some(())
        }
        None => {
            count(Counter::Failed);
            None
        }
    }
}

/// RFC 4861 §7.1.1, in the order it lists the checks, plus one of ours: the
/// solicitation must be addressed to the target's owner (its solicited-node
/// group, or the target itself for unicast NUD probes); anything else is not
/// a question for us and counts as not ours. Returns the target.
#[inline(always)]
fn validate<F: Frame>(ctx: &F, ip: &Ipv6Hdr, icmp_off: usize) -> Result<Addr, Counter> {
    let ns: *const NdHdr = ptr_at(ctx, icmp_off).ok_or(Counter::Invalid)?;
    let ns = unsafe { &*ns };
    // Hop limit 255: the packet cannot have come through a router.
    if ip.hop_limit != 255 {
        return Err(Counter::Invalid);
    }
    // ICMP length (the IP payload length) at least 24 octets; options come
    // in 8-octet units, so any other length ends in a malformed option.
    let icmp_len = u16::from_be(ip.payload_len) as usize;
    if icmp_len < NS_HLEN || (icmp_len - NS_HLEN) % 8 != 0 {
        return Err(Counter::Invalid);
    }
    let option_units = (icmp_len - NS_HLEN) / 8;
    if option_units > MAX_NS_OPTION_UNITS {
        return Err(Counter::Invalid);
    }
    // Code 0.
    if ns.code != 0 {
        return Err(Counter::Invalid);
    }
    // Target not multicast.
    if bytes(ns.target[0])[0] == 0xff {
        return Err(Counter::Invalid);
    }

    let mut sum = Checksum::pseudo_header(&ip.src, &ip.dst, icmp_len as u16);
    sum.add(u16::from_ne_bytes([ns.icmp_type, ns.code]));
    sum.add(ns.checksum);
    sum.add(u16::from_ne_bytes([ns.reserved[0], ns.reserved[1]]));
    sum.add(u16::from_ne_bytes([ns.reserved[2], ns.reserved[3]]));
    sum.add_words(&ns.target);

    // Walk the options in 8-octet units, summing each for the checksum and
    // checking each option header where one starts: every option has a
    // non-zero length and the last one ends exactly at the end. A unit past
    // the frame's end means the IP header claims more than arrived.
    let mut has_source_lladdr = false;
    let mut next_option = 0;
    let mut unit = 0;
    while unit < MAX_NS_OPTION_UNITS {
        if unit >= option_units {
            break;
        }
        let chunk: *const [u16; 4] =
            ptr_at(ctx, icmp_off + NS_HLEN + unit * 8).ok_or(Counter::Invalid)?;
        let chunk = unsafe { *chunk };
        sum.add_words(&chunk);
        if unit == next_option {
            let [opt_type, opt_len] = bytes(chunk[0]);
            if opt_len == 0 {
                return Err(Counter::Invalid);
            }
            if opt_type == OPT_SOURCE_LLADDR {
                has_source_lladdr = true;
            }
            next_option = unit + opt_len as usize;
        }
        unit += 1;
    }
    if next_option != option_units {
        return Err(Counter::Invalid);
    }
    // Valid ICMP checksum.
    if !sum.is_valid() {
        return Err(Counter::Invalid);
    }
    // A DAD probe (unspecified source) goes to a solicited-node group and
    // carries no source link-layer address.
    let dst = ip.dst;
    let target = ns.target;
    if ip.src == UNSPECIFIED && (!is_solicited_node_group(&dst) || has_source_lladdr) {
        return Err(Counter::Invalid);
    }
    if dst != target
        && !(is_solicited_node_group(&dst)
            && dst[7] == target[7]
            && bytes(dst[6])[1] == bytes(target[6])[1])
    {
        return Err(Counter::NotOurs);
    }
    Ok(target)
}

/// ff02::1:ffXX:XXXX, whatever the last 24 bits.
#[inline(always)]
fn is_solicited_node_group(a: &Addr) -> bool {
    const HEAD: Addr = words([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0]);
    a[0] == HEAD[0]
        && a[1] == 0
        && a[2] == 0
        && a[3] == 0
        && a[4] == 0
        && a[5] == HEAD[5]
        && bytes(a[6])[0] == 0xff
}

/// One hash lookup per prefix length in use (one, for the broker).
#[inline(always)]
fn is_ours(cfg: &NdpConfig, target: &Addr) -> bool {
    let hi = u64::from_be_bytes(addr_bytes(target, 0));
    let lo = u64::from_be_bytes(addr_bytes(target, 4));
    let mut i = 0;
    while i < MAX_PREFIX_LENS {
        let len = cfg.lens[i] as u32;
        i += 1;
        if len == 0 || len > 128 {
            continue;
        }
        let (h, l) = if len >= 64 {
            (hi, lo & mask(len - 64))
        } else {
            (hi & mask(len), 0)
        };
        let h = h.to_be_bytes();
        let l = l.to_be_bytes();
        let key = PrefixKey {
            len,
            addr: [
                h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], l[0], l[1], l[2], l[3], l[4], l[5],
                l[6], l[7],
            ],
        };
        if NDP_PREFIXES.get_ptr(&key).is_some() {
            return true;
        }
    }
    false
}

/// Bytes of four words of an address, starting at word `from`.
#[inline(always)]
fn addr_bytes(a: &Addr, from: usize) -> [u8; 8] {
    let [b0, b1] = bytes(a[from]);
    let [b2, b3] = bytes(a[from + 1]);
    let [b4, b5] = bytes(a[from + 2]);
    let [b6, b7] = bytes(a[from + 3]);
    [b0, b1, b2, b3, b4, b5, b6, b7]
}

/// The top `bits` bits set, `bits` in 0..=64.
#[inline(always)]
fn mask(bits: u32) -> u64 {
    if bits == 0 { 0 } else { !0u64 << (64 - bits) }
}

/// Rewrites the solicitation into the advertisement the kernel's own proxy
/// would send (`ndisc_recv_ns` with a proxy entry), without its random delay:
/// - Solicited flag set, sent to the solicitor, for an ordinary NS; for a DAD
///   probe, Solicited clear and sent to all-nodes, which defends the address.
/// - Override clear: RFC 4861 §7.2.8 says a proxy's advertisement must not
///   replace a cache entry made by the address's real owner.
/// - Router flag as configured (the broker routes these prefixes).
/// - Source address: the target itself. §7.2.4 asks for "an address assigned
///   to the interface"; the target is the address we answer for, receivers do
///   not check the source, and it spares us knowing the upstream's addresses.
/// - Target link-layer option with the upstream MAC, except on L3 devices.
/// - Hop limit 255, traffic class and flow label 0; the VLAN tag, if any, kept.
#[inline(always)]
fn advertise<F: Frame>(ctx: &F, cfg: &NdpConfig, l3_off: usize, target: Addr) -> Option<()> {
    let l3 = cfg.flags & FLAG_L3_DEVICE != 0;
    // What the rewrite needs of the solicitation, read before the packet's
    // end moves (after which nothing of it can be read).
    let ip: *const Ipv6Hdr = ptr_at(ctx, l3_off)?;
    let source = unsafe { (*ip).src };
    let dad = source == UNSPECIFIED;
    let source_mac = if l3 {
        [0; 3]
    } else {
        let eth: *const EthHdr = ptr_at(ctx, 0)?;
        unsafe { (*eth).src }
    };

    let na_len = if l3 { NS_HLEN } else { NA_LEN_WITH_TLLA };
    if !ctx.set_len(l3_off + IPV6_HLEN + na_len) {
        return None;
    }

    let mac = [
        u16::from_ne_bytes([cfg.mac[0], cfg.mac[1]]),
        u16::from_ne_bytes([cfg.mac[2], cfg.mac[3]]),
        u16::from_ne_bytes([cfg.mac[4], cfg.mac[5]]),
    ];
    if !l3 {
        let eth: *mut EthHdr = ptr_at(ctx, 0)?;
        let eth = unsafe { &mut *eth };
        eth.dst = if dad { ALL_NODES_MAC } else { source_mac };
        eth.src = mac;
    }

    let dst = if dad { ALL_NODES } else { source };
    let ip: *mut Ipv6Hdr = ptr_at(ctx, l3_off)?;
    unsafe {
        *ip = Ipv6Hdr {
            vtc_flow: [u16::from_ne_bytes([0x60, 0]), 0],
            payload_len: (na_len as u16).to_be(),
            next_header: IPPROTO_ICMPV6,
            hop_limit: 255,
            src: target,
            dst,
        }
    };

    let mut flags = 0u8;
    if cfg.flags & FLAG_ROUTER != 0 {
        flags |= 0x80;
    }
    if !dad {
        flags |= 0x40;
    }
    let mut na = NdHdr {
        icmp_type: ICMPV6_NA,
        code: 0,
        checksum: 0,
        reserved: [flags, 0, 0, 0],
        target,
    };
    let mut sum = Checksum::pseudo_header(&target, &dst, na_len as u16);
    sum.add(u16::from_ne_bytes([ICMPV6_NA, 0]));
    sum.add(u16::from_ne_bytes([flags, 0]));
    sum.add_words(&target);
    if !l3 {
        let opt = LlAddrOpt {
            opt_type: OPT_TARGET_LLADDR,
            len: 1,
            addr: mac,
        };
        sum.add(u16::from_ne_bytes([OPT_TARGET_LLADDR, 1]));
        sum.add_words(&mac);
        let out: *mut LlAddrOpt = ptr_at(ctx, l3_off + IPV6_HLEN + NS_HLEN)?;
        unsafe { *out = opt };
    }
    na.checksum = sum.finish();
    let out: *mut NdHdr = ptr_at(ctx, l3_off + IPV6_HLEN)?;
    unsafe { *out = na };
    Some(())
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(value) = NDP_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot: no other run of the program touches it meanwhile.
        unsafe { *value += 1 };
    }
}

broker_ebpf::program_object!();
