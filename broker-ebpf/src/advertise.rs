//! The answer: a solicitation rewritten in place into an advertisement.

use broker_common::ndp::{FLAG_L3_DEVICE, FLAG_ROUTER, NdpConfig};

use crate::{
    checksum::Checksum,
    frame::{Frame, ptr_at},
    packet::{
        Addr, EthHdr, ICMPV6_NA, IPPROTO_ICMPV6, IPV6_HLEN, Ipv6Hdr, LlAddrOpt, NA_LEN_WITH_TLLA,
        NS_HLEN, NdHdr, OPT_TARGET_LLADDR, words,
    },
    validate::UNSPECIFIED,
};

/// ff02::1, where answers to DAD probes go, as it lies in memory.
const ALL_NODES: Addr = words([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
const ALL_NODES_MAC: [u16; 3] = [
    u16::from_ne_bytes([0x33, 0x33]),
    0,
    u16::from_ne_bytes([0, 1]),
];

/// Which advertisement went out.
pub(crate) enum Answer {
    /// To the solicitor, Solicited flag set.
    Solicited,
    /// To all nodes, for a DAD probe: the address is defended.
    Defended,
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
pub(crate) fn advertise<F: Frame>(
    ctx: &F,
    cfg: &NdpConfig,
    l3_off: usize,
    target: Addr,
) -> Option<Answer> {
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
    Some(if dad {
        Answer::Defended
    } else {
        Answer::Solicited
    })
}
