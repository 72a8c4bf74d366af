//! `GET /metrics`: the daemon's figures in Prometheus' text format, from
//! the snapshot it publishes after every poll. Open when the API listens on
//! loopback (a local scraper); a token is needed otherwise.

use std::fmt::Write as _;

use axum::{
    Router,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};

use super::ApiState;
use crate::operator::{Snapshot, status::ContractRole};

pub fn routes() -> Router<ApiState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let text = render(&state.handle.snapshot());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// One metric family: its help, type and samples (labels, value).
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn start<'a>(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP blockhost_broker_{name} {help}");
        let _ = writeln!(out, "# TYPE blockhost_broker_{name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", labels.join(","))
        };
        let _ = writeln!(self.out, "blockhost_broker_{name}{labels} {value}");
    }
}

/// A family of one sample without labels.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    Family::start(out, name, kind, help).sample(name, &[], value);
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The snapshot in the text format. Figures the snapshot lacks (no chain
/// reading yet, no wallet, no responder) are left out rather than zero.
pub fn render(snapshot: &Snapshot) -> String {
    let s = &snapshot.status;
    let mut out = String::new();
    let o = &mut out;

    let name = "build_info";
    Family::start(o, name, "gauge", "The broker's version (always 1).").sample(
        name,
        &[("version", &s.version)],
        1,
    );

    let name = "allocations";
    let mut f = Family::start(o, name, "gauge", "Allocations of the pool, by state.");
    f.sample(name, &[("state", "used")], s.pool.used);
    f.sample(name, &[("state", "free")], s.pool.free);

    let name = "requests_total";
    let mut f = Family::start(
        o,
        name,
        "counter",
        "On-chain requests handled, by contract and outcome.",
    );
    for c in &s.contracts {
        let contract = c.address.to_string();
        let r = c.requests;
        for (outcome, n) in [
            ("answered", r.answered),
            ("rejected", r.rejected),
            ("skipped", r.skipped),
        ] {
            f.sample(name, &[("contract", &contract), ("outcome", outcome)], n);
        }
    }

    let name = "requests_pending";
    let mut f = Family::start(
        o,
        name,
        "gauge",
        "Requests allocated but not answered yet, or waiting for a retry, by contract.",
    );
    for c in &s.contracts {
        let role = match c.role {
            ContractRole::Primary => "primary",
            ContractRole::Legacy => "legacy",
        };
        f.sample(
            name,
            &[("contract", &c.address.to_string()), ("role", role)],
            c.requests.pending,
        );
    }

    let answered: u64 = s.contracts.iter().map(|c| c.requests.answered).sum();
    single(
        o,
        "responses_total",
        "counter",
        "Responses sent on chain.",
        answered,
    );

    if let Some(counters) = &s.counters {
        let name = "chain_errors_total";
        let mut f = Family::start(
            o,
            name,
            "counter",
            "Failed polls and upkeep steps since the daemon started, by kind of chain error.",
        );
        for kind in [
            "transient",
            "reverted",
            "bad_data",
            "config",
            "wrong_chain",
            "other",
        ] {
            let n = counters.poll_errors.get(kind).copied().unwrap_or(0);
            f.sample(name, &[("kind", kind)], n);
        }
        if let Some(at) = counters.last_poll_success_at {
            let name = "last_poll_success_timestamp_seconds";
            single(o, name, "gauge", "When a poll last succeeded.", at);
        }
        single(
            o,
            "gas_spent_wei_total",
            "counter",
            "Wei paid in gas for the transactions mined since the daemon started.",
            counters.gas_spent_wei,
        );
        single(
            o,
            "reorgs_total",
            "counter",
            "Reorgs noticed since the daemon started (a block read at no longer on the chain).",
            counters.reorgs,
        );
        single(
            o,
            "reorg_releases_total",
            "counter",
            "Allocations released since the daemon started because a reorg dropped or changed their request.",
            counters.reorg_releases,
        );
    }

    if let Some(chain) = &s.chain {
        single(
            o,
            "chain_lag_blocks",
            "gauge",
            "Blocks between the chain head and the confirmed block the daemon read at.",
            chain.lag_blocks,
        );
    }
    if let Some(wallet) = &s.wallet {
        let help = "The operator wallet's balance.";
        single(o, "operator_balance_wei", "gauge", help, wallet.balance_wei);
    }

    if let Some(ndp) = &s.ndp {
        let name = "ndp_solicitations_total";
        let mut f = Family::start(
            o,
            name,
            "counter",
            "Neighbor solicitations seen by the XDP responder, by result (summed over CPUs).",
        );
        let c = ndp.counters;
        for (result, n) in [
            ("answered", c.answered),
            ("not_ours", c.not_ours),
            ("invalid", c.invalid),
            ("failed", c.failed),
        ] {
            f.sample(name, &[("result", result)], n);
        }
    }

    if let Some(peers) = &s.peers {
        let name = "wireguard_peers";
        let mut f = Family::start(o, name, "gauge", "WireGuard peers, by state.");
        f.sample(name, &[("state", "active")], peers.active);
        f.sample(name, &[("state", "idle")], peers.idle);
        f.sample(name, &[("state", "never_connected")], peers.never);
    }
    out
}
