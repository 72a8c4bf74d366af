//! An XDP program that passes every packet, for the far end of a veth.
//!
//! Native-mode XDP_TX on a veth delivers frames only when the peer veth has
//! an XDP program attached as well (otherwise they are dropped and counted in
//! `xdp_tx_errors`). Real NICs have no such requirement; tests, the demo and
//! the benchmarks attach this program to the peer of the responder's veth.
//! It is also the empty-program baseline of the benchmarks.

use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};

use super::{Interface, NdpError, program::PASS_OBJECT};

/// Loaded (and attached, if asked) while this value lives; detached on drop.
pub struct PassProgram {
    ebpf: Ebpf,
}

impl PassProgram {
    /// Loads the program without attaching it.
    pub fn load() -> Result<Self, NdpError> {
        let ebpf = Ebpf::load(PASS_OBJECT).map_err(|e| NdpError::Load(Box::new(e)))?;
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
