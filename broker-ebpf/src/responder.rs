//! The NDP responder: answers IPv6 Neighbor Solicitations for every address
//! of every allocated prefix, so the upstream router can reach them without
//! one proxy entry per address. The entry points (XDP and TC) are in
//! src/main.rs; the benchmark's in src/ndp_responder_bench.rs runs the same
//! [`respond`].
//!
//! A valid solicitation (RFC 4861 §7.1.1) whose target lies in a prefix of
//! `NDP_PREFIXES` is rewritten in place into a Neighbor Advertisement, to be
//! sent back out of the interface it came in on. Everything else, including
//! solicitations we decline, is left to the kernel untouched.
//!
//! Logging (aya-log, read into the daemon's log) happens only on the rare
//! paths: a DAD probe defended, an invalid solicitation and why, an answer
//! that could not be made. The common ones (answered, not ours, not a
//! solicitation) never reach a log call: one record per packet cost a first
//! prototype 30-50 % of its throughput. A log call whose level is off costs
//! nothing either: the level is a read-only global that userspace sets at
//! load (`AYA_LOG_LEVEL`), so the verifier sees it as a constant and drops
//! the disabled calls from the program.
//!
//! Every packet read goes through its own bounds check with a constant size:
//! the verifier cannot carry a check of a variable length (the IP payload
//! length) over to later reads, and the compiler would merge such checks.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use aya_log_ebpf::{debug, trace};
use broker_common::ndp::{
    COUNTER_COUNT, Counter, FLAG_CONFIGURED, FLAG_L3_DEVICE, LOG_TARGET, MAX_PREFIX_LENS,
    MAX_PREFIXES, NdpConfig, PrefixKey, PrefixValue,
};

use crate::{
    advertise::{Answer, advertise},
    frame::{Frame, ptr_at},
    packet::{
        Addr, ETH_HLEN, ETH_P_8021Q, ETH_P_IPV6, EthHdr, ICMPV6_NS, IPPROTO_ICMPV6, IPV6_HLEN,
        Ipv6Hdr, bytes, octets,
    },
    validate::{Invalid, Rejected, validate},
};

#[map(name = "NDP_PREFIXES")]
static NDP_PREFIXES: HashMap<PrefixKey, PrefixValue> =
    HashMap::pinned(MAX_PREFIXES, BPF_F_NO_PREALLOC);

#[map(name = "NDP_CONFIG")]
static NDP_CONFIG: Array<NdpConfig> = Array::pinned(1, 0);

#[map(name = "NDP_COUNTERS")]
static NDP_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_COUNT, 0);

/// Answers the solicitation in `ctx` in place, or leaves it untouched and
/// returns None.
#[inline(always)]
pub fn respond<F: Frame>(ctx: &F) -> Option<()> {
    let cfg: *const NdpConfig = NDP_CONFIG.get_ptr(0)?;
    // SAFETY: an array map's value stays valid for the whole program run.
    let cfg = unsafe { &*cfg };
    if cfg.flags & FLAG_CONFIGURED == 0 {
        return None;
    }
    let l3 = cfg.flags & FLAG_L3_DEVICE != 0;

    let Solicitation {
        ip,
        icmp_off,
        l3_off,
        group_source,
    } = solicitation(ctx, l3)?;
    // SAFETY: solicitation checked the bounds.
    let ip = unsafe { &*ip };
    count(Counter::Seen);
    if group_source {
        count(Counter::Invalid);
        log_invalid(&ip.src, Invalid::GroupLinkSource);
        return None;
    }

    let target = match validate(ctx, ip, icmp_off) {
        Ok(target) => target,
        Err(Rejected::NotOurs) => {
            count(Counter::NotOurs);
            return None;
        }
        Err(Rejected::Invalid(why)) => {
            count(Counter::Invalid);
            log_invalid(&ip.src, why);
            return None;
        }
    };
    if !is_ours(cfg, &target) {
        count(Counter::NotOurs);
        return None;
    }
    match advertise(ctx, cfg, l3_off, target) {
        Some(Answer::Solicited) => {
            count(Counter::Answered);
            Some(())
        }
        Some(Answer::Defended) => {
            count(Counter::Answered);
            log_defended(&target);
            Some(())
        }
        None => {
            count(Counter::Failed);
            log_failed(&target);
            None
        }
    }
}

/// Where the parts of a Neighbor Solicitation lie in a packet.
pub(crate) struct Solicitation {
    pub ip: *const Ipv6Hdr,
    pub l3_off: usize,
    pub icmp_off: usize,
    /// The frame came from a group (multicast or broadcast) link-layer
    /// address: no neighbor's, and the answer would go to the group, with
    /// our MAC.
    pub group_source: bool,
}

/// Whether the packet is an ICMPv6 Neighbor Solicitation (in an Ethernet
/// frame with at most one 802.1Q tag, or bare on an L3 device), and where
/// its parts lie; None for everything else, which is left to the kernel.
/// Nothing is validated yet beyond the headers' bounds.
#[inline(always)]
pub(crate) fn solicitation<F: Frame>(ctx: &F, l3: bool) -> Option<Solicitation> {
    let mut group_source = false;
    let l3_off = if l3 {
        0
    } else {
        let eth: *const EthHdr = ptr_at(ctx, 0)?;
        // SAFETY (all packet reads below): ptr_at checked the bounds.
        let mut ethertype = u16::from_be(unsafe { (*eth).ethertype });
        group_source = bytes(unsafe { (*eth).src[0] })[0] & 1 != 0;
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
    let header = unsafe { &*ip };
    // An NS behind extension headers is legal but unheard of; it is left to
    // the kernel rather than paying for a header walk on every packet.
    if bytes(header.vtc_flow[0])[0] >> 4 != 6 || header.next_header != IPPROTO_ICMPV6 {
        return None;
    }
    let icmp_off = l3_off + IPV6_HLEN;
    let icmp_type: *const u8 = ptr_at(ctx, icmp_off)?;
    if unsafe { *icmp_type } != ICMPV6_NS {
        return None;
    }
    Some(Solicitation {
        ip,
        l3_off,
        icmp_off,
        group_source,
    })
}

// The log calls, each a function of its own (a BPF subprogram) that the
// rare paths call: inlined, their record building made the compiler keep
// more values alive through the common paths, which cost those paths a few
// ns per packet even with the calls off. aya-log's macros want a context
// but do nothing with it (`&()` stands in).

#[inline(never)]
fn log_invalid(source: &Addr, why: Invalid) {
    trace!(
        &(),
        target: LOG_TARGET,
        "invalid solicitation from {:i} left to the kernel: {}",
        octets(source),
        why.text()
    );
}

#[inline(never)]
fn log_defended(target: &Addr) {
    debug!(
        &(),
        target: LOG_TARGET,
        "defended {:i} against a duplicate address detection probe",
        octets(target)
    );
}

#[inline(never)]
fn log_failed(target: &Addr) {
    debug!(
        &(),
        target: LOG_TARGET,
        "could not resize the packet to answer for {:i}",
        octets(target)
    );
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
        if NDP_PREFIXES.get_ptr(key).is_some() {
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

#[inline(always)]
fn count(counter: Counter) {
    if let Some(value) = NDP_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot: no other run of the program touches it meanwhile.
        unsafe { *value += 1 };
    }
}
