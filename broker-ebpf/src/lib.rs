#![no_std]
// The programs are the binaries (src/main.rs, src/xdp_pass.rs,
// src/xdp_count_na.rs). This library exists so broker-userspace can name the
// crate as a build dependency and be rebuilt when it changes, and to hold
// what every program object needs.

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
