//! `blockhost-broker ndp …`: the responder on its own, with static prefixes
//! (a drop-in for ndppd's static rules).

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use broker_userspace::ndp::{
    self, AttachMode, Interface, PinDir, Responder, ResponderOptions, Status,
};
use clap::Subcommand;
use ipnet::IpNet;

#[derive(clap::Args)]
pub struct NdpArgs {
    /// bpffs directory holding the responder's pinned maps and link. One
    /// directory per responder; the pins keep it answering while no process
    /// runs. (`run` takes it from the configuration's ndp_pin_dir.)
    #[arg(
        long,
        global = true,
        env = "BLOCKHOST_BROKER_PIN_DIR",
        default_value = ndp::DEFAULT_PIN_DIR
    )]
    pin_dir: PathBuf,
    #[command(subcommand)]
    command: NdpCommand,
}

#[derive(Subcommand)]
pub enum NdpCommand {
    /// Answer Neighbor Solicitations for every address of the given prefixes
    /// on an interface, in the foreground, until SIGINT or SIGTERM.
    ///
    /// The program and its prefix map stay pinned after exit, so answering
    /// goes on across restarts; the next start adopts them and makes the map
    /// hold exactly the prefixes given.
    Serve {
        /// Upstream interface (Ethernet, VLAN, or an L3 tunnel such as SIT).
        #[arg(long, short)]
        interface: String,
        /// Prefix to answer for, e.g. 2001:db8:1::/64 (repeatable).
        #[arg(long = "prefix", short, required = true, value_name = "PREFIX")]
        prefixes: Vec<IpNet>,
        /// auto: on Ethernet, native (driver) XDP, else generic XDP; on an L3
        /// device (SIT and other tunnels), TC. Or force one. On a veth, driver
        /// mode only delivers answers if the peer runs an XDP program too.
        #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
        mode: AttachMode,
        /// Set the Router flag in advertisements (the broker routes these
        /// prefixes, so a router's view of them is accurate).
        #[arg(long)]
        router: bool,
        /// Answer only solicitations tagged with this 802.1Q VLAN id, for an
        /// interface that is the parent of a trunk (frames of other VLANs and
        /// untagged ones are left to the kernel). Default: untagged frames
        /// and those of any one tag.
        #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u16).range(1..=4094))]
        vlan: Option<u16>,
        /// Detach and remove the pins on exit instead of leaving the
        /// responder running.
        #[arg(long)]
        detach_on_exit: bool,
    },
    /// Show the attached responder: interface, mode, prefixes, counters.
    /// Exits 3 when no responder is pinned.
    Status,
    /// Detach the responder and remove its pins.
    Detach,
}

pub fn run(args: NdpArgs) -> anyhow::Result<ExitCode> {
    let pins = &PinDir::new(args.pin_dir);
    match args.command {
        NdpCommand::Serve {
            interface,
            prefixes,
            mode,
            router,
            vlan,
            detach_on_exit,
        } => serve(
            pins,
            &interface,
            &prefixes,
            mode,
            ResponderOptions { router, vlan },
            detach_on_exit,
        ),
        NdpCommand::Status => Ok(match ndp::status(pins)? {
            Some(status) => {
                print_status(pins, &status);
                ExitCode::SUCCESS
            }
            None => {
                println!("no NDP responder pinned under {}", pins.path().display());
                ExitCode::from(3)
            }
        }),
        NdpCommand::Detach => {
            if ndp::detach(pins)? {
                println!("detached; removed {}", pins.path().display());
            } else {
                println!("nothing pinned under {}", pins.path().display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn serve(
    pins: &PinDir,
    interface: &str,
    prefixes: &[IpNet],
    mode: AttachMode,
    options: ResponderOptions,
    detach_on_exit: bool,
) -> anyhow::Result<ExitCode> {
    let prefixes = ndp::validate_prefixes(prefixes)?;
    let iface = Interface::by_name(interface)?;
    // A first start that fails part-way must not leave pins behind (they
    // would look like a responder); a restart's pins are the running
    // responder and stay whatever happens.
    let first_start = !pins.exists();
    let started = Responder::load(pins).and_then(|mut responder| {
        let (mode, attachment) = responder.attach(&iface, mode, options)?;
        let attached = format!("{mode} mode, {}", attachment.describe(mode));
        let (added, removed) = responder.reconcile(&prefixes)?;
        Ok((responder, attached, added, removed))
    });
    let (mut responder, attached, added, removed) = match started {
        Ok(started) => started,
        Err(e) => {
            if first_start {
                let _ = ndp::detach(pins);
            }
            return Err(e.into());
        }
    };
    tracing::info!(
        "answering for {} prefixes on {} ({attached}): {added} added, {removed} removed",
        prefixes.len(),
        iface.name
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let signal = runtime.block_on(wait_for_stop(&mut responder))?;
    if detach_on_exit {
        drop(responder);
        ndp::detach(pins)?;
        tracing::info!("{signal}: detached");
    } else {
        tracing::info!(
            "{signal}: exiting; the responder stays attached (`blockhost-broker ndp detach` removes it)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for SIGTERM or SIGINT, following the interface's MAC meanwhile.
async fn wait_for_stop(responder: &mut Responder) -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut mac = ndp::MacFollower::default();
    let mut tick = tokio::time::interval(ndp::follow_mac::INTERVAL);
    loop {
        tokio::select! {
            _ = term.recv() => return Ok("SIGTERM"),
            _ = int.recv() => return Ok("SIGINT"),
            _ = tick.tick() => mac.check(responder),
        }
    }
}

fn print_status(pins: &PinDir, s: &Status) {
    let interface = s
        .interface
        .clone()
        .unwrap_or_else(|| format!("index {} (gone)", s.ifindex));
    let mode = match (s.mode, s.attachment) {
        (Some(m), Some(a)) => format!("{m} ({})", a.describe(m)),
        (Some(m), None) => m.to_string(),
        (None, _) => "unknown".to_string(),
    };
    println!("pins:       {}", pins.path().display());
    println!(
        "interface:  {interface} ({})",
        if s.attached {
            "attached"
        } else {
            "not attached"
        }
    );
    println!("mode:       {mode}");
    if s.l3_device {
        println!("link layer: none (L3 device)");
    } else {
        let m = s.mac;
        println!(
            "link layer: {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        );
    }
    println!("router:     {}", if s.router { "yes" } else { "no" });
    if let Some(vlan) = s.vlan {
        println!(
            "vlan:       {vlan} (solicitations of other VLANs and untagged ones go to the kernel)"
        );
    }
    let lens: Vec<String> = s.lengths.iter().map(|l| format!("/{l}")).collect();
    println!("prefixes:   {} ({})", s.prefixes, lens.join(" "));
    let c = s.counters;
    println!(
        "counters:   seen {} answered {} not_ours {} invalid {} failed {}",
        c.seen, c.answered, c.not_ours, c.invalid, c.failed
    );
}
