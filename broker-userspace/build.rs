use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Builds the eBPF programs (broker-ebpf) with the nightly toolchain and
/// bpf-linker, into OUT_DIR, where src/ndp/program.rs includes them.
fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "broker-ebpf")
        .ok_or_else(|| anyhow!("broker-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("broker-ebpf has no manifest directory"))?;
    aya_build::build_ebpf(
        [Package {
            name: "broker-ebpf",
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the eBPF programs (is `cargo xtask setup` done?)")
}
