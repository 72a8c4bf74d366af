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
    frame::Frame,
    packet::{Addr, bytes, octets},
    validate::{Invalid, Rejected, Solicitation, solicitation, validate, vlan_passes},
};

#[map(name = "NDP_PREFIXES")]
static NDP_PREFIXES: HashMap<PrefixKey, PrefixValue> =
    HashMap::pinned(MAX_PREFIXES, BPF_F_NO_PREALLOC);

#[map(name = "NDP_CONFIG")]
static NDP_CONFIG: Array<NdpConfig> = Array::pinned(1, 0);

#[map(name = "NDP_VLAN")]
static NDP_VLAN: Array<u32> = Array::pinned(1, 0);

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
        vlan,
    } = solicitation(ctx, l3)?;
    if !vlan_passes(NDP_VLAN.get(0).copied().unwrap_or(0), l3, vlan) {
        return None;
    }
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
