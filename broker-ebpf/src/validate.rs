//! Is a packet a valid Neighbor Solicitation addressed to a target's owner?

use broker_common::ndp::{MAX_NS_OPTION_UNITS, VLAN_FILTER_ON, VLAN_ID_MASK};

use crate::{
    checksum::Checksum,
    frame::{Frame, ptr_at},
    packet::{
        Addr, ETH_HLEN, ETH_P_8021Q, ETH_P_IPV6, EthHdr, ICMPV6_NS, IPPROTO_ICMPV6, IPV6_HLEN,
        Ipv6Hdr, NS_HLEN, NdHdr, OPT_SOURCE_LLADDR, bytes, words,
    },
};

/// The unspecified address (::), the source of DAD probes.
pub(crate) const UNSPECIFIED: Addr = [0; 8];

/// Why a solicitation is not answered.
pub(crate) enum Rejected {
    /// It breaks RFC 4861 §7.1.1 (or is longer than the program walks); the
    /// reason goes into the log when its level is on.
    Invalid(Invalid),
    /// Valid, but not addressed to the target's owner.
    NotOurs,
}

/// Which rule an invalid solicitation breaks: a one-byte code, its text
/// looked up in the log call alone. All the checks' failures share one exit,
/// so the compiler sets the reason before each check, on every packet: as a
/// `&'static str` that took three instructions a check (the pointer, a
/// 64-bit load, spilled to the stack, and the length), 3-5 ns a packet; a
/// code takes one move into a register.
#[derive(Clone, Copy)]
#[repr(u8)]
pub(crate) enum Invalid {
    Short,
    HopLimit,
    Length,
    TooManyOptions,
    Code,
    MulticastTarget,
    Truncated,
    ZeroLengthOption,
    OptionOverrun,
    Checksum,
    Dad,
    MulticastSource,
    GroupLinkSource,
}

impl Invalid {
    /// The reason as the log record gives it.
    pub(crate) fn text(self) -> &'static str {
        match self {
            Invalid::Short => "shorter than its header",
            Invalid::HopLimit => "hop limit not 255",
            Invalid::Length => "length not 24 + a multiple of 8",
            Invalid::TooManyOptions => "more options than the program walks",
            Invalid::Code => "code not 0",
            Invalid::MulticastTarget => "multicast target",
            Invalid::Truncated => "truncated",
            Invalid::ZeroLengthOption => "option of length 0",
            Invalid::OptionOverrun => "last option overruns the message",
            Invalid::Checksum => "bad checksum",
            Invalid::Dad => {
                "DAD probe not to a solicited-node group or with a source link-layer address"
            }
            Invalid::MulticastSource => "multicast source",
            Invalid::GroupLinkSource => "link-layer source not unicast",
        }
    }
}

/// Where the parts of a Neighbor Solicitation lie in a packet.
pub(crate) struct Solicitation {
    pub ip: *const Ipv6Hdr,
    pub l3_off: usize,
    pub icmp_off: usize,
    /// The frame came from a group (multicast or broadcast) link-layer
    /// address: no neighbor's, and the answer would go to the group, with
    /// our MAC.
    pub group_source: bool,
    /// The VLAN id of its 802.1Q tag, if it has one.
    pub vlan: Option<u16>,
}

/// Whether a solicitation with tag `vlan` is the responder's under the VLAN
/// filter `filter` (the `NDP_VLAN` map's value): with a filter, the link's
/// other VLANs (and its untagged traffic) are not, as the prefixes are
/// routed on one. An L3 device has no VLANs: the filter does not apply.
#[inline(always)]
pub(crate) fn vlan_passes(filter: u32, l3: bool, vlan: Option<u16>) -> bool {
    l3 || filter & VLAN_FILTER_ON == 0 || vlan == Some(filter as u16 & VLAN_ID_MASK)
}

/// Whether the packet is an ICMPv6 Neighbor Solicitation (in an Ethernet
/// frame with at most one 802.1Q tag, or bare on an L3 device), and where
/// its parts lie; None for everything else, which is left to the kernel.
/// Nothing is validated yet beyond the headers' bounds.
#[inline(always)]
pub(crate) fn solicitation<F: Frame>(ctx: &F, l3: bool) -> Option<Solicitation> {
    let mut group_source = false;
    let mut vlan = None;
    let l3_off = if l3 {
        0
    } else {
        let eth: *const EthHdr = ptr_at(ctx, 0)?;
        // SAFETY (all packet reads below): ptr_at checked the bounds.
        let mut ethertype = u16::from_be(unsafe { (*eth).ethertype });
        group_source = bytes(unsafe { (*eth).src[0] })[0] & 1 != 0;
        let mut off = ETH_HLEN;
        // One 802.1Q tag. The answer keeps it: only the Ethernet addresses
        // are rewritten.
        if ethertype == ETH_P_8021Q {
            let inner: *const [u16; 2] = ptr_at(ctx, ETH_HLEN)?;
            vlan = Some(u16::from_be(unsafe { (*inner)[0] }) & VLAN_ID_MASK);
            ethertype = u16::from_be(unsafe { (*inner)[1] });
            off += 4;
        }
        if ethertype != ETH_P_IPV6 {
            return None;
        }
        off
    };

    let ip: *const Ipv6Hdr = ptr_at(ctx, l3_off)?;
    let header = unsafe { &*ip };
    // An NS behind extension headers is legal but unheard of; it is left to
    // the kernel rather than paying for a header walk on every packet.
    if bytes(header.vtc_flow[0])[0] >> 4 != 6 || header.next_header != IPPROTO_ICMPV6 {
        return None;
    }
    let icmp_off = l3_off + IPV6_HLEN;
    let icmp_type: *const u8 = ptr_at(ctx, icmp_off)?;
    if unsafe { *icmp_type } != ICMPV6_NS {
        return None;
    }
    Some(Solicitation {
        ip,
        l3_off,
        icmp_off,
        group_source,
        vlan,
    })
}

/// RFC 4861 §7.1.1, in the order it lists the checks, plus one of ours: the
/// solicitation must be addressed to the target's owner (its solicited-node
/// group, or the target itself for unicast NUD probes); anything else is not
/// a question for us and counts as not ours. Returns the target.
#[inline(always)]
pub(crate) fn validate<F: Frame>(ctx: &F, ip: &Ipv6Hdr, icmp_off: usize) -> Result<Addr, Rejected> {
    let ns: *const NdHdr = ptr_at(ctx, icmp_off).ok_or(Rejected::Invalid(Invalid::Short))?;
    let ns = unsafe { &*ns };
    // Hop limit 255: the packet cannot have come through a router.
    if ip.hop_limit != 255 {
        return Err(Rejected::Invalid(Invalid::HopLimit));
    }
    // Source unspecified or unicast (RFC 4291 §2.7: a multicast address is
    // never a source); the answer would go to a group.
    if bytes(ip.src[0])[0] == 0xff {
        return Err(Rejected::Invalid(Invalid::MulticastSource));
    }
    // ICMP length (the IP payload length) at least 24 octets; options come
    // in 8-octet units, so any other length ends in a malformed option.
    let icmp_len = u16::from_be(ip.payload_len) as usize;
    if icmp_len < NS_HLEN || !(icmp_len - NS_HLEN).is_multiple_of(8) {
        return Err(Rejected::Invalid(Invalid::Length));
    }
    let option_units = (icmp_len - NS_HLEN) / 8;
    if option_units > MAX_NS_OPTION_UNITS {
        return Err(Rejected::Invalid(Invalid::TooManyOptions));
    }
    // Code 0.
    if ns.code != 0 {
        return Err(Rejected::Invalid(Invalid::Code));
    }
    // Target not multicast.
    if bytes(ns.target[0])[0] == 0xff {
        return Err(Rejected::Invalid(Invalid::MulticastTarget));
    }

    let mut sum = Checksum::pseudo_header(&ip.src, &ip.dst, icmp_len as u16);
    sum.add(u16::from_ne_bytes([ns.icmp_type, ns.code]));
    sum.add(ns.checksum);
    sum.add(u16::from_ne_bytes([ns.reserved[0], ns.reserved[1]]));
    sum.add(u16::from_ne_bytes([ns.reserved[2], ns.reserved[3]]));
    sum.add_words(&ns.target);

    // The options in two walks, so that no walk carries state from one unit
    // to the next beyond a counter: one combined walk (summing every unit and
    // checking option headers where they start) made the verifier of Linux
    // 6.1 explore too many paths and refuse the program (a million
    // instructions); 6.12's handled it. The errors and their order are the
    // combined walk's: a header is read before any unit after it.
    //
    // First the option headers: every option has a non-zero length, and the
    // last one ends exactly at the end. A header past the frame's end means
    // the IP header claims more than arrived.
    let mut has_source_lladdr = false;
    let mut next_option = 0;
    let mut seen = 0;
    while seen < MAX_NS_OPTION_UNITS {
        if next_option >= option_units {
            break;
        }
        let header: *const [u8; 2] = ptr_at(ctx, icmp_off + NS_HLEN + next_option * 8)
            .ok_or(Rejected::Invalid(Invalid::Truncated))?;
        let [opt_type, opt_len] = unsafe { *header };
        if opt_len == 0 {
            return Err(Rejected::Invalid(Invalid::ZeroLengthOption));
        }
        if opt_type == OPT_SOURCE_LLADDR {
            has_source_lladdr = true;
        }
        next_option += opt_len as usize;
        seen += 1;
    }
    // Then every unit, summed for the checksum; a unit past the frame's end
    // is a truncated packet, as above.
    let mut unit = 0;
    while unit < MAX_NS_OPTION_UNITS {
        if unit >= option_units {
            break;
        }
        let chunk: *const [u16; 4] = ptr_at(ctx, icmp_off + NS_HLEN + unit * 8)
            .ok_or(Rejected::Invalid(Invalid::Truncated))?;
        sum.add_words(unsafe { &*chunk });
        unit += 1;
    }
    if next_option != option_units {
        return Err(Rejected::Invalid(Invalid::OptionOverrun));
    }
    // Valid ICMP checksum.
    if !sum.is_valid() {
        return Err(Rejected::Invalid(Invalid::Checksum));
    }
    // A DAD probe (unspecified source) goes to a solicited-node group and
    // carries no source link-layer address.
    let dst = ip.dst;
    let target = ns.target;
    if ip.src == UNSPECIFIED && (!is_solicited_node_group(&dst) || has_source_lladdr) {
        return Err(Rejected::Invalid(Invalid::Dad));
    }
    if dst != target
        && !(is_solicited_node_group(&dst)
            && dst[7] == target[7]
            && bytes(dst[6])[1] == bytes(target[6])[1])
    {
        return Err(Rejected::NotOurs);
    }
    Ok(target)
}

/// ff02::1:ffXX:XXXX, whatever the last 24 bits.
#[inline(always)]
fn is_solicited_node_group(a: &Addr) -> bool {
    const HEAD: Addr = words([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0]);
    a[0] == HEAD[0]
        && a[1] == 0
        && a[2] == 0
        && a[3] == 0
        && a[4] == 0
        && a[5] == HEAD[5]
        && bytes(a[6])[0] == 0xff
}
