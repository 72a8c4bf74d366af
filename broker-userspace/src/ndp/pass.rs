//! An XDP program that passes every packet, for the far end of a veth.
//!
//! Native-mode XDP_TX on a veth delivers frames only when the peer veth has
//! an XDP program attached as well (otherwise they are dropped and counted in
//! `xdp_tx_errors`). Real NICs have no such requirement; tests, the demo and
//! the benchmarks attach this program to the peer of the responder's veth.
//! It is also the empty-program baseline of the benchmarks.

use std::sync::atomic::{AtomicU32, Ordering};

use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, XdpMode},
};

use super::{Interface, NdpError, PinDir, bpffs::DEFAULT_PIN_DIR, program::PASS_OBJECT};

/// Loaded (and attached, if asked) while this value lives; detached on drop.
pub struct PassProgram {
    ebpf: Ebpf,
}

impl PassProgram {
    /// Loads the program without attaching it.
    pub fn load() -> Result<Self, NdpError> {
        let ebpf = load_helper_object(PASS_OBJECT)?;
        let mut pass = PassProgram { ebpf };
        pass.program()?.load()?;
        Ok(pass)
    }

    /// Loads the program and attaches it in native mode to `iface` of the
    /// calling thread's network namespace.
    pub fn attach(iface: &Interface) -> Result<Self, NdpError> {
        let mut pass = Self::load()?;
        pass.program()?
            .attach_to_if_index(iface.index, XdpMode::Driver)
            .map_err(|source| NdpError::Attach {
                interface: iface.name.clone(),
                mode: "driver",
                source,
            })?;
        Ok(pass)
    }

    pub fn program(&mut self) -> Result<&mut Xdp, NdpError> {
        Ok(self
            .ebpf
            .program_mut("xdp_pass")
            .ok_or(NdpError::MissingProgram("xdp_pass"))?
            .try_into()?)
    }
}

/// Loads an object that links the broker-ebpf library without running the
/// responder: it carries the responder's maps all the same (pinned by name),
/// which aya would pin at the bpffs root, beside everything else there. They
/// are pinned in a scratch directory of their own instead, removed at once
/// (the loaded object keeps its maps through their descriptors).
pub fn load_helper_object(object: &[u8]) -> Result<Ebpf, NdpError> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let parent = std::path::Path::new(DEFAULT_PIN_DIR)
        .parent()
        .unwrap_or(std::path::Path::new("/sys/fs/bpf"));
    let scratch = PinDir::new(parent.join(format!(
        "blockhost-broker-scratch-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )));
    scratch.create()?;
    let loaded = EbpfLoader::new()
        .default_map_pin_directory(scratch.path())
        .load(object)
        .map_err(|e| NdpError::Load(Box::new(e)));
    if let Ok(pins) = std::fs::read_dir(scratch.path()) {
        for pin in pins.filter_map(Result::ok) {
            let _ = std::fs::remove_file(pin.path());
        }
    }
    let _ = std::fs::remove_dir(scratch.path());
    loaded
}
