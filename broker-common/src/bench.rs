//! What the benchmarks (broker-userspace's benches/ndp) and their own program
//! objects agree on. None of it is in the daemon's object.

/// The in-kernel cost benchmark's program (broker-ebpf's
/// `ndp-responder-bench` object, never attached): copies frame
/// `cursor % count` of [`BENCH_FRAMES_MAP`] over the packet, then does
/// exactly what the responder does. BPF_PROG_TEST_RUN with `repeat` reuses
/// one buffer, which the responder rewrites on its first run; re-arming lets
/// every repetition answer a fresh solicitation, for one target or many.
pub const BENCH_PROGRAM_NAME: &str = "ndp_responder_bench";
/// `Array<BenchFrame>`, [`BENCH_MAX_FRAMES`] entries.
pub const BENCH_FRAMES_MAP: &str = "NDP_BENCH_FRAMES";
/// `Array<u32>`: entry 0 is the number of frames in use.
pub const BENCH_COUNT_MAP: &str = "NDP_BENCH_COUNT";
pub const BENCH_MAX_FRAMES: u32 = 4096;
pub const BENCH_FRAME_LEN: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BenchFrame {
    pub data: [u8; BENCH_FRAME_LEN],
}

#[cfg(feature = "user")]
// SAFETY: a byte array.
unsafe impl aya::Pod for BenchFrame {}

/// Link benchmarks: `xdp_count_na` (broker-ebpf's `xdp-count-na` object)
/// counts advertisements arriving on the solicitor's veth.
pub const COUNT_PROGRAM_NAME: &str = "xdp_count_na";
/// `PerCpuArray<u64>` of two: [`COUNT_NA`] and [`COUNT_OTHER`].
pub const COUNT_MAP: &str = "NA_COUNTS";
/// `Array<u32>`, one entry: nonzero passes advertisements to the kernel.
pub const COUNT_PASS_MAP: &str = "NA_PASS";
pub const COUNT_NA: u32 = 0;
pub const COUNT_OTHER: u32 = 1;
