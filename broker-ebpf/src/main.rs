//! The responder's program object, the one the daemon loads: its XDP entry
//! point for Ethernet upstreams and its TC one for L3 upstreams, both running
//! `broker_ebpf::responder::respond`. Besides them the object holds only the
//! responder's (pinned) maps and aya-log's ring buffer and level.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    helpers::generated::bpf_redirect,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use broker_common::ndp::MAX_NS_OPTION_UNITS;
use broker_ebpf::{
    packet::{IPPROTO_ICMPV6, IPV6_HLEN, NS_HLEN},
    responder::respond,
};

/// Answers with XDP_TX, out of the interface the solicitation came in on.
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

broker_ebpf::program_object!();
