//! A packet to an address of the pool that no client holds ends at the
//! broker with an ICMPv6 unreachable: without the broker's `unreachable
//! <pool>` route, where the provider routes the pool to the broker through
//! a next hop, it would follow the broker's default route back to the
//! router and bounce between them until its hop limit ran out — traffic
//! anyone on the internet could multiply.

use anyhow::{Context as _, ensure};
use broker_lab::{
    Lab, lab_test,
    topology::{BROKER_LINK_ADDR, UPSTREAM_PREFIX},
};

/// An address of the pool no allocation holds (the lab allocates from the
/// start of the pool).
const UNALLOCATED: &str = "2001:db8:100:ffff::1";

/// IPv6 datagrams the router has forwarded so far.
fn forwarded(lab: &Lab) -> anyhow::Result<u64> {
    let out = lab.net.router.output("cat", &["/proc/net/snmp6"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Ip6OutForwDatagrams"))
        .and_then(|v| v.trim().parse().ok())
        .context("Ip6OutForwDatagrams in the router's /proc/net/snmp6")
}

#[test]
fn a_probe_to_an_unallocated_address_is_answered_unreachable_not_looped() {
    lab_test("loop", async |lab| {
        // The provider routes the pool to the broker's link address.
        lab.net.router.ip(&[
            "-6",
            "route",
            "replace",
            UPSTREAM_PREFIX,
            "via",
            BROKER_LINK_ADDR,
            "dev",
            "to-broker",
        ])?;
        lab.start_broker()?;
        let routes = lab
            .net
            .broker
            .ip(&["-6", "route", "show", UPSTREAM_PREFIX])?;
        ensure!(
            routes.contains("unreachable") && routes.contains("proto 180"),
            "no unreachable route for the pool: {routes}"
        );

        let before = forwarded(lab)?;
        // One probe, its hop limit the usual 64.
        let probe = lab.net.internet.output(
            "ping",
            &["-n", "-c", "1", "-W", "2", "-t", "64", UNALLOCATED],
        )?;
        let said = String::from_utf8_lossy(&probe.stdout).into_owned();
        let after = forwarded(lab)?;
        // The probe toward the broker and the ICMPv6 error back.
        ensure!(
            after - before <= 2,
            "the router forwarded {} datagrams for one probe:\n{said}",
            after - before
        );
        ensure!(
            said.contains("Unreachable") || said.contains("unreachable"),
            "the sender was not told: {said}"
        );
        Ok(())
    });
}
