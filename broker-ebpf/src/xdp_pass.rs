//! Passes every packet. Native XDP_TX on a veth only delivers frames when the
//! peer veth runs an XDP program too (real NICs have no such need); tests and
//! benchmarks attach this one on the peer. Its own object, with no maps, so
//! loading it never touches the responder's pins.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

broker_ebpf::program_object!();
