//! What the responder needs of a packet, from XDP or from TC: its bounds,
//! and a way to change its length.

#[cfg(target_arch = "bpf")]
use aya_ebpf::{
    helpers::generated::{bpf_skb_change_tail, bpf_xdp_adjust_tail},
    programs::{TcContext, XdpContext},
};

pub trait Frame {
    fn start(&self) -> usize;
    fn end(&self) -> usize;
    /// Makes the packet `len` bytes long, cutting or growing at the end.
    /// False when the kernel refuses, in which case the packet is unchanged.
    /// Every pointer into the packet is invalid afterwards.
    fn set_len(&self, len: usize) -> bool;
}

#[cfg(target_arch = "bpf")]
impl Frame for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }

    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }

    #[inline(always)]
    fn set_len(&self, len: usize) -> bool {
        let have = self.data_end() - self.data();
        // SAFETY: a plain helper call on our own context.
        len == have || unsafe { bpf_xdp_adjust_tail(self.ctx, len as i32 - have as i32) } == 0
    }
}

#[cfg(target_arch = "bpf")]
impl Frame for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }

    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }

    #[inline(always)]
    fn set_len(&self, len: usize) -> bool {
        // SAFETY: a plain helper call on our own skb.
        len == self.len() as usize
            || unsafe { bpf_skb_change_tail(self.skb.skb as *mut _, len as u32, 0) } == 0
    }
}

/// A pointer to a `T` at `offset`, if the packet holds all of it.
#[inline(always)]
pub fn ptr_at<T, F: Frame>(frame: &F, offset: usize) -> Option<*mut T> {
    let start = frame.start();
    if start + offset + core::mem::size_of::<T>() > frame.end() {
        return None;
    }
    Some((start + offset) as *mut T)
}
