//! Loading, attaching and feeding the XDP program.

use std::fmt;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use aya_log::EbpfLogger;
use broker_common::ndp::{
    ATTACH_MODE_DRIVER, ATTACH_MODE_GENERIC, ATTACH_MODE_TC, CONFIG_MAP, COUNTERS_MAP, Counter,
    FLAG_CONFIGURED, FLAG_L3_DEVICE, FLAG_ROUTER, MAX_PREFIX_LENS, NdpConfig, PREFIXES_MAP,
    PROGRAM_NAME, PrefixKey, PrefixValue, TC_PROGRAM_NAME,
};
use ipnet::Ipv6Net;
use tracing::Level;

use super::{
    Interface, LinkLayer, NdpError, PinDir, PrefixError,
    kernel_log::{self, LogReader},
    key_for, net_for,
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

    fn name(self) -> &'static str {
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

#[derive(Clone, Copy, Debug, Default)]
pub struct ResponderOptions {
    /// Set the Router flag in advertisements.
    pub router: bool,
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

    /// Attaches to `iface`, or, when a link is already pinned for it, swaps
    /// this program into that link atomically (no packet goes unanswered).
    pub fn attach(
        &mut self,
        iface: &Interface,
        mode: AttachMode,
        options: ResponderOptions,
    ) -> Result<AttachedMode, NdpError> {
        let l3 = iface.link_layer == LinkLayer::None;
        if l3 && matches!(mode, AttachMode::Driver | AttachMode::Generic) {
            return Err(NdpError::L3NeedsTc(iface.name.clone()));
        }
        let link_pin = self.pins.link();
        let current = self.config()?;
        let current_mode = AttachedMode::from_code(current.attach_mode);
        let mut adopt = link_pin.exists();
        if adopt && current.ifindex != iface.index {
            if let Some(name) = Interface::name_of(current.ifindex) {
                return Err(NdpError::AttachedElsewhere {
                    pins: self.pins.path().to_path_buf(),
                    attached: name,
                });
            }
            tracing::info!(
                "the interface of the pinned link is gone (index {}); attaching afresh",
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
        if link_pin.exists() && !adopt {
            std::fs::remove_file(&link_pin).map_err(|source| NdpError::Remove {
                path: link_pin.clone(),
                source,
            })?;
        }

        let attached = match (adopt, current_mode) {
            (true, Some(current)) => {
                self.adopt_link(iface, current)?;
                current
            }
            _ => self.attach_new(iface, mode, l3)?,
        };
        self.write_config(|cfg| {
            cfg.flags = FLAG_CONFIGURED;
            if options.router {
                cfg.flags |= FLAG_ROUTER;
            }
            match iface.link_layer {
                LinkLayer::Ethernet(mac) => cfg.mac = mac,
                LinkLayer::None => {
                    cfg.mac = [0; 6];
                    cfg.flags |= FLAG_L3_DEVICE;
                }
            }
            cfg.attach_mode = attached.code();
            cfg.ifindex = iface.index;
        })?;
        Ok(attached)
    }

    fn adopt_link(&mut self, iface: &Interface, mode: AttachedMode) -> Result<(), NdpError> {
        let path = self.pins.link();
        let adopt_err = |source| NdpError::AdoptLink {
            path: path.clone(),
            source,
        };
        let attach_err = |source| NdpError::Attach {
            interface: iface.name.clone(),
            mode: "the pinned link's",
            source,
        };
        let fd_link = FdLink::from(PinnedLink::from_pin(&path).map_err(adopt_err)?);
        // The pin refers to the link, not to the program: after the update it
        // stays valid and now runs this program.
        if mode == AttachedMode::Tc {
            let link = SchedClassifierLink::try_from(fd_link).map_err(adopt_err)?;
            self.tc_program()?
                .attach_to_link(link)
                .map_err(attach_err)?;
        } else {
            let link = XdpLink::try_from(fd_link).map_err(adopt_err)?;
            self.program()?.attach_to_link(link).map_err(attach_err)?;
        }
        tracing::info!(interface = %iface.name, %mode, "adopted the pinned link");
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

    fn attach_tc(&mut self, iface: &Interface) -> Result<AttachedMode, NdpError> {
        let program = self.tc_program()?;
        let id = program
            .attach_with_options(
                &iface.name,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|source| NdpError::Attach {
                interface: iface.name.clone(),
                mode: "tc",
                source,
            })?;
        let link = program.take_link(id)?;
        let fd_link = FdLink::try_from(link).map_err(|_| NdpError::NoLink(iface.name.clone()))?;
        let path = self.pins.link();
        fd_link
            .pin(&path)
            .map_err(|source| NdpError::PinLink { path, source })?;
        tracing::info!(interface = %iface.name, mode = "tc", "attached (L3 device)");
        Ok(AttachedMode::Tc)
    }

    fn attach_new(
        &mut self,
        iface: &Interface,
        mode: AttachMode,
        l3: bool,
    ) -> Result<AttachedMode, NdpError> {
        let candidates: &[(AttachedMode, XdpMode)] = match mode {
            AttachMode::Tc => return self.attach_tc(iface),
            AttachMode::Auto if l3 => return self.attach_tc(iface),
            AttachMode::Auto => &[
                (AttachedMode::Driver, XdpMode::Driver),
                (AttachedMode::Generic, XdpMode::Skb),
            ],
            AttachMode::Driver => &[(AttachedMode::Driver, XdpMode::Driver)],
            AttachMode::Generic => &[(AttachedMode::Generic, XdpMode::Skb)],
        };
        let program = self.program()?;
        let mut last_err = None;
        for &(candidate, xdp_mode) in candidates {
            match program.attach_to_if_index(iface.index, xdp_mode) {
                Ok(id) => {
                    let link = program.take_link(id)?;
                    let fd_link =
                        FdLink::try_from(link).map_err(|_| NdpError::NoLink(iface.name.clone()))?;
                    let path = self.pins.link();
                    fd_link
                        .pin(&path)
                        .map_err(|source| NdpError::PinLink { path, source })?;
                    if candidate == AttachedMode::Generic && mode == AttachMode::Auto {
                        tracing::warn!(
                            interface = %iface.name,
                            "attached in generic mode: the driver has no native XDP"
                        );
                    } else {
                        tracing::info!(interface = %iface.name, mode = %candidate, "attached");
                    }
                    return Ok(candidate);
                }
                Err(source) => {
                    if mode == AttachMode::Auto && candidate == AttachedMode::Driver {
                        tracing::info!(
                            interface = %iface.name,
                            "native XDP refused ({source}); falling back to generic mode"
                        );
                    }
                    last_err = Some(NdpError::Attach {
                        interface: iface.name.clone(),
                        mode: candidate.name(),
                        source,
                    });
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
        })
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
