//! For the benchmark only (broker-userspace's benches/ndp/kernel_cost.rs),
//! never attached: its own object, so the daemon's carries none of it.
//!
//! BPF_PROG_TEST_RUN with `repeat` reuses one buffer, which the responder
//! rewrites on its first run. This program first copies the next frame of
//! `NDP_BENCH_FRAMES` over the packet (whose length must match), then runs
//! the responder's own code (`broker_ebpf::responder::respond`), so every
//! repetition answers a fresh solicitation, for one target or many. Loaded
//! with the responder's pin directory, it shares the responder's maps.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use broker_common::bench::{BENCH_FRAME_LEN, BENCH_MAX_FRAMES, BenchFrame};
use broker_ebpf::{frame::ptr_at, responder::respond};

#[map(name = "NDP_BENCH_FRAMES")]
static NDP_BENCH_FRAMES: Array<BenchFrame> = Array::with_max_entries(BENCH_MAX_FRAMES, 0);

#[map(name = "NDP_BENCH_COUNT")]
static NDP_BENCH_COUNT: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "NDP_BENCH_CURSOR")]
static NDP_BENCH_CURSOR: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn ndp_responder_bench(ctx: XdpContext) -> u32 {
    rearm(&ctx);
    match respond(&ctx) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_PASS,
    }
}

/// Copies frame `cursor % count` over the packet and advances the cursor.
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

broker_ebpf::program_object!();
