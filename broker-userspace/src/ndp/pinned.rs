//! Reading and removing a responder through its pins alone, without loading
//! a program (so `status` never creates anything).

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use broker_common::ndp::{
    CONFIG_MAP, COUNTERS_MAP, FLAG_L3_DEVICE, FLAG_ROUTER, NdpConfig, PREFIXES_MAP, PrefixKey,
    PrefixValue,
};

use super::{AttachedMode, Counters, Interface, NdpError, PinDir, responder::require_privileges};

#[derive(Clone, Debug)]
pub struct Status {
    /// Name of the interface, if it still exists.
    pub interface: Option<String>,
    pub ifindex: u32,
    pub mode: Option<AttachedMode>,
    /// Whether an XDP link is pinned (i.e. the program is attached).
    pub attached: bool,
    pub router: bool,
    pub l3_device: bool,
    pub mac: [u8; 6],
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
    Ok(Some(Status {
        interface: Interface::name_of(cfg.ifindex),
        ifindex: cfg.ifindex,
        mode: AttachedMode::from_code(cfg.attach_mode),
        attached: pins.link().exists(),
        router: cfg.flags & FLAG_ROUTER != 0,
        l3_device: cfg.flags & FLAG_L3_DEVICE != 0,
        mac: cfg.mac,
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
    // The link first: answering stops at once, before the maps go.
    remove(pins.link())?;
    for name in [PREFIXES_MAP, CONFIG_MAP, COUNTERS_MAP] {
        remove(pins.map(name))?;
    }
    std::fs::remove_dir(pins.path()).map_err(|source| NdpError::Remove {
        path: pins.path().to_path_buf(),
        source,
    })?;
    Ok(true)
}
