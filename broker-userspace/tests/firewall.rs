//! Tunnel clients reach the broker itself only through what the daemon's
//! nftables table lets pass: ping to the gateway (and the ICMPv6 a tunnel
//! needs), not a service listening on the host, unless
//! `[wireguard] allow_to_broker` lists it. Forwarding to the internet is
//! untouched. The real daemon, in broker-lab's namespaces, with a
//! wireguard-go tunnel from server 1.
//!
//! Needs root (`cargo xtask test`); the lab's guards remove everything it
//! made, the table going with the broker's namespace.

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use broker_lab::{
    Lab, lab_test,
    requests::{CLIENT, Served},
    topology::{BROKER_LINK_ADDR, INTERNET_ADDR},
};
use broker_userspace::firewall::Allowed;

/// A service on the broker host that is none of the broker's business (an
/// sshd, a local RPC node…), listening on every address.
const PORT: u16 = 18080;

/// Whether a TCP connection from `ns` to `addr` is accepted within 3 s.
fn connects(ns: &broker_lab::netns::Netns, addr: SocketAddr) -> bool {
    ns.run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok())
}

#[test]
fn tunnel_clients_reach_only_icmpv6_and_allowed_services_on_the_broker() {
    lab_test("fw", async |lab: &mut Lab| {
        let gateway = IpAddr::V6(lab.config.broker.pool.broker_address());
        let listener = lab
            .net
            .broker
            .run(|| TcpListener::bind(("::", PORT)))
            .context("listening in the broker's namespace")?;

        lab.start_broker()?;
        let Served { client, answer, .. } = lab.serve(CLIENT).await?;
        lab.bring_up_tunnel(&client, &answer)?;

        ensure!(
            lab.net.servers[0].ping(&gateway.to_string(), 10),
            "the client cannot ping the gateway through its tunnel"
        );
        ensure!(
            lab.net.servers[0].ping(INTERNET_ADDR, 5),
            "the client cannot reach the internet host through its tunnel"
        );
        // The service does answer, from outside the tunnel.
        let outside = SocketAddr::new(BROKER_LINK_ADDR.parse()?, PORT);
        ensure!(
            connects(&lab.net.router, outside),
            "the router cannot reach the service: the test proves nothing"
        );
        let inside = SocketAddr::new(gateway, PORT);
        ensure!(
            !connects(&lab.net.servers[0], inside),
            "a tunnel client reached a service on the broker's tunnel address"
        );
        ensure!(
            !connects(&lab.net.servers[0], outside),
            "a tunnel client reached a service on the broker's upstream address"
        );

        // Allowed in the configuration: the restart replaces the table.
        lab.stop_broker()?;
        lab.config.wireguard.allow_to_broker = vec![
            format!("tcp/{PORT}")
                .parse::<Allowed>()
                .map_err(anyhow::Error::msg)?,
        ];
        lab.start_broker()?;
        ensure!(
            connects(&lab.net.servers[0], inside),
            "tcp/{PORT} is allowed, yet the tunnel client cannot connect"
        );
        ensure!(lab.net.servers[0].ping(INTERNET_ADDR, 5));
        let tables = lab.shell(&lab.net.broker, &["nft", "list", "tables"])?;
        ensure!(tables.matches("blockhost_broker").count() == 1, "{tables}");

        // `firewall remove` deletes it.
        let binary = broker_lab::broker::binary("blockhost-broker")?;
        let broker = binary.to_str().context("a UTF-8 path")?;
        let removed = lab.shell(&lab.net.broker, &[broker, "firewall", "remove"])?;
        ensure!(removed.contains("removed table"), "{removed}");
        let tables = lab.shell(&lab.net.broker, &["nft", "list", "tables"])?;
        ensure!(!tables.contains("blockhost_broker"), "{tables}");
        ensure!(
            connects(&lab.net.servers[0], outside),
            "without the table the upstream address is open to tunnel clients (nothing else stops them here)"
        );
        // `firewall apply` puts it back from the configuration (the VPS
        // image runs it after its own firewall flushes the ruleset).
        let config = lab.config_path.to_str().context("a UTF-8 path")?;
        let applied = lab.shell(
            &lab.net.broker,
            &[broker, "firewall", "apply", "--config", config],
        )?;
        ensure!(applied.contains("installed table"), "{applied}");
        ensure!(connects(&lab.net.servers[0], inside));
        let tables = lab.shell(&lab.net.broker, &["nft", "list", "tables"])?;
        ensure!(tables.contains("blockhost_broker"), "{tables}");
        drop(listener);
        Ok(())
    });
}
