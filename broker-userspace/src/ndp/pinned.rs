//! Reading and removing a responder through its pins alone, without loading
//! a program (so `status` never creates anything).

use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::{
        TcAttachType, Xdp,
        links::Link as _,
        tc::{SchedClassifierLink, TcError},
    },
};
use aya_obj::programs::XdpAttachType;
use broker_common::ndp::{
    CONFIG_MAP, COUNTERS_MAP, FLAG_L3_DEVICE, FLAG_NETLINK, FLAG_ROUTER, NdpConfig, PREFIXES_MAP,
    PrefixKey, PrefixValue, VLAN_FILTER_ON, VLAN_ID_MASK, VLAN_MAP,
};

use super::{
    AttachedMode, Attachment, Counters, Interface, NdpError, PinDir,
    responder::{TC_NETLINK_HANDLE, TC_NETLINK_PRIORITY, require_privileges},
};

#[derive(Clone, Debug)]
pub struct Status {
    /// Name of the interface, if it still exists.
    pub interface: Option<String>,
    pub ifindex: u32,
    pub mode: Option<AttachedMode>,
    /// Whether the program is attached: its link is pinned, or netlink
    /// attached it (its program is pinned as the record).
    pub attached: bool,
    /// How, when attached.
    pub attachment: Option<Attachment>,
    pub router: bool,
    pub l3_device: bool,
    pub mac: [u8; 6],
    /// The VLAN filter: only solicitations tagged with this id are answered.
    pub vlan: Option<u16>,
    pub prefixes: usize,
    pub lengths: Vec<u8>,
    pub counters: Counters,
}

fn open(pins: &PinDir, name: &'static str) -> Result<Map, NdpError> {
    let data = MapData::from_pin(pins.map(name)).map_err(NdpError::map(name))?;
    Map::from_map_data(data).map_err(NdpError::map(name))
}

/// The responder's state, or `None` when nothing is pinned in `pins`.
pub fn status(pins: &PinDir) -> Result<Option<Status>, NdpError> {
    require_privileges()?;
    if !pins.map(CONFIG_MAP).exists() {
        return Ok(None);
    }
    let config: Array<MapData, NdpConfig> =
        Array::try_from(open(pins, CONFIG_MAP)?).map_err(NdpError::map(CONFIG_MAP))?;
    let cfg = config.get(&0, 0).map_err(NdpError::map(CONFIG_MAP))?;
    let prefixes: HashMap<MapData, PrefixKey, PrefixValue> =
        HashMap::try_from(open(pins, PREFIXES_MAP)?).map_err(NdpError::map(PREFIXES_MAP))?;
    let prefix_count = prefixes.keys().filter(Result::is_ok).count();
    let counters: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(open(pins, COUNTERS_MAP)?).map_err(NdpError::map(COUNTERS_MAP))?;
    let counters = Counters::read(&counters)?;
    let attached = attachment(pins, &cfg);
    // Pins of a responder from before the filter existed have no map.
    let vlan = if pins.map(VLAN_MAP).exists() {
        let vlan: Array<MapData, u32> =
            Array::try_from(open(pins, VLAN_MAP)?).map_err(NdpError::map(VLAN_MAP))?;
        let filter = vlan.get(&0, 0).map_err(NdpError::map(VLAN_MAP))?;
        (filter & VLAN_FILTER_ON != 0).then_some(filter as u16 & VLAN_ID_MASK)
    } else {
        None
    };
    Ok(Some(Status {
        interface: Interface::name_of(cfg.ifindex),
        ifindex: cfg.ifindex,
        mode: AttachedMode::from_code(cfg.attach_mode),
        attached: attached.is_some(),
        attachment: attached,
        router: cfg.flags & FLAG_ROUTER != 0,
        l3_device: cfg.flags & FLAG_L3_DEVICE != 0,
        mac: cfg.mac,
        vlan,
        prefixes: prefix_count,
        lengths: cfg.lens.iter().copied().filter(|&l| l != 0).collect(),
        counters,
    }))
}

/// Detaches the program (by removing its link's pin) and removes the pinned
/// maps. Returns false when nothing was pinned.
pub fn detach(pins: &PinDir) -> Result<bool, NdpError> {
    require_privileges()?;
    if !pins.exists() {
        return Ok(false);
    }
    let remove = |path: std::path::PathBuf| match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NdpError::Remove { path, source }),
    };
    // The attachment first: answering stops at once, before the maps go.
    if pins.map(CONFIG_MAP).exists() {
        let config: Array<MapData, NdpConfig> =
            Array::try_from(open(pins, CONFIG_MAP)?).map_err(NdpError::map(CONFIG_MAP))?;
        let cfg = config.get(&0, 0).map_err(NdpError::map(CONFIG_MAP))?;
        remove_attachment(pins, &cfg)?;
    }
    remove(pins.link())?;
    remove(pins.netlink_program())?;
    for name in [PREFIXES_MAP, CONFIG_MAP, COUNTERS_MAP, VLAN_MAP] {
        remove(pins.map(name))?;
    }
    std::fs::remove_dir(pins.path()).map_err(|source| NdpError::Remove {
        path: pins.path().to_path_buf(),
        source,
    })?;
    Ok(true)
}

/// How the responder pinned in `pins` (whose configuration is `cfg`) is
/// attached, if it is.
pub(crate) fn attachment(pins: &PinDir, cfg: &NdpConfig) -> Option<Attachment> {
    if pins.link().exists() {
        Some(Attachment::Link)
    } else if cfg.flags & FLAG_NETLINK != 0 && pins.netlink_program().exists() {
        Some(Attachment::Netlink)
    } else {
        None
    }
}

/// Detaches the responder pinned in `pins` (configuration `cfg`), whichever
/// way it is attached. A link goes with its pin; a netlink attachment is
/// taken off the interface (if the interface is still there) before its
/// record goes.
pub(crate) fn remove_attachment(pins: &PinDir, cfg: &NdpConfig) -> Result<(), NdpError> {
    let remove = |path: std::path::PathBuf| match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NdpError::Remove { path, source }),
    };
    match attachment(pins, cfg) {
        None => {}
        Some(Attachment::Link) => remove(pins.link())?,
        Some(Attachment::Netlink) => {
            if let Some(interface) = Interface::name_of(cfg.ifindex) {
                detach_netlink(pins, cfg, &interface)
                    .map_err(|source| NdpError::Detach { interface, source })?;
            }
            remove(pins.netlink_program())?;
        }
    }
    Ok(())
}

fn detach_netlink(
    pins: &PinDir,
    cfg: &NdpConfig,
    interface: &str,
) -> Result<(), aya::programs::ProgramError> {
    match AttachedMode::from_code(cfg.attach_mode) {
        Some(AttachedMode::Tc) => {
            // Our filter, by the priority and handle it was given; another
            // tool's filters on the same qdisc stay.
            let link = SchedClassifierLink::attached(
                interface,
                TcAttachType::Ingress,
                TC_NETLINK_PRIORITY,
                TC_NETLINK_HANDLE,
                None,
            )
            .map_err(TcError::IoError)?;
            match link.detach() {
                Ok(()) => Ok(()),
                // Already gone (someone ran `tc filter del`): detached.
                Err(aya::programs::ProgramError::TcError(TcError::NetlinkError(e)))
                    if e.raw_os_error() == Some(libc::ENOENT) =>
                {
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Some(mode @ (AttachedMode::Driver | AttachedMode::Generic)) => {
            // aya detaches a netlink XDP attachment only through the link it
            // made: attach the pinned program again (on a kernel without XDP
            // links that is netlink, replacing it with itself) and detach
            // that.
            let mut program = Xdp::from_pin(pins.netlink_program(), XdpAttachType::Interface)?;
            let xdp_mode = match mode {
                AttachedMode::Generic => aya::programs::XdpMode::Skb,
                _ => aya::programs::XdpMode::Driver,
            };
            let id = program.attach_to_if_index(cfg.ifindex, xdp_mode)?;
            program.detach(id)
        }
        None => Ok(()),
    }
}
