//! The Internet checksum (RFC 1071) over an ICMPv6 message and its pseudo-header.
//!
//! Words are summed as they lie in memory: the one's-complement sum is
//! byte-order independent, so the folded result, stored back as it is, is the
//! checksum in network order without a single byte swap.

use crate::packet::{Addr, IPPROTO_ICMPV6};

pub struct Checksum(u32);

impl Checksum {
    /// Starts a sum with the IPv6 pseudo-header (RFC 8200 §8.1) of an ICMPv6 message.
    #[inline(always)]
    pub fn pseudo_header(src: &Addr, dst: &Addr, len: u16) -> Self {
        let mut sum = Checksum(0);
        sum.add_words(src);
        sum.add_words(dst);
        // Upper-layer length (32 bits, of which only the low 16 are ever set
        // here) and next header, in network order.
        sum.add(u16::from_ne_bytes(len.to_be_bytes()));
        sum.add(u16::from_ne_bytes([0, IPPROTO_ICMPV6]));
        sum
    }

    #[inline(always)]
    pub fn add(&mut self, word: u16) {
        self.0 += word as u32;
    }

    #[inline(always)]
    pub fn add_words(&mut self, words: &[u16]) {
        for w in words {
            self.add(*w);
        }
    }

    #[inline(always)]
    fn fold(&self) -> u16 {
        let sum = (self.0 & 0xffff) + (self.0 >> 16);
        ((sum & 0xffff) + (sum >> 16)) as u16
    }

    /// True when the sum covered a message whose checksum field is correct.
    #[inline(always)]
    pub fn is_valid(&self) -> bool {
        self.fold() == 0xffff
    }

    /// The value for the checksum field, as it goes into memory.
    #[inline(always)]
    pub fn finish(&self) -> u16 {
        !self.fold()
    }
}
