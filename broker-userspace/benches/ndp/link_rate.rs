//! Part 2: answered solicitations per second across the link. The generator
//! floods the responder side with multicast solicitations for targets spread
//! over all the allocations, as fast as the kernel takes them, for a fixed
//! time; the counter on the generator's veth counts the advertisements that
//! come back, including those the kernel proxy sends late (a drain period
//! after the flood, longer than its largest delay).
//!
//! Also here, as they use the same lab: coverage (part 4's "fraction of each
//! allocation answered"): a paced run of solicitations for random addresses
//! of the allocations, and, where the allocations are small enough, a sweep
//! soliciting every address of every allocation once.

use std::time::Duration;

use anyhow::Context as _;
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{
    frames::Ns,
    generator::{Pace, Sent},
    kernel_cost::allocation,
    lab::{Design, Lab, host},
    latency,
};

pub struct Plan {
    /// Allocations every design answers for in the link lab.
    pub allocations: usize,
    pub flood: Duration,
    /// After sending, before the final count, for the kernel proxy: its
    /// answers come up to 0.8 s (proxy_delay) late.
    pub drain: Duration,
    /// The same for the other designs, which answer at once.
    pub drain_prompt: Duration,
    pub coverage_samples: u64,
    /// Slow enough for the kernel proxy's 64-deep delay queue.
    pub coverage_rate: f64,
    /// Sweep every address when the allocations hold at most this many.
    pub sweep_max: u128,
    pub sweep_rate: f64,
}

impl Plan {
    pub fn full() -> Self {
        Plan {
            allocations: 100,
            flood: Duration::from_secs(3),
            drain: Duration::from_millis(1200),
            drain_prompt: Duration::from_millis(300),
            coverage_samples: 256,
            coverage_rate: 50.0,
            sweep_max: 1 << 20,
            sweep_rate: 10_000.0,
        }
    }

    pub fn smoke() -> Self {
        Plan {
            allocations: 16,
            flood: Duration::from_millis(500),
            drain: Duration::from_millis(1000),
            drain_prompt: Duration::from_millis(200),
            coverage_samples: 32,
            coverage_rate: 50.0,
            sweep_max: 1 << 20,
            sweep_rate: 10_000.0,
        }
    }
}

impl Plan {
    pub fn drain_for(&self, design: Design) -> Duration {
        if design == Design::KernelProxy {
            self.drain
        } else {
            self.drain_prompt
        }
    }
}

#[derive(Clone, Debug)]
pub struct Rate {
    pub sent: Sent,
    /// Advertisements counted when the flood stopped, and after the drain.
    pub answered_at_stop: u64,
    pub answered: u64,
    /// Our responder's own counters over the flood (seen, answered).
    pub responder_seen: Option<u64>,
    pub responder_answered: Option<u64>,
}

impl Rate {
    pub fn answered_per_second(&self) -> f64 {
        self.answered as f64 / self.sent.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn loss(&self) -> f64 {
        if self.sent.frames == 0 {
            return 0.0;
        }
        1.0 - self.answered as f64 / self.sent.frames as f64
    }
}

#[derive(Clone, Debug)]
pub struct Coverage {
    pub sampled: u64,
    pub answered: u64,
}

/// Multicast solicitations for `n` random addresses of the allocations.
fn random_targets(lab: &Lab, n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let net = lab.allocations[rng.random_range(0..lab.allocations.len())];
            Ns::multicast(host(net, rng.random())).frame()
        })
        .collect()
}

pub fn flood(lab: &mut Lab, plan: &Plan) -> anyhow::Result<Rate> {
    let frames = random_targets(lab, 4096, 1);
    let mut ring = lab.tx_ring()?;
    lab.counter.set_pass(false)?;
    let before = lab.counter.advertisements()?;
    let ours_before = lab.responder_counters()?;
    let sent = ring.send(
        &frames,
        Pace {
            duration: plan.flood,
            max_frames: None,
            rate: None,
        },
    )?;
    let answered_at_stop = lab.counter.advertisements()? - before;
    std::thread::sleep(plan.drain_for(lab.design));
    let answered = lab.counter.advertisements()? - before;
    let ours_after = lab.responder_counters()?;
    let (responder_seen, responder_answered) = match (ours_before, ours_after) {
        (Some(b), Some(a)) => (Some(a.seen - b.seen), Some(a.answered - b.answered)),
        _ => (None, None),
    };
    Ok(Rate {
        sent,
        answered_at_stop,
        answered,
        responder_seen,
        responder_answered,
    })
}

fn paced(
    lab: &mut Lab,
    frames: &[Vec<u8>],
    rate: f64,
    drain: Duration,
) -> anyhow::Result<Coverage> {
    let mut ring = lab.tx_ring()?;
    lab.counter.set_pass(false)?;
    let before = lab.counter.advertisements()?;
    let seconds = frames.len() as f64 / rate;
    let sent = ring.send(
        frames,
        Pace {
            // Room to finish; the frame count ends it.
            duration: Duration::from_secs_f64(seconds * 2.0 + 1.0),
            max_frames: Some(frames.len() as u64),
            rate: Some(rate),
        },
    )?;
    std::thread::sleep(drain);
    Ok(Coverage {
        sampled: sent.frames,
        answered: lab.counter.advertisements()? - before,
    })
}

/// Random addresses of the allocations, at a pace every design keeps up with.
pub fn coverage(lab: &mut Lab, plan: &Plan) -> anyhow::Result<Coverage> {
    let frames = random_targets(lab, plan.coverage_samples as usize, 2);
    let drain = plan.drain_for(lab.design);
    paced(lab, &frames, plan.coverage_rate, drain)
}

/// Every address of every allocation once (None when there are too many, or
/// for the kernel proxy, whose answer rate would make it take minutes).
pub fn sweep(lab: &mut Lab, plan: &Plan) -> anyhow::Result<Option<Coverage>> {
    let per = lab
        .allocations
        .first()
        .map_or(0u128, |n| 1u128 << (128 - u32::from(n.prefix_len())));
    let total = per.saturating_mul(lab.allocations.len() as u128);
    if lab.design == Design::KernelProxy || total == 0 || total > plan.sweep_max {
        return Ok(None);
    }
    let mut frames = Vec::with_capacity(total as usize);
    for net in &lab.allocations {
        for i in 0..per {
            frames.push(Ns::multicast(host(*net, i)).frame());
        }
    }
    let drain = plan.drain_for(lab.design);
    paced(lab, &frames, plan.sweep_rate, drain).map(Some)
}

/// Everything measured in one design's link lab.
#[derive(Clone, Debug)]
pub struct DesignRun {
    pub design: Design,
    /// From an empty lab to answering for all the allocations.
    pub setup_seconds: f64,
    pub latency: Vec<latency::Series>,
    pub rate: Rate,
    pub coverage: Coverage,
    pub sweep: Option<Coverage>,
}

/// Parts 2 and 3 (and the coverage of part 4), design after design, on the
/// same allocations and the same traffic.
pub fn run(plan: &Plan, latency_plan: &latency::Plan, size: u8) -> anyhow::Result<Vec<DesignRun>> {
    let nets: Vec<_> = (0..plan.allocations)
        .map(|i| allocation(i as u64, size))
        .collect();
    let check = nets.last().map(|n| host(*n, 1)).context("no allocations")?;
    let mut out = Vec::new();
    for design in Design::ALL {
        let mut lab = Lab::new(design)?;
        let setup_seconds = lab.provision(&nets)?.as_secs_f64();
        lab.wait_answering(check, Duration::from_secs(10))?;
        // Quietest first: latency, then the paced runs, then the flood.
        let latency = latency::run(&mut lab, latency_plan)?;
        let coverage = coverage(&mut lab, plan)?;
        let sweep = sweep(&mut lab, plan)?;
        let rate = flood(&mut lab, plan)?;
        eprintln!(
            "  link: {}: {:.0} answered/s of {:.0} sent/s",
            design.name(),
            rate.answered_per_second(),
            rate.sent.rate()
        );
        out.push(DesignRun {
            design,
            setup_seconds,
            latency,
            rate,
            coverage,
            sweep,
        });
    }
    Ok(out)
}
