//! Loading, attaching and feeding the XDP program.

use std::fmt;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, Link, PinnedLink},
        tc::{
            NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle, qdisc_add_clsact,
        },
        xdp::XdpLink,
    },
};
use aya_log::EbpfLogger;
use broker_common::ndp::{
    ATTACH_MODE_DRIVER, ATTACH_MODE_GENERIC, ATTACH_MODE_TC, CONFIG_MAP, COUNTERS_MAP, Counter,
    FLAG_CONFIGURED, FLAG_L3_DEVICE, FLAG_NETLINK, FLAG_ROUTER, MAX_PREFIX_LENS, NdpConfig,
    PREFIXES_MAP, PROGRAM_NAME, PrefixKey, PrefixValue, TC_PROGRAM_NAME, VLAN_FILTER_ON,
    VLAN_ID_MASK, VLAN_MAP,
};
use ipnet::Ipv6Net;
use tracing::Level;

use super::{
    Interface, LinkLayer, NdpError, PinDir, PrefixError,
    kernel_log::{self, LogReader},
    key_for, net_for, pinned,
    program::OBJECT,
    validate_prefixes,
};

/// How to attach. `Auto` picks, for an Ethernet device, native XDP (driver
/// mode) and falls back to generic XDP, saying so in the log; for an L3
/// device (SIT and other tunnels), TC, the only place an answer can leave
/// such a device as IPv6 (see broker-ebpf's `ndp_responder_tc`).
///
/// The configuration's `ndp_mode` and `ndp serve --mode` spell it alike.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    #[default]
    Auto,
    Driver,
    Generic,
    Tc,
}

/// The mode the program ended up attached in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Driver,
    Generic,
    Tc,
}

impl AttachedMode {
    fn code(self) -> u8 {
        match self {
            AttachedMode::Driver => ATTACH_MODE_DRIVER,
            AttachedMode::Generic => ATTACH_MODE_GENERIC,
            AttachedMode::Tc => ATTACH_MODE_TC,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            ATTACH_MODE_DRIVER => Some(AttachedMode::Driver),
            ATTACH_MODE_GENERIC => Some(AttachedMode::Generic),
            ATTACH_MODE_TC => Some(AttachedMode::Tc),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            AttachedMode::Driver => "driver",
            AttachedMode::Generic => "generic",
            AttachedMode::Tc => "tc",
        }
    }
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the program is held on the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// A BPF link (XDP, or TCX at TC), pinned as `link`: it outlives the
    /// process, and a restart swaps its program atomically.
    Link,
    /// Netlink, where the kernel has no such link: a filter on the clsact
    /// qdisc (TCX links need Linux 6.6), or XDP set on the device (XDP links
    /// need 5.9). It stays on the interface until detached, and a restart
    /// replaces its program atomically too; the program is pinned as
    /// `netlink_program`, the record that it is attached.
    Netlink,
}

impl Attachment {
    /// The attachment's name for `mode`, as status shows it.
    pub fn describe(self, mode: AttachedMode) -> &'static str {
        match (self, mode) {
            (Attachment::Link, AttachedMode::Tc) => "TCX link",
            (Attachment::Link, _) => "XDP link",
            (Attachment::Netlink, AttachedMode::Tc) => "netlink clsact filter",
            (Attachment::Netlink, _) => "netlink",
        }
    }
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Attachment::Link => "link",
            Attachment::Netlink => "netlink",
        })
    }
}

/// The clsact ingress filter's priority and handle when netlink attaches the
/// TC program: fixed, so that a restart finds the filter to swap its program
/// in, and `ndp detach` finds it to remove.
pub(crate) const TC_NETLINK_PRIORITY: u16 = 0xbb00;
pub(crate) const TC_NETLINK_HANDLE: TcHandle = TcHandle::new(0, 0xbb);

fn xdp_mode(mode: AttachedMode) -> XdpMode {
    match mode {
        AttachedMode::Generic => XdpMode::Skb,
        AttachedMode::Driver | AttachedMode::Tc => XdpMode::Driver,
    }
}

/// A netlink attachment outlives the process only if its link is never
/// dropped (dropping detaches).
fn keep_attached<L: Link>(link: L) {
    std::mem::forget(link);
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ResponderOptions {
    /// Set the Router flag in advertisements.
    pub router: bool,
    /// Answer only solicitations tagged with this VLAN id (1..=4094): for a
    /// responder on the parent of a trunk whose prefixes are routed on one
    /// VLAN. None answers untagged frames and those of any one tag.
    pub vlan: Option<u16>,
}

/// Counters summed over all CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub seen: u64,
    pub answered: u64,
    pub not_ours: u64,
    pub invalid: u64,
    pub failed: u64,
}

impl Counters {
    pub(crate) fn read<T: std::borrow::Borrow<MapData>>(
        map: &PerCpuArray<T, u64>,
    ) -> Result<Self, NdpError> {
        let mut c = Counters::default();
        for counter in Counter::ALL {
            let values = map
                .get(&(counter as u32), 0)
                .map_err(NdpError::map(COUNTERS_MAP))?;
            let total = values.iter().sum();
            match counter {
                Counter::Seen => c.seen = total,
                Counter::Answered => c.answered = total,
                Counter::NotOurs => c.not_ours = total,
                Counter::Invalid => c.invalid = total,
                Counter::Failed => c.failed = total,
            }
        }
        Ok(c)
    }
}

/// The responder's program, loaded, with its maps pinned (created on first
/// use, reused afterwards).
pub struct Responder {
    ebpf: Ebpf,
    pins: PinDir,
    /// How many prefixes of each length the map holds, to know when a length
    /// can leave the config's list.
    len_counts: [u32; 129],
    /// Reads the program's log records into the log, when they are on.
    _log_reader: Option<LogReader>,
}

impl Responder {
    /// Loads the program with its log records on at the levels the tracing
    /// filter lets through for [`broker_common::ndp::LOG_TARGET`], and reads
    /// them into the log (see kernel_log.rs; at the default `info` there are
    /// none to read).
    pub fn load(pins: &PinDir) -> Result<Self, NdpError> {
        let level = kernel_log::level_from_tracing();
        let mut responder = Self::load_with_log_level(pins, level)?;
        if level.is_some_and(|level| level >= kernel_log::MOST_SEVERE_RECORD) {
            let records = responder.log_records(log::logger())?;
            responder._log_reader = Some(LogReader::spawn(records).map_err(NdpError::LogReader)?);
        }
        Ok(responder)
    }

    /// Loads the program with its log records on at `level` and more severe
    /// ones (None: all off, and compiled out by the verifier), read by
    /// nobody unless [`Self::log_records`] is called.
    pub fn load_with_log_level(pins: &PinDir, level: Option<Level>) -> Result<Self, NdpError> {
        require_privileges()?;
        pins.create()?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pins.path())
            .override_global(aya_log::LEVEL, &kernel_log::level_code(level), true)
            .load(OBJECT)
            .map_err(|e| NdpError::Load(Box::new(e)))?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(NdpError::MissingProgram(PROGRAM_NAME))?
            .try_into()?;
        program.load()?;
        let mut responder = Responder {
            ebpf,
            pins: pins.clone(),
            len_counts: [0; 129],
            _log_reader: None,
        };
        for net in responder.prefixes()? {
            responder.len_counts[usize::from(net.prefix_len())] += 1;
        }
        Ok(responder)
    }

    /// The loaded program, e.g. to run it with BPF_PROG_TEST_RUN.
    pub fn program(&mut self) -> Result<&mut Xdp, NdpError> {
        Ok(self
            .ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(NdpError::MissingProgram(PROGRAM_NAME))?
            .try_into()?)
    }

    /// The reader of the program's log records, passing them to `logger`
    /// on each `flush`. There is one reader per load: [`Self::load`] has
    /// taken it when the records are on.
    pub fn log_records<T: log::Log>(&mut self, logger: T) -> Result<EbpfLogger<T>, NdpError> {
        EbpfLogger::init_with_logger(&mut self.ebpf, logger).map_err(NdpError::LogRecords)
    }

    /// Attaches to `iface`, or, when this responder is already attached to
    /// it, swaps this program into that attachment atomically (no packet
    /// goes unanswered). Where the kernel has no BPF link of the kind needed
    /// (TCX before Linux 6.6, XDP links before 5.9), netlink attaches instead.
    pub fn attach(
        &mut self,
        iface: &Interface,
        mode: AttachMode,
        options: ResponderOptions,
    ) -> Result<(AttachedMode, Attachment), NdpError> {
        let l3 = iface.link_layer == LinkLayer::None;
        if l3 && matches!(mode, AttachMode::Driver | AttachMode::Generic) {
            return Err(NdpError::L3NeedsTc(iface.name.clone()));
        }
        let current = self.config()?;
        let current_mode = AttachedMode::from_code(current.attach_mode);
        let current_attachment = pinned::attachment(&self.pins, &current);
        let mut adopt = current_attachment.is_some();
        if adopt && current.ifindex != iface.index {
            if let Some(name) = Interface::name_of(current.ifindex) {
                return Err(NdpError::AttachedElsewhere {
                    pins: self.pins.path().to_path_buf(),
                    attached: name,
                });
            }
            tracing::info!(
                "the interface of the pinned attachment is gone (index {}); attaching afresh",
                current.ifindex
            );
            adopt = false;
        }
        let wanted = match mode {
            AttachMode::Auto if l3 => Some(AttachedMode::Tc),
            AttachMode::Auto => None,
            AttachMode::Driver => Some(AttachedMode::Driver),
            AttachMode::Generic => Some(AttachedMode::Generic),
            AttachMode::Tc => Some(AttachedMode::Tc),
        };
        // Auto on Ethernet keeps whichever XDP mode the pinned link has.
        let kind_changes = wanted.is_none() && current_mode == Some(AttachedMode::Tc);
        if adopt && ((wanted.is_some() && wanted != current_mode) || kind_changes) {
            tracing::info!(
                "re-attaching {} in {} mode (was {})",
                iface.name,
                wanted.map_or("?", AttachedMode::name),
                current_mode.map_or("?", AttachedMode::name)
            );
            adopt = false;
        }
        if !adopt {
            pinned::remove_attachment(&self.pins, &current)?;
        }

        let attached = match (adopt, current_mode, current_attachment) {
            (true, Some(mode), Some(attachment)) => {
                self.adopt(iface, mode, attachment)?;
                (mode, attachment)
            }
            _ => self.attach_new(iface, mode, l3)?,
        };
        self.configure(iface.link_layer, options, |cfg| {
            if attached.1 == Attachment::Netlink {
                cfg.flags |= FLAG_NETLINK;
            }
            cfg.attach_mode = attached.0.code();
            cfg.ifindex = iface.index;
        })?;
        Ok(attached)
    }

    /// Swaps this program into the attachment a previous process left.
    fn adopt(
        &mut self,
        iface: &Interface,
        mode: AttachedMode,
        attachment: Attachment,
    ) -> Result<(), NdpError> {
        let attach_err = |source| NdpError::Attach {
            interface: iface.name.clone(),
            mode: "the pinned attachment's",
            source,
        };
        match (attachment, mode) {
            (Attachment::Link, _) => {
                let path = self.pins.link();
                let adopt_err = |source| NdpError::AdoptLink {
                    path: path.clone(),
                    source,
                };
                let fd_link = FdLink::from(PinnedLink::from_pin(&path).map_err(adopt_err)?);
                // The pin refers to the link, not to the program: after the
                // update it stays valid and now runs this program.
                if mode == AttachedMode::Tc {
                    let link = SchedClassifierLink::try_from(fd_link).map_err(adopt_err)?;
                    self.tc_program()?
                        .attach_to_link(link)
                        .map_err(attach_err)?;
                } else {
                    let link = XdpLink::try_from(fd_link).map_err(adopt_err)?;
                    self.program()?.attach_to_link(link).map_err(attach_err)?;
                }
            }
            (Attachment::Netlink, AttachedMode::Tc) => {
                // The filter is ours by its fixed priority and handle;
                // replacing its program is one netlink request.
                let link = SchedClassifierLink::attached(
                    &iface.name,
                    TcAttachType::Ingress,
                    TC_NETLINK_PRIORITY,
                    TC_NETLINK_HANDLE,
                    None,
                )
                .map_err(|source| NdpError::Interface {
                    name: iface.name.clone(),
                    source,
                })?;
                let program = self.tc_program()?;
                let id = program.attach_to_link(link).map_err(attach_err)?;
                keep_attached(program.take_link(id)?);
                self.pin_netlink_program(TC_PROGRAM_NAME)?;
            }
            (Attachment::Netlink, xdp) => {
                // Setting XDP through netlink replaces the device's program
                // atomically; on a kernel without XDP links aya takes that
                // path again.
                let program = self.program()?;
                let id = program
                    .attach_to_if_index(iface.index, xdp_mode(xdp))
                    .map_err(attach_err)?;
                keep_attached(program.take_link(id)?);
                self.pin_netlink_program(PROGRAM_NAME)?;
            }
        }
        match attachment {
            Attachment::Link => {
                tracing::info!(interface = %iface.name, %mode, "adopted the pinned link")
            }
            Attachment::Netlink => {
                tracing::info!(interface = %iface.name, %mode, "adopted the netlink attachment")
            }
        }
        Ok(())
    }

    /// The TC program, loaded on first use (only L3 upstreams need it), e.g.
    /// to run it with BPF_PROG_TEST_RUN.
    pub fn tc_program(&mut self) -> Result<&mut SchedClassifier, NdpError> {
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(TC_PROGRAM_NAME)
            .ok_or(NdpError::MissingProgram(TC_PROGRAM_NAME))?
            .try_into()?;
        if program.fd().is_err() {
            program.load()?;
        }
        Ok(program)
    }

    /// Pins the program netlink attached, as the record that it is (see
    /// [`PinDir::netlink_program`]). Pinned beside and renamed over the old
    /// record, so no moment lacks one.
    fn pin_netlink_program(&mut self, name: &'static str) -> Result<(), NdpError> {
        let path = self.pins.netlink_program();
        // bpffs refuses names with a dot.
        let fresh = self.pins.path().join("netlink_program_new");
        let _ = std::fs::remove_file(&fresh);
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(NdpError::MissingProgram(name))?;
        program.pin(&fresh).map_err(|source| NdpError::PinLink {
            path: fresh.clone(),
            source,
        })?;
        std::fs::rename(&fresh, &path).map_err(|source| NdpError::Remove {
            path: fresh.clone(),
            source,
        })
    }

    /// At TC ingress: a TCX link where the kernel has them (6.6 and later),
    /// else a filter on the clsact qdisc through netlink, found by trying.
    fn attach_tc(&mut self, iface: &Interface) -> Result<(AttachedMode, Attachment), NdpError> {
        let program = self.tc_program()?;
        let tcx_err = match program.attach_with_options(
            &iface.name,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        ) {
            Ok(id) => {
                let link = program.take_link(id)?;
                let fd_link =
                    FdLink::try_from(link).map_err(|_| NdpError::NoLink(iface.name.clone()))?;
                let path = self.pins.link();
                fd_link
                    .pin(&path)
                    .map_err(|source| NdpError::PinLink { path, source })?;
                tracing::info!(interface = %iface.name, mode = "tc", via = "TCX link", "attached (L3 device)");
                return Ok((AttachedMode::Tc, Attachment::Link));
            }
            Err(e) => e,
        };
        tracing::info!(
            interface = %iface.name,
            "no TCX link ({tcx_err}); attaching a clsact filter through netlink (kernels before 6.6)"
        );
        let netlink_err = |source| NdpError::AttachTc {
            interface: iface.name.clone(),
            tcx: Box::new(tcx_err.to_string()),
            source,
        };
        match qdisc_add_clsact(&iface.name) {
            Ok(()) => {}
            // Someone else's clsact (or ours from before) serves as well.
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(netlink_err(e.into())),
        }
        let program = self.tc_program()?;
        let id = program
            .attach_with_options(
                &iface.name,
                TcAttachType::Ingress,
                TcAttachOptions::Netlink(NlOptions {
                    priority: TC_NETLINK_PRIORITY,
                    handle: TC_NETLINK_HANDLE,
                    classid: None,
                }),
            )
            .map_err(netlink_err)?;
        keep_attached(program.take_link(id)?);
        self.pin_netlink_program(TC_PROGRAM_NAME)?;
        tracing::info!(interface = %iface.name, mode = "tc", via = "netlink clsact filter", "attached (L3 device)");
        Ok((AttachedMode::Tc, Attachment::Netlink))
    }

    fn attach_new(
        &mut self,
        iface: &Interface,
        mode: AttachMode,
        l3: bool,
    ) -> Result<(AttachedMode, Attachment), NdpError> {
        let candidates: &[AttachedMode] = match mode {
            AttachMode::Tc => return self.attach_tc(iface),
            AttachMode::Auto if l3 => return self.attach_tc(iface),
            AttachMode::Auto => &[AttachedMode::Driver, AttachedMode::Generic],
            AttachMode::Driver => &[AttachedMode::Driver],
            AttachMode::Generic => &[AttachedMode::Generic],
        };
        let mut last_err = None;
        for &candidate in candidates {
            let attach_err = |source| NdpError::Attach {
                interface: iface.name.clone(),
                mode: candidate.name(),
                source,
            };
            let program = self.program()?;
            // aya tries an XDP link and, where the kernel has none, sets the
            // program through netlink.
            let attachment = match program.attach_to_if_index(iface.index, xdp_mode(candidate)) {
                Ok(id) => match FdLink::try_from(program.take_link(id)?) {
                    Ok(fd_link) => {
                        let path = self.pins.link();
                        fd_link
                            .pin(&path)
                            .map_err(|source| NdpError::PinLink { path, source })?;
                        Ok(Attachment::Link)
                    }
                    // A netlink attachment cannot be told from a link before
                    // this conversion, which drops (and so detaches) it:
                    // attach again and keep it.
                    Err(_) => program
                        .attach_to_if_index(iface.index, xdp_mode(candidate))
                        .map(|id| {
                            keep_attached(program.take_link(id)?);
                            Ok(Attachment::Netlink)
                        })
                        .map_err(attach_err)
                        .and_then(|kept| kept),
                },
                Err(source) => Err(attach_err(source)),
            };
            match attachment {
                Ok(attachment) => {
                    if attachment == Attachment::Netlink {
                        self.pin_netlink_program(PROGRAM_NAME)?;
                    }
                    if candidate == AttachedMode::Generic && mode == AttachMode::Auto {
                        tracing::warn!(
                            interface = %iface.name,
                            %attachment,
                            "attached in generic mode: the driver has no native XDP"
                        );
                    } else {
                        tracing::info!(interface = %iface.name, mode = %candidate, %attachment, "attached");
                    }
                    return Ok((candidate, attachment));
                }
                Err(e) => {
                    if mode == AttachMode::Auto && candidate == AttachedMode::Driver {
                        tracing::info!(
                            interface = %iface.name,
                            "native XDP refused ({}); falling back to generic mode",
                            std::error::Error::source(&e).map_or(String::new(), ToString::to_string)
                        );
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.expect("at least one candidate mode"))
    }

    pub fn config(&self) -> Result<NdpConfig, NdpError> {
        let map = self
            .ebpf
            .map(CONFIG_MAP)
            .ok_or(NdpError::MissingMap(CONFIG_MAP))?;
        let array: Array<&MapData, NdpConfig> =
            Array::try_from(map).map_err(NdpError::map(CONFIG_MAP))?;
        array.get(&0, 0).map_err(NdpError::map(CONFIG_MAP))
    }

    fn write_config(&mut self, edit: impl FnOnce(&mut NdpConfig)) -> Result<(), NdpError> {
        let mut cfg = self.config()?;
        edit(&mut cfg);
        let map = self
            .ebpf
            .map_mut(CONFIG_MAP)
            .ok_or(NdpError::MissingMap(CONFIG_MAP))?;
        let mut array: Array<&mut MapData, NdpConfig> =
            Array::try_from(map).map_err(NdpError::map(CONFIG_MAP))?;
        array.set(0, cfg, 0).map_err(NdpError::map(CONFIG_MAP))
    }

    /// Configures the program without attaching it (for BPF_PROG_TEST_RUN).
    pub fn configure_detached(
        &mut self,
        link_layer: LinkLayer,
        options: ResponderOptions,
    ) -> Result<(), NdpError> {
        self.configure(link_layer, options, |_| {})
    }

    /// Writes the VLAN filter, then the configuration (flags from
    /// `options` and `link_layer`, then `attached`'s edits), which turns
    /// answering on.
    fn configure(
        &mut self,
        link_layer: LinkLayer,
        options: ResponderOptions,
        attached: impl FnOnce(&mut NdpConfig),
    ) -> Result<(), NdpError> {
        self.write_vlan(options.vlan)?;
        self.write_config(|cfg| {
            cfg.flags = FLAG_CONFIGURED;
            if options.router {
                cfg.flags |= FLAG_ROUTER;
            }
            match link_layer {
                LinkLayer::Ethernet(mac) => cfg.mac = mac,
                LinkLayer::None => {
                    cfg.mac = [0; 6];
                    cfg.flags |= FLAG_L3_DEVICE;
                }
            }
            attached(cfg);
        })
    }

    fn write_vlan(&mut self, vlan: Option<u16>) -> Result<(), NdpError> {
        let map = self
            .ebpf
            .map_mut(VLAN_MAP)
            .ok_or(NdpError::MissingMap(VLAN_MAP))?;
        let mut array: Array<&mut MapData, u32> =
            Array::try_from(map).map_err(NdpError::map(VLAN_MAP))?;
        array
            .set(0, vlan_filter(vlan), 0)
            .map_err(NdpError::map(VLAN_MAP))
    }

    /// Advertises the interface's current MAC if it changed since attaching
    /// (an operator's `ip link set address`, a hypervisor's new NIC): the
    /// new MAC, or None when it is unchanged or the link has none.
    pub fn refresh_link_layer(&mut self) -> Result<Option<[u8; 6]>, NdpError> {
        let cfg = self.config()?;
        if cfg.flags & FLAG_CONFIGURED == 0 || cfg.flags & FLAG_L3_DEVICE != 0 {
            return Ok(None);
        }
        let Some(name) = Interface::name_of(cfg.ifindex) else {
            return Ok(None);
        };
        match Interface::by_name(&name)?.link_layer {
            LinkLayer::Ethernet(mac) if mac != cfg.mac => {
                self.write_config(|cfg| cfg.mac = mac)?;
                Ok(Some(mac))
            }
            _ => Ok(None),
        }
    }

    fn prefix_map(&self) -> Result<HashMap<&MapData, PrefixKey, PrefixValue>, NdpError> {
        let map = self
            .ebpf
            .map(PREFIXES_MAP)
            .ok_or(NdpError::MissingMap(PREFIXES_MAP))?;
        HashMap::try_from(map).map_err(NdpError::map(PREFIXES_MAP))
    }

    fn prefix_map_mut(
        &mut self,
    ) -> Result<HashMap<&mut MapData, PrefixKey, PrefixValue>, NdpError> {
        let map = self
            .ebpf
            .map_mut(PREFIXES_MAP)
            .ok_or(NdpError::MissingMap(PREFIXES_MAP))?;
        HashMap::try_from(map).map_err(NdpError::map(PREFIXES_MAP))
    }

    /// The prefixes answered for, in no particular order.
    pub fn prefixes(&self) -> Result<Vec<Ipv6Net>, NdpError> {
        let map = self.prefix_map()?;
        let mut nets = Vec::new();
        for key in map.keys() {
            let key = key.map_err(NdpError::map(PREFIXES_MAP))?;
            // A malformed key cannot come from us; skip it rather than fail.
            if let Some(net) = net_for(&key) {
                nets.push(net);
            }
        }
        Ok(nets)
    }

    /// Starts answering for `net`: one map update (plus one config update the
    /// first time its length is used). The caller guarantees it overlaps no
    /// prefix already present (the IPAM and `reconcile` do).
    pub fn insert(&mut self, net: Ipv6Net) -> Result<(), NdpError> {
        let len = net.prefix_len();
        if self.len_counts[usize::from(len)] == 0 {
            let cfg = self.config()?;
            if !cfg.lens.contains(&len) {
                let Some(slot) = cfg.lens.iter().position(|&l| l == 0) else {
                    let used = cfg.lens.iter().filter(|&&l| l != 0).count();
                    return Err(PrefixError::TooManyLengths { count: used + 1 }.into());
                };
                // The length goes in before the key: a lookup for a length
                // with no keys yet finds nothing, so the order is safe.
                self.write_config(|cfg| cfg.lens[slot] = len)?;
            }
        }
        let key = key_for(&net);
        let mut map = self.prefix_map_mut()?;
        if map.get(&key, 0).is_ok() {
            return Ok(());
        }
        map.insert(key, 0, 0).map_err(NdpError::map(PREFIXES_MAP))?;
        self.len_counts[usize::from(len)] += 1;
        Ok(())
    }

    /// Stops answering for `net`. Returns false when it was not present.
    pub fn remove(&mut self, net: Ipv6Net) -> Result<bool, NdpError> {
        let key = key_for(&net);
        let mut map = self.prefix_map_mut()?;
        match map.remove(&key) {
            Ok(()) => {}
            Err(aya::maps::MapError::KeyNotFound) => return Ok(false),
            Err(e) => return Err(NdpError::map(PREFIXES_MAP)(e)),
        }
        let len = net.prefix_len();
        let count = &mut self.len_counts[usize::from(len)];
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.write_config(|cfg| {
                for slot in cfg.lens.iter_mut().filter(|l| **l == len) {
                    *slot = 0;
                }
            })?;
        }
        Ok(true)
    }

    /// Makes the map hold exactly `want`: adds before it removes, so a prefix
    /// present in both is never absent. Returns (added, removed).
    pub fn reconcile(&mut self, want: &[Ipv6Net]) -> Result<(usize, usize), NdpError> {
        let want_nets: Vec<ipnet::IpNet> = want.iter().map(|n| (*n).into()).collect();
        validate_prefixes(&want_nets)?;
        let have: std::collections::HashSet<Ipv6Net> = self.prefixes()?.into_iter().collect();
        let want: std::collections::HashSet<Ipv6Net> = want.iter().copied().collect();
        let mut added = 0;
        for net in want.difference(&have) {
            self.insert(*net)?;
            added += 1;
        }
        let mut removed = 0;
        for net in have.difference(&want) {
            if self.remove(*net)? {
                removed += 1;
            }
        }
        Ok((added, removed))
    }

    pub fn counters(&self) -> Result<Counters, NdpError> {
        let map = self
            .ebpf
            .map(COUNTERS_MAP)
            .ok_or(NdpError::MissingMap(COUNTERS_MAP))?;
        let array = PerCpuArray::try_from(map).map_err(NdpError::map(COUNTERS_MAP))?;
        Counters::read(&array)
    }

    /// Lengths in use, as the program sees them.
    pub fn lengths(&self) -> Result<Vec<u8>, NdpError> {
        let cfg = self.config()?;
        Ok(cfg.lens.iter().copied().filter(|&l| l != 0).collect())
    }
}

const _: () = assert!(MAX_PREFIX_LENS <= u8::MAX as usize);

/// The capabilities the responder needs: creating its maps and loading its
/// program (CAP_BPF), having the verifier accept the program's arithmetic
/// on packet pointers (CAP_PERFMON: without it the load fails with "pointer
/// arithmetic with it prohibited for !root") and attaching it to an
/// interface (CAP_NET_ADMIN). CAP_SYS_ADMIN stands in for the first two, as
/// the kernel accepts. Root has all; the service's own user gets them from
/// the unit. Checked first, so that a missing one gets a clear error rather
/// than a verifier log.
/// The [`VLAN_MAP`] value for `vlan`.
pub(crate) fn vlan_filter(vlan: Option<u16>) -> u32 {
    vlan.map_or(0, |id| VLAN_FILTER_ON | u32::from(id & VLAN_ID_MASK))
}

pub(crate) fn require_privileges() -> Result<(), NdpError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    // Without /proc the kernel is left to refuse what is not allowed.
    let Some(effective) = effective else {
        return Ok(());
    };
    let has = |cap: u32| effective & (1 << cap) != 0;
    let missing: Vec<&str> = [
        (!has(CAP_BPF) && !has(CAP_SYS_ADMIN)).then_some("CAP_BPF"),
        (!has(CAP_PERFMON) && !has(CAP_SYS_ADMIN)).then_some("CAP_PERFMON"),
        (!has(CAP_NET_ADMIN)).then_some("CAP_NET_ADMIN"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !missing.is_empty() {
        return Err(NdpError::NotPrivileged(missing.join(", ")));
    }
    Ok(())
}

/// capabilities(7).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
