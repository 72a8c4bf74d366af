//! Part 3: resolution latency, one solicitation at a time: from just before
//! the generator's `sendto` to the kernel's receive timestamp of the
//! advertisement on the generator's side. Multicast solicitations are what a
//! router sends to resolve an address; unicast ones are its reachability
//! probes (NUD). Targets are addresses every design covers. The kernel's proxy delays multicast answers by a random
//! time on purpose (proxy_delay); this measures what each design does.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{
    frames::Ns,
    lab::{Lab, host, proxy_addresses},
};

pub struct Plan {
    pub samples: usize,
    /// Per series: stop sampling after this long.
    pub budget: Duration,
    /// Longer than the kernel proxy's largest delay (0.8 s by default).
    pub timeout: Duration,
}

impl Plan {
    pub fn full() -> Self {
        Plan {
            samples: 200,
            budget: Duration::from_secs(30),
            timeout: Duration::from_millis(1500),
        }
    }

    pub fn smoke() -> Self {
        Plan {
            samples: 20,
            budget: Duration::from_secs(2),
            timeout: Duration::from_millis(1000),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Multicast,
    Unicast,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Multicast, Kind::Unicast];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Multicast => "multicast NS",
            Kind::Unicast => "unicast NS (NUD)",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Series {
    pub kind: Kind,
    pub sent: usize,
    /// NS→NA times of the answered ones, µs, sorted.
    pub micros: Vec<f64>,
}

impl Series {
    pub fn answered(&self) -> usize {
        self.micros.len()
    }

    /// The q-quantile (nearest rank) of the answered ones.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.micros.is_empty() {
            return None;
        }
        let rank = ((q * self.micros.len() as f64).ceil() as usize).clamp(1, self.micros.len());
        Some(self.micros[rank - 1])
    }
}

/// Consecutive unanswered probes (with none answered) after which a series
/// stops: that design does not answer this kind at all.
const GIVE_UP_AFTER: usize = 5;

pub fn run(lab: &mut Lab, plan: &Plan) -> anyhow::Result<Vec<Series>> {
    let prober = lab.prober()?;
    lab.counter.set_pass(true)?;
    let mut rng = StdRng::seed_from_u64(3);
    let mut out = Vec::new();
    for kind in Kind::ALL {
        let start = Instant::now();
        let mut series = Series {
            kind,
            sent: 0,
            micros: Vec::new(),
        };
        while series.sent < plan.samples && start.elapsed() < plan.budget {
            let net = lab.allocations[rng.random_range(0..lab.allocations.len())];
            // An address every design covers, the old one included: latency
            // is about answering, coverage is measured on its own.
            let target = proxy_addresses(net)
                .nth(rng.random_range(0..256))
                .unwrap_or_else(|| host(net, 1));
            let ns = match kind {
                Kind::Multicast => Ns::multicast(target),
                Kind::Unicast => Ns::unicast(target),
            };
            series.sent += 1;
            if let Some(t) = prober.probe(&ns.frame(), target, plan.timeout)? {
                series.micros.push(t.as_secs_f64() * 1e6);
            } else if series.micros.is_empty() && series.sent >= GIVE_UP_AFTER {
                break;
            }
        }
        series.micros.sort_by(|a, b| a.total_cmp(b));
        out.push(series);
    }
    Ok(out)
}
