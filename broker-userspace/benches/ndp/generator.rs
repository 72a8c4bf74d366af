//! The solicitor's side of the link benchmarks: a generator that sends
//! Neighbor Solicitations as fast as the kernel takes them (or at a set
//! pace), a counter of the advertisements that come back, and a prober that
//! times one solicitation at a time.
//!
//! The generator is an AF_PACKET socket with a TX ring (TPACKET_V2) and
//! PACKET_QDISC_BYPASS: frames are written into shared memory and one
//! `send` hands a whole batch to the driver, with no qdisc and no copy per
//! frame from userspace. The counter is an XDP program on the generator's
//! veth (broker-ebpf's `xdp-count-na`): it counts in the kernel, so it misses
//! nothing at any rate, and, being an XDP program, it is also what a veth
//! needs on the peer of a native-mode responder.

use std::{
    io,
    mem::{self, MaybeUninit},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering, fence},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use broker_common::bench::{COUNT_MAP, COUNT_NA, COUNT_PASS_MAP, COUNT_PROGRAM_NAME};
use std::net::Ipv6Addr;

/// broker-ebpf's counter, built by broker-userspace's build script.
static COUNT_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-count-na"));

const ETH_P_IPV6: u16 = 0x86dd;

fn check(rc: libc::c_int, what: &str) -> anyhow::Result<()> {
    if rc < 0 {
        return Err(io::Error::last_os_error()).context(what.to_string());
    }
    Ok(())
}

fn setsockopt<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
    what: &str,
) -> anyhow::Result<()> {
    // SAFETY: value points to a live T of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    check(rc, what)
}

fn packet_socket(protocol: u16) -> anyhow::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(protocol.to_be()),
        )
    };
    check(raw, "socket(AF_PACKET)")?;
    // SAFETY: raw is a fresh, valid fd.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn link_address(ifindex: u32, protocol: u16) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll
}

fn bind(fd: &OwnedFd, ifindex: u32, protocol: u16) -> anyhow::Result<()> {
    let sll = link_address(ifindex, protocol);
    // SAFETY: sll is a valid sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    check(rc, "bind(AF_PACKET)")
}

/// Ring geometry: 4096 slots of 256 bytes (a 32-byte header, then the
/// frame), 16 to a page.
const RING_FRAME_SIZE: usize = 256;
const RING_BLOCK_SIZE: usize = 4096;
const RING_FRAMES: usize = 4096;
/// TPACKET_ALIGN(sizeof(struct tpacket2_hdr)): where a TX frame's data starts.
const RING_DATA_OFFSET: usize = 32;
const TP_STATUS_AVAILABLE: u32 = 0;
const TP_STATUS_SEND_REQUEST: u32 = 1;
const TP_STATUS_WRONG_FORMAT: u32 = 4;
/// Frames flagged before each `send`.
const BATCH: usize = 256;

/// An AF_PACKET TX ring bound to one interface.
pub struct TxRing {
    fd: OwnedFd,
    ring: NonNull<u8>,
    len: usize,
    cursor: usize,
}

// SAFETY: the mapping belongs to this value alone; it is only touched through &mut self.
unsafe impl Send for TxRing {}

/// What one generator run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Frames the kernel took from the ring (and passed to the driver).
    pub frames: u64,
    /// From the first frame flagged to the last one taken.
    pub elapsed: Duration,
}

impl Sent {
    pub fn rate(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How long and how fast to send.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Stop after this long…
    pub duration: Duration,
    /// …or after this many frames, whichever comes first.
    pub max_frames: Option<u64>,
    /// Frames per second; None: as fast as the kernel takes them.
    pub rate: Option<f64>,
}

impl TxRing {
    /// Opens the ring on `ifindex` of the calling thread's namespace.
    pub fn open(ifindex: u32) -> anyhow::Result<Self> {
        // Protocol 0: this socket receives nothing.
        let fd = packet_socket(0)?;
        // enum tpacket_versions: TPACKET_V1 = 0, TPACKET_V2 = 1.
        let version: libc::c_int = 1;
        setsockopt(
            &fd,
            libc::SOL_PACKET,
            libc::PACKET_VERSION,
            &version,
            "PACKET_VERSION",
        )?;
        let one: libc::c_int = 1;
        setsockopt(
            &fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            &one,
            "PACKET_QDISC_BYPASS",
        )?;
        let req = libc::tpacket_req {
            tp_block_size: RING_BLOCK_SIZE as u32,
            tp_block_nr: (RING_FRAMES * RING_FRAME_SIZE / RING_BLOCK_SIZE) as u32,
            tp_frame_size: RING_FRAME_SIZE as u32,
            tp_frame_nr: RING_FRAMES as u32,
        };
        setsockopt(
            &fd,
            libc::SOL_PACKET,
            libc::PACKET_TX_RING,
            &req,
            "PACKET_TX_RING",
        )?;
        let len = RING_FRAMES * RING_FRAME_SIZE;
        // SAFETY: maps the ring just configured on fd; checked below.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            return Err(io::Error::last_os_error()).context("mmap of the TX ring");
        }
        let ring = NonNull::new(ring.cast()).context("mmap returned null")?;
        let tx = TxRing {
            fd,
            ring,
            len,
            cursor: 0,
        };
        bind(&tx.fd, ifindex, ETH_P_IPV6)?;
        Ok(tx)
    }

    fn status(&self, slot: usize) -> &AtomicU32 {
        // SAFETY: slot < RING_FRAMES; tp_status is the slot's first, 4-aligned
        // u32, shared with the kernel, hence accessed atomically.
        unsafe {
            &*self
                .ring
                .as_ptr()
                .add(slot * RING_FRAME_SIZE)
                .cast::<AtomicU32>()
        }
    }

    fn fill(&mut self, slot: usize, frame: &[u8]) {
        // SAFETY: the slot is ours (status AVAILABLE); the frame fits (checked
        // by the caller); tp_len is the u32 after tp_status.
        unsafe {
            let base = self.ring.as_ptr().add(slot * RING_FRAME_SIZE);
            base.add(4).cast::<u32>().write_volatile(frame.len() as u32);
            std::ptr::copy_nonoverlapping(frame.as_ptr(), base.add(RING_DATA_OFFSET), frame.len());
        }
    }

    fn kick(&self) -> anyhow::Result<()> {
        // SAFETY: a zero-length send on our socket flushes flagged frames.
        let rc =
            unsafe { libc::send(self.fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            // Full device queue or nothing to do: the loop tries again.
            if !matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOBUFS)) {
                return Err(e).context("send on the TX ring");
            }
        }
        Ok(())
    }

    fn pending(&self) -> usize {
        (0..RING_FRAMES)
            .filter(|&s| self.status(s).load(Ordering::Acquire) != TP_STATUS_AVAILABLE)
            .count()
    }

    /// Sends `frames` in turn, over and over, as `pace` says.
    pub fn send(&mut self, frames: &[Vec<u8>], pace: Pace) -> anyhow::Result<Sent> {
        anyhow::ensure!(!frames.is_empty(), "no frames to send");
        if let Some(f) = frames
            .iter()
            .find(|f| f.len() > RING_FRAME_SIZE - RING_DATA_OFFSET)
        {
            bail!("a {}-byte frame does not fit a ring slot", f.len());
        }
        let start = Instant::now();
        let deadline = start + pace.duration;
        let max = pace.max_frames.unwrap_or(u64::MAX);
        let mut flagged = 0u64;
        let mut next = 0usize;
        loop {
            let now = Instant::now();
            if now >= deadline || flagged >= max {
                break;
            }
            let allowed = match pace.rate {
                Some(r) => ((r * (now - start).as_secs_f64()) as u64 + 1).min(max),
                None => max,
            };
            let mut batch = 0;
            while batch < BATCH && flagged < allowed {
                let status = self.status(self.cursor).load(Ordering::Acquire);
                if status & TP_STATUS_WRONG_FORMAT != 0 {
                    bail!("the kernel refused a frame of the ring (wrong format)");
                }
                if status != TP_STATUS_AVAILABLE {
                    break;
                }
                self.fill(self.cursor, &frames[next]);
                fence(Ordering::Release);
                self.status(self.cursor)
                    .store(TP_STATUS_SEND_REQUEST, Ordering::Release);
                self.cursor = (self.cursor + 1) % RING_FRAMES;
                next = (next + 1) % frames.len();
                flagged += 1;
                batch += 1;
            }
            self.kick()?;
            if batch == 0 && pace.rate.is_some() {
                // Paced and ahead of schedule: no need to spin a core.
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        // Whatever is still flagged gets its chance, for at most a second.
        let flush_deadline = Instant::now() + Duration::from_secs(1);
        let mut left = self.pending();
        while left > 0 && Instant::now() < flush_deadline {
            self.kick()?;
            std::thread::sleep(Duration::from_micros(100));
            left = self.pending();
        }
        let elapsed = start.elapsed();
        // Frames still flagged after the flush never left.
        for s in 0..RING_FRAMES {
            self.status(s).store(TP_STATUS_AVAILABLE, Ordering::Release);
        }
        Ok(Sent {
            frames: flagged - left as u64,
            elapsed,
        })
    }
}

impl Drop for TxRing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what open() mapped.
        unsafe { libc::munmap(self.ring.as_ptr().cast(), self.len) };
    }
}

/// The XDP counter on the generator's veth; detached on drop.
pub struct NaCounter {
    ebpf: Ebpf,
}

impl NaCounter {
    /// Attaches in native mode to `ifindex` of the calling thread's namespace.
    pub fn attach(ifindex: u32) -> anyhow::Result<Self> {
        let mut ebpf = broker_userspace::ndp::load_helper_object(COUNT_OBJECT)
            .context("loading xdp-count-na")?;
        let program: &mut Xdp = ebpf
            .program_mut(COUNT_PROGRAM_NAME)
            .context("no counter program")?
            .try_into()?;
        program.load().context("loading the counter program")?;
        program
            .attach_to_if_index(ifindex, XdpMode::Driver)
            .context("attaching the counter in driver mode")?;
        Ok(NaCounter { ebpf })
    }

    /// Advertisements counted so far, all CPUs.
    pub fn advertisements(&self) -> anyhow::Result<u64> {
        let map = self.ebpf.map(COUNT_MAP).context("no counter map")?;
        let array: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(array.get(&COUNT_NA, 0)?.iter().sum())
    }

    /// Pass advertisements on to the kernel (for the prober's socket) or
    /// drop them once counted (under load: the generator's stack stays idle).
    pub fn set_pass(&mut self, pass: bool) -> anyhow::Result<()> {
        let map = self.ebpf.map_mut(COUNT_PASS_MAP).context("no pass map")?;
        let mut array: Array<_, u32> = Array::try_from(map)?;
        array.set(0, u32::from(pass), 0)?;
        Ok(())
    }
}

/// One solicitation at a time, timed from just before `sendto` to the
/// kernel's receive timestamp of the matching advertisement.
pub struct Prober {
    fd: OwnedFd,
    ifindex: u32,
}

/// Offsets in an untagged Ethernet frame.
const ICMP_TYPE_AT: usize = 14 + 40;
const NA_TARGET_AT: usize = ICMP_TYPE_AT + 8;

impl Prober {
    /// Opens the socket on `ifindex` of the calling thread's namespace.
    pub fn open(ifindex: u32) -> anyhow::Result<Self> {
        let fd = packet_socket(ETH_P_IPV6)?;
        let one: libc::c_int = 1;
        setsockopt(
            &fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &one,
            "SO_TIMESTAMPNS",
        )?;
        bind(&fd, ifindex, ETH_P_IPV6)?;
        Ok(Prober { fd, ifindex })
    }

    fn now_realtime() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid out-pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// Drops whatever is queued (late answers to earlier probes).
    fn drain(&self) {
        let mut buf = [0u8; 256];
        for _ in 0..10_000 {
            // SAFETY: buf is writable for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                break;
            }
        }
    }

    /// Sends `frame` (a solicitation for `target`) and waits up to `limit`
    /// for an advertisement for `target`. Returns the time it took.
    pub fn probe(
        &self,
        frame: &[u8],
        target: Ipv6Addr,
        limit: Duration,
    ) -> anyhow::Result<Option<Duration>> {
        self.drain();
        let mut sll = link_address(self.ifindex, ETH_P_IPV6);
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        let sent_at = Self::now_realtime();
        // SAFETY: frame and sll are valid for the sizes given.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        check(rc as libc::c_int, "sendto(AF_PACKET)")?;
        let deadline = Instant::now() + limit;
        // Bounded: every pass either returns or waits on poll until the deadline.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as libc::c_int) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("poll");
            }
            if rc == 0 {
                continue;
            }
            if let Some((frame, at)) = self.receive()?
                && frame.len() >= NA_TARGET_AT + 16
                && frame[12..14] == ETH_P_IPV6.to_be_bytes()
                && frame[20] == 58
                && frame[ICMP_TYPE_AT] == 136
                && frame[NA_TARGET_AT..NA_TARGET_AT + 16] == target.octets()
            {
                return Ok(Some(at.saturating_sub(sent_at)));
            }
        }
    }

    /// One frame and its kernel receive time (CLOCK_REALTIME).
    fn receive(&self) -> anyhow::Result<Option<(Vec<u8>, Duration)>> {
        let mut buf = vec![0u8; 512];
        let mut control = [MaybeUninit::<u8>::uninit(); 128];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; all-zero is valid before filling in.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
        // SAFETY: msg points at live buffers of the sizes given.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(e).context("recvmsg");
        }
        buf.truncate(n as usize);
        let mut at = None;
        // SAFETY: walking the control messages the kernel wrote into msg.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET
                    && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
                {
                    let ts = libc::CMSG_DATA(cmsg)
                        .cast::<libc::timespec>()
                        .read_unaligned();
                    at = Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        // Without a kernel timestamp, now is the best (later) bound.
        Ok(Some((buf, at.unwrap_or_else(Self::now_realtime))))
    }
}
