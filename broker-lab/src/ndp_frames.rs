//! Neighbor Solicitation frames for the program tests, and a reference model
//! of what the responder must answer, written independently of the eBPF code
//! (plain byte-wise Rust, big-endian arithmetic, no shared helpers) so the two
//! can be checked against each other.

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;

pub const BROKER_MAC: [u8; 6] = [0x02, 0xb0, 0x0c, 0x00, 0x00, 0x01];
pub const ROUTER_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x53, 0x01];
pub const ROUTER_IP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);

/// A solicitation to build, field by field; each test changes what it needs.
#[derive(Clone, Debug)]
pub struct Ns {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub vlan: Option<u16>,
    /// Frame starts at the IPv6 header (SIT and other L3 devices).
    pub l3: bool,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    pub code: u8,
    pub target: Ipv6Addr,
    /// Raw option bytes after the 24-byte header.
    pub options: Vec<u8>,
    /// Added to the correct checksum (0 keeps it right).
    pub checksum_delta: u16,
    /// Bytes after the message that the IP length does not cover.
    pub padding: usize,
}

impl Ns {
    /// What a router sends to resolve `target`: multicast to its
    /// solicited-node group, with a source link-layer address option.
    pub fn multicast(target: Ipv6Addr) -> Self {
        let group = solicited_node(target);
        let g = group.octets();
        let mut options = vec![1, 1];
        options.extend_from_slice(&ROUTER_MAC);
        Ns {
            eth_src: ROUTER_MAC,
            eth_dst: [0x33, 0x33, g[12], g[13], g[14], g[15]],
            vlan: None,
            l3: false,
            src: ROUTER_IP,
            dst: group,
            hop_limit: 255,
            code: 0,
            target,
            options,
            checksum_delta: 0,
            padding: 0,
        }
    }

    /// A NUD probe: unicast to the target, here without options.
    pub fn unicast(target: Ipv6Addr) -> Self {
        Ns {
            eth_dst: BROKER_MAC,
            dst: target,
            options: Vec::new(),
            ..Ns::multicast(target)
        }
    }

    /// A duplicate address detection probe, with a nonce option (RFC 7527).
    pub fn dad(target: Ipv6Addr) -> Self {
        Ns {
            src: Ipv6Addr::UNSPECIFIED,
            options: vec![14, 1, 1, 2, 3, 4, 5, 6],
            ..Ns::multicast(target)
        }
    }

    pub fn icmp(&self) -> Vec<u8> {
        let mut m = vec![135, self.code, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&self.target.octets());
        m.extend_from_slice(&self.options);
        let sum = checksum(self.src, self.dst, &m).wrapping_add(self.checksum_delta);
        m[2..4].copy_from_slice(&sum.to_be_bytes());
        m
    }

    pub fn frame(&self) -> Vec<u8> {
        let icmp = self.icmp();
        let mut f = Vec::new();
        if !self.l3 {
            f.extend_from_slice(&self.eth_dst);
            f.extend_from_slice(&self.eth_src);
            if let Some(tci) = self.vlan {
                f.extend_from_slice(&[0x81, 0x00]);
                f.extend_from_slice(&tci.to_be_bytes());
            }
            f.extend_from_slice(&[0x86, 0xdd]);
        }
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        f.push(58);
        f.push(self.hop_limit);
        f.extend_from_slice(&self.src.octets());
        f.extend_from_slice(&self.dst.octets());
        f.extend_from_slice(&icmp);
        f.extend(std::iter::repeat_n(0u8, self.padding));
        f
    }
}

pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::from([
        0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

/// RFC 1071 over the IPv6 pseudo-header and `msg`, big-endian, byte by byte.
pub fn checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut data = Vec::new();
    data.extend_from_slice(&src.octets());
    data.extend_from_slice(&dst.octets());
    data.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    data.extend_from_slice(&[0, 0, 0, 58]);
    data.extend_from_slice(msg);
    if data.len() % 2 == 1 {
        data.push(0);
    }
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        sum += u32::from(pair[0]) << 8 | u32::from(pair[1]);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// How the responder under test is configured.
#[derive(Clone, Debug)]
pub struct Model {
    pub prefixes: Vec<Ipv6Net>,
    pub mac: [u8; 6],
    pub router: bool,
    pub l3: bool,
    /// The VLAN filter: only frames tagged with this id are solicitations
    /// the program looks at.
    pub vlan: Option<u16>,
}

/// What the model says of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not a Neighbor Solicitation the program looks at.
    Ignored,
    Invalid,
    NotOurs,
    /// Answer with exactly this frame.
    Answer(Vec<u8>),
}

impl Model {
    pub fn verdict(&self, frame: &[u8]) -> Verdict {
        let mut l3_off = 0;
        if !self.l3 {
            if frame.len() < 14 {
                return Verdict::Ignored;
            }
            let mut ethertype = u16::from_be_bytes([frame[12], frame[13]]);
            l3_off = 14;
            let mut tag = None;
            if ethertype == 0x8100 {
                if frame.len() < 18 {
                    return Verdict::Ignored;
                }
                tag = Some(u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff);
                ethertype = u16::from_be_bytes([frame[16], frame[17]]);
                l3_off = 18;
            }
            if ethertype != 0x86dd || self.vlan.is_some_and(|id| tag != Some(id)) {
                return Verdict::Ignored;
            }
        }
        let ip = &frame[l3_off..];
        if ip.len() < 40 || ip[0] >> 4 != 6 || ip[6] != 58 {
            return Verdict::Ignored;
        }
        let body = &ip[40..];
        if body.is_empty() || body[0] != 135 {
            return Verdict::Ignored;
        }
        // From here on it is a solicitation: every outcome is counted.
        if !self.l3 && frame[6] & 1 != 0 {
            return Verdict::Invalid;
        }
        if body.len() < 24 {
            return Verdict::Invalid;
        }
        let hop_limit = ip[7];
        let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
        if hop_limit != 255
            || src.is_multicast()
            || plen < 24
            || (plen - 24) % 8 != 0
            || (plen - 24) / 8 > 32
        {
            return Verdict::Invalid;
        }
        if body.len() < plen {
            return Verdict::Invalid;
        }
        let msg = &body[..plen];
        let target = Ipv6Addr::from(<[u8; 16]>::try_from(&msg[8..24]).unwrap());
        if msg[1] != 0 || target.is_multicast() {
            return Verdict::Invalid;
        }
        let mut has_slla = false;
        let mut rest = &msg[24..];
        while !rest.is_empty() {
            let len = usize::from(rest[1]) * 8;
            if len == 0 || len > rest.len() {
                return Verdict::Invalid;
            }
            has_slla |= rest[0] == 1;
            rest = &rest[len..];
        }
        if checksum(src, dst, msg) != 0 {
            return Verdict::Invalid;
        }
        let dad = src.is_unspecified();
        let to_group = dst.segments()[..6] == [0xff02, 0, 0, 0, 0, 1] && dst.octets()[12] == 0xff;
        if dad && (!to_group || has_slla) {
            return Verdict::Invalid;
        }
        if dst != target && dst != solicited_node(target) {
            return Verdict::NotOurs;
        }
        if !self.prefixes.iter().any(|p| p.contains(&target)) {
            return Verdict::NotOurs;
        }
        Verdict::Answer(self.advertisement(frame, l3_off, src, target))
    }

    fn advertisement(&self, ns: &[u8], l3_off: usize, src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
        let dad = src.is_unspecified();
        let dst = if dad { "ff02::1".parse().unwrap() } else { src };
        let mut icmp = vec![136, 0, 0, 0];
        let flags = if self.router { 0x80 } else { 0 } | if dad { 0 } else { 0x40 };
        icmp.extend_from_slice(&[flags, 0, 0, 0]);
        icmp.extend_from_slice(&target.octets());
        if !self.l3 {
            icmp.extend_from_slice(&[2, 1]);
            icmp.extend_from_slice(&self.mac);
        }
        let sum = checksum(target, dst, &icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());

        let mut f = Vec::new();
        if !self.l3 {
            if dad {
                f.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
            } else {
                f.extend_from_slice(&ns[6..12]);
            }
            f.extend_from_slice(&self.mac);
            f.extend_from_slice(&ns[12..l3_off]);
        }
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        f.extend_from_slice(&[58, 255]);
        f.extend_from_slice(&target.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&icmp);
        f
    }
}
