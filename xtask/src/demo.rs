//! `cargo xtask demo`: the responder at work in network namespaces.

#[derive(clap::Args)]
pub struct Args {
    /// Tear down at once instead of waiting for Ctrl-C.
    #[arg(long)]
    exit: bool,
}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("the demo is being written")
}
