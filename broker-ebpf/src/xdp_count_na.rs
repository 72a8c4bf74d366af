//! For the link benchmarks only: counts the Neighbor Advertisements that
//! reach the solicitor's side of a veth, in the kernel, where no answer is
//! missed however fast they come (a userspace socket drops under load), and
//! drops them (or passes them, for latency probes that read them from a
//! socket). Being an XDP program it also meets the veth's need for one on the
//! peer of a native-mode responder. Its own object, with no pinned maps.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use broker_common::bench::{COUNT_NA, COUNT_OTHER};

/// Per CPU: [COUNT_NA] advertisements, [COUNT_OTHER] every other frame.
#[map(name = "NA_COUNTS")]
static NA_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// Entry 0: nonzero to pass advertisements on to the kernel, zero to drop them.
#[map(name = "NA_PASS")]
static NA_PASS: Array<u32> = Array::with_max_entries(1, 0);

const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
const IPPROTO_ICMPV6: u8 = 58;
const ICMPV6_NA: u8 = 136;
/// Ethernet (14) + IPv6 (40) + the ICMPv6 type byte.
const NA_TYPE_END: usize = 14 + 40 + 1;

#[xdp]
pub fn xdp_count_na(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    let is_na = if start + NA_TYPE_END <= ctx.data_end() {
        let p = start as *const u8;
        // SAFETY: the bounds were checked just above.
        unsafe {
            *p.add(12) == ETH_P_IPV6[0]
                && *p.add(13) == ETH_P_IPV6[1]
                && *p.add(20) == IPPROTO_ICMPV6
                && *p.add(54) == ICMPV6_NA
        }
    } else {
        false
    };
    let slot = if is_na { COUNT_NA } else { COUNT_OTHER };
    if let Some(counter) = NA_COUNTS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot, no concurrent writer.
        unsafe { *counter += 1 };
    }
    let pass = NA_PASS.get(0).is_some_and(|&v| v != 0);
    if is_na && !pass {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

broker_ebpf::program_object!();
