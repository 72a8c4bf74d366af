//! The responder's packet code on the host: a [`Frame`] over a heap buffer,
//! and [`respond`], which runs the program's own steps on it
//! ([`solicitation`], [`validate`], [`advertise`]) with the maps replaced
//! by arguments: the configuration, and a function that says whether a
//! target is in the prefix map. For the fuzz target
//! (fuzz/fuzz_targets/solicitation.rs), which compares it with broker-lab's
//! reference model; never built for the kernel.

use core::cell::{Cell, RefCell};

extern crate alloc;
use alloc::vec::Vec;

use broker_common::ndp::{FLAG_L3_DEVICE, NdpConfig};

use crate::{
    advertise::advertise,
    frame::Frame,
    packet::octets,
    validate::{Invalid, Rejected, Solicitation, solicitation, validate, vlan_passes},
};

/// A packet in a buffer of its exact length (in 2-byte words, as drivers
/// align frames), so that the address sanitizer sees any read past its end.
/// A length change moves the packet to a new buffer: a pointer kept across
/// [`Frame::set_len`], which the kernel also invalidates, then reads freed
/// memory.
pub struct HostFrame {
    words: RefCell<Vec<u16>>,
    len: Cell<usize>,
}

/// How much the packet may grow, as an XDP buffer's tailroom allows.
const TAILROOM: usize = 256;

impl HostFrame {
    pub fn new(bytes: &[u8]) -> Self {
        let frame = HostFrame {
            words: RefCell::new(Vec::new()),
            len: Cell::new(0),
        };
        frame.replace(bytes, bytes.len());
        frame
    }

    /// The packet's bytes now.
    pub fn bytes(&self) -> Vec<u8> {
        let words = self.words.borrow();
        let mut out: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        out.truncate(self.len.get());
        out
    }

    fn replace(&self, bytes: &[u8], len: usize) {
        // Exactly the packet's length, or the sanitizer would not see reads
        // past its end.
        let mut words = alloc::vec![0u16; len.div_ceil(2)];
        for (i, b) in bytes.iter().take(len).enumerate() {
            let mut pair = words[i / 2].to_ne_bytes();
            pair[i % 2] = *b;
            words[i / 2] = u16::from_ne_bytes(pair);
        }
        *self.words.borrow_mut() = words;
        self.len.set(len);
    }
}

impl Frame for HostFrame {
    fn start(&self) -> usize {
        self.words.borrow().as_ptr() as usize
    }

    fn end(&self) -> usize {
        self.start() + self.len.get()
    }

    fn set_len(&self, len: usize) -> bool {
        if len > self.len.get() + TAILROOM {
            return false;
        }
        let old = self.bytes();
        self.replace(&old, len);
        true
    }
}

/// What the responder did with a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not a Neighbor Solicitation: passed to the kernel, not counted.
    Ignored,
    /// An invalid solicitation, and why (the log's text).
    Invalid(&'static str),
    /// Valid, but not for a target in the map, or not addressed to its owner.
    NotOurs,
    /// Answered: the packet, rewritten into this advertisement.
    Answer(Vec<u8>),
    /// The packet could not be resized for the answer.
    Failed,
}

/// `respond` (src/responder.rs) on `packet`, with `cfg` and `vlan_filter`
/// in place of the configuration and VLAN maps and `in_map` in place of the
/// prefix map's lookups.
pub fn respond(
    packet: &[u8],
    cfg: &NdpConfig,
    vlan_filter: u32,
    in_map: impl Fn(&[u8; 16]) -> bool,
) -> Verdict {
    let frame = HostFrame::new(packet);
    let l3 = cfg.flags & FLAG_L3_DEVICE != 0;
    let Some(Solicitation {
        ip,
        icmp_off,
        l3_off,
        group_source,
        vlan,
    }) = solicitation(&frame, l3)
    else {
        return Verdict::Ignored;
    };
    if !vlan_passes(vlan_filter, l3, vlan) {
        return Verdict::Ignored;
    }
    if group_source {
        return Verdict::Invalid(Invalid::GroupLinkSource.text());
    }
    // SAFETY: solicitation checked the bounds; the frame is not resized
    // before validate returns.
    let ip = unsafe { &*ip };
    let target = match validate(&frame, ip, icmp_off) {
        Ok(target) => target,
        Err(Rejected::NotOurs) => return Verdict::NotOurs,
        Err(Rejected::Invalid(why)) => return Verdict::Invalid(why.text()),
    };
    if !in_map(&octets(&target)) {
        return Verdict::NotOurs;
    }
    match advertise(&frame, cfg, l3_off, target) {
        Some(_) => Verdict::Answer(frame.bytes()),
        None => Verdict::Failed,
    }
}
