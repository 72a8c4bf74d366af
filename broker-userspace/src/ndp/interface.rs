//! What the responder needs to know about the upstream interface. Read with
//! ioctls on a socket rather than from /sys/class/net, which shows the network
//! namespace sysfs was mounted in, not necessarily ours.

use std::{ffi::CString, io};

use super::NdpError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkLayer {
    /// Ethernet (and VLANs on it): answers carry our MAC.
    Ethernet([u8; 6]),
    /// Point-to-point L3 device (SIT, GRE, WireGuard…): no link-layer header.
    None,
}

#[derive(Clone, Debug)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub link_layer: LinkLayer,
}

impl Interface {
    pub fn by_name(name: &str) -> Result<Self, NdpError> {
        let unknown = || NdpError::UnknownInterface(name.to_string());
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(unknown());
        }
        let c_name = CString::new(name).map_err(|_| unknown())?;
        // SAFETY: valid C string.
        let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        if index == 0 {
            return Err(unknown());
        }
        let link_layer = hardware_address(name).map_err(|source| NdpError::Interface {
            name: name.to_string(),
            source,
        })?;
        Ok(Interface {
            name: name.to_string(),
            index,
            link_layer,
        })
    }

    /// The name of interface `index` in this network namespace, if it exists.
    pub fn name_of(index: u32) -> Option<String> {
        let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
        // SAFETY: buf is IF_NAMESIZE long, as if_indextoname requires.
        let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
        if p.is_null() {
            return None;
        }
        // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
        let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
        Some(name.to_string_lossy().into_owned())
    }
}

fn hardware_address(name: &str) -> io::Result<LinkLayer> {
    // SAFETY: plain socket call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: ifr is a zeroed ifreq carrying a NUL-terminated name.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut ifr) };
    let err = io::Error::last_os_error();
    // SAFETY: fd came from socket() above.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(err);
    }
    // SAFETY: SIOCGIFHWADDR fills ifru_hwaddr.
    let hw = unsafe { ifr.ifr_ifru.ifru_hwaddr };
    if hw.sa_family == libc::ARPHRD_ETHER {
        let mut mac = [0u8; 6];
        for (dst, src) in mac.iter_mut().zip(hw.sa_data.iter()) {
            *dst = *src as u8;
        }
        Ok(LinkLayer::Ethernet(mac))
    } else {
        Ok(LinkLayer::None)
    }
}
