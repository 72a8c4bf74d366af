#![no_std]
//! The NDP responder's logic ([`responder::respond`] and the maps it owns),
//! shared by the program objects that run it: the production object
//! (src/main.rs: the XDP and TC entry points the daemon attaches) and the
//! benchmark's (src/ndp_responder_bench.rs), so the benchmark measures the
//! very code the daemon runs while the daemon loads nothing of the
//! benchmark's. The other objects (src/xdp_pass.rs, src/xdp_count_na.rs)
//! only use [`program_object!`].
//!
//! The library is also built for the host, as a build dependency of
//! broker-userspace (so that cargo rebuilds the objects when it changes),
//! and for the fuzz target, which runs the packet code through [`host`].

mod advertise;
mod checksum;
pub mod frame;
#[cfg(not(target_arch = "bpf"))]
pub mod host;
pub mod packet;
#[cfg(target_arch = "bpf")]
pub mod responder;
mod validate;

/// The panic handler and the license section of a program object (the
/// verifier refuses GPL-only helpers without the license).
#[macro_export]
macro_rules! program_object {
    () => {
        #[cfg(not(test))]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
    };
}
