//! A deterministic discrete-event simulator: it replays a trace through a policy with
//! replicas that take the cold start to become ready, serve up to their concurrency from
//! one FIFO queue, and drain before they stop. Same trace, same policy, same report, to
//! the byte: events are ordered by time and then by the order they were scheduled.

mod engine;
mod report;

pub use report::{Comparison, Report, Sample};

use crate::policy::{build_policy, Deployment, Params};
use crate::trace::Trace;
use crate::ParamError;

/// How the simulated deployment behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    /// Seconds from the decision to start a replica to its readiness.
    pub cold_start: f64,
    /// Tasks one replica serves at once.
    pub concurrency: u32,
    /// The most replicas.
    pub max_replicas: u32,
    /// The latency (waiting plus service) a request should stay within, seconds.
    pub slo: f64,
    /// A request that waits longer than this is dropped, seconds.
    pub timeout: f64,
    /// Seconds simulated after the last arrival (idle replicas still cost).
    pub tail: f64,
    /// Seconds between two timeline samples.
    pub sample_every: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            cold_start: 15.0,
            concurrency: 4,
            max_replicas: 20,
            slo: 5.0,
            timeout: 300.0,
            tail: 300.0,
            sample_every: 10.0,
        }
    }
}

impl SimConfig {
    /// The deployment as the policies see it.
    #[must_use]
    pub fn deployment(&self) -> Deployment {
        Deployment {
            concurrency: self.concurrency,
            max_replicas: self.max_replicas,
        }
    }
}

/// Replays `trace` through the policy `name` built with `params` (a fresh one per tenant).
pub fn simulate(
    trace: &Trace,
    name: &str,
    params: &Params,
    cfg: &SimConfig,
) -> Result<Report, ParamError> {
    let mut report = Report::empty(name);
    for requests in &trace.tenants {
        let mut policy = build_policy(name, params, cfg.deployment())?;
        report.absorb(engine::run(requests, policy.as_mut(), cfg));
    }
    report.finish();
    Ok(report)
}

/// Replays `trace` through every policy in `names`, with `params` shared (keys a policy
/// does not take are skipped).
pub fn compare(
    trace: &Trace,
    names: &[&str],
    params: &Params,
    cfg: &SimConfig,
) -> Result<Comparison, ParamError> {
    let shared = params.clone().lenient();
    let mut policies = Vec::new();
    for name in names {
        policies.push(simulate(trace, name, &shared, cfg)?);
    }
    Ok(Comparison {
        trace: trace.name.clone(),
        cold_start_s: cfg.cold_start,
        slo_s: cfg.slo,
        policies,
    })
}
