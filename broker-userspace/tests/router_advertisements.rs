//! A broker on a VPS that learns its default route from router
//! advertisements (SLAAC) keeps it when it starts: turning IPv6 forwarding
//! on makes the kernel drop RA-learned default routes on every interface
//! whose `accept_ra` is not 2, so the daemon sets 2 on its upstream
//! interface first. The provider's router here is radvd (Debian's) in the
//! lab's router namespace; the broker's static default route is removed.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use broker_lab::{
    Lab, lab_test,
    process::Process,
    topology::{INTERNET_ADDR, UPSTREAM_IF},
};

/// How long the broker must keep its route after it started (the issue's
/// figure: longer than a few advertisement intervals).
const KEPT_FOR: Duration = Duration::from_secs(60);

/// The router's side of the broker's link (see broker-lab's topology).
const ROUTER_IF: &str = "to-broker";

fn radvd(lab: &Lab) -> anyhow::Result<Process> {
    let conf = lab.dir.join("radvd.conf");
    std::fs::write(
        &conf,
        format!(
            "interface {ROUTER_IF} {{\n\
             \tAdvSendAdvert on;\n\
             \tMinRtrAdvInterval 3;\n\
             \tMaxRtrAdvInterval 4;\n\
             \tAdvDefaultLifetime 1800;\n\
             \tprefix 2001:db8:ff::/64 {{ AdvOnLink on; AdvAutonomous on; }};\n\
             }};\n"
        ),
    )?;
    let mut cmd = lab.net.router.command("radvd");
    cmd.arg("--nodaemon")
        .arg("--config")
        .arg(&conf)
        .arg("--pidfile")
        .arg(lab.dir.join("radvd.pid"))
        .args(["--logmethod", "stderr"]);
    Process::spawn_logged("radvd", cmd, lab.dir.join("radvd.log"))
}

/// The broker's default route, if it came from a router advertisement.
fn ra_default_route(lab: &Lab) -> anyhow::Result<Option<String>> {
    let routes = lab.net.broker.ip(&["-6", "route", "show", "default"])?;
    Ok(routes
        .lines()
        .find(|l| l.contains("proto ra"))
        .map(str::to_string))
}

async fn wait_for_ra_route(lab: &Lab, limit: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(route) = ra_default_route(lab)? {
            return Ok(route);
        }
        ensure!(Instant::now() < deadline, "no default route learned by RA");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[test]
fn a_broker_that_learns_its_default_route_by_slaac_keeps_it() {
    lab_test("slaac", async |lab| {
        lab.net.broker.ip(&["-6", "route", "del", "default"])?;
        lab.net.broker.sysctl(&[
            (&format!("net.ipv6.conf.{UPSTREAM_IF}.accept_ra"), "1"),
            ("net.ipv6.conf.all.forwarding", "0"),
        ])?;
        let mut radvd = radvd(lab)?;
        let learned = wait_for_ra_route(lab, Duration::from_secs(20))
            .await
            .with_context(|| format!("radvd's log:\n{}", radvd.log()))?;
        ensure!(
            lab.net.broker.ping(INTERNET_ADDR, 5),
            "the internet host is unreachable before the broker starts"
        );

        lab.start_broker()?;
        let started = Instant::now();
        while started.elapsed() < KEPT_FOR {
            let route = ra_default_route(lab)?;
            ensure!(
                route.is_some(),
                "{:.0?} after the broker started its default route ({learned}) is gone:\n{}",
                started.elapsed(),
                lab.net.broker.ip(&["-6", "route"])?
            );
            lab.check_broker()?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        ensure!(
            lab.net.broker.ping(INTERNET_ADDR, 5),
            "the internet host is unreachable {KEPT_FOR:?} after the broker started"
        );
        let accept_ra = lab.net.broker.output(
            "sysctl",
            &["-n", &format!("net.ipv6.conf.{UPSTREAM_IF}.accept_ra")],
        )?;
        ensure!(
            String::from_utf8_lossy(&accept_ra.stdout).trim() == "2",
            "accept_ra on {UPSTREAM_IF} is not 2"
        );
        ensure!(radvd.running(), "radvd stopped:\n{}", radvd.log());
        radvd.stop(Duration::from_secs(5))?;
        Ok(())
    });
}
