//! The `Policy` seam: one small trait, thaw's policies and the reference ones behind it,
//! and the table that builds any of them by name from `KEY=VALUE` parameters.

mod beta9;
mod hpa;
mod idle_histogram;
mod keda;
mod keep_warm;
mod knative;
mod params;
mod queueing;
mod ray;
mod stabilize;
mod thaw;
mod window;

pub use idle_histogram::{IdleHistogram, KeepWarmPlan};
pub use params::{ParamSpec, Params, Resolved};
pub use queueing::{erlang_c, replicas_for_latency, wait_quantile};
pub use thaw::{ThawDepth, ThawLatency};

use crate::{Decision, ParamError, Snapshot};

/// A scaling policy: a pure function of the sensors and its own state. Time comes in the
/// [`Snapshot`], never from a clock of its own, so every rule can be tested step by step.
pub trait Policy: Send + std::fmt::Debug {
    /// The policy's name, as `build_policy` takes it.
    fn name(&self) -> &'static str;
    /// Seconds between two regular decisions.
    fn period(&self) -> f64;
    /// Whether new work arriving while there are no replicas wakes the policy at once
    /// (an activator poke, a keyspace notification) rather than at its next tick.
    fn wakes_on_work_at_zero(&self) -> bool;
    /// The replica count wanted now.
    fn decide(&mut self, sensors: &Snapshot) -> Decision;
    /// What the policy has learned that should outlive the process (thaw's idle-time
    /// histogram), as JSON; `None` when there is nothing.
    fn saved_state(&self) -> Option<serde_json::Value> {
        None
    }
    /// Takes back what [`Policy::saved_state`] gave; state that does not fit (another
    /// version, other parameters) is ignored and learning starts again. Whether it was
    /// taken.
    fn restore_state(&mut self, _state: &serde_json::Value) -> bool {
        false
    }
}

/// Every policy `build_policy` knows, thaw's first.
pub const POLICY_NAMES: &[&str] = &[
    "thaw",
    "thaw-depth",
    "knative",
    "hpa",
    "keda",
    "ray-serve",
    "beta9",
];

/// What every policy is told about the deployment it scales.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Deployment {
    /// Tasks one replica works on at once.
    pub concurrency: u32,
    /// The most replicas the node (or the operator) allows.
    pub max_replicas: u32,
}

/// Builds the policy called `name` with `params` (unknown keys and bad values are errors).
pub fn build_policy(
    name: &str,
    params: &Params,
    deployment: Deployment,
) -> Result<Box<dyn Policy>, ParamError> {
    let policy: Box<dyn Policy> = match name {
        "thaw" => Box::new(ThawLatency::new(
            params.resolve(name, thaw::LATENCY_PARAMS)?,
            deployment,
        )?),
        "thaw-depth" => Box::new(ThawDepth::new(
            params.resolve(name, thaw::DEPTH_PARAMS)?,
            deployment,
        )?),
        "knative" => Box::new(knative::Knative::new(
            params.resolve(name, knative::PARAMS)?,
            deployment,
        )),
        "hpa" => Box::new(hpa::Hpa::new(
            params.resolve(name, hpa::PARAMS)?,
            deployment,
        )),
        "keda" => Box::new(keda::Keda::new(
            params.resolve(name, keda::PARAMS)?,
            deployment,
        )),
        "ray-serve" => Box::new(ray::RayServe::new(
            params.resolve(name, ray::PARAMS)?,
            deployment,
        )),
        "beta9" => Box::new(beta9::Beta9::new(
            params.resolve(name, beta9::PARAMS)?,
            deployment,
        )),
        _ => {
            return Err(ParamError::UnknownPolicy {
                name: name.to_owned(),
                known: POLICY_NAMES.join(", "),
            })
        }
    };
    Ok(policy)
}

/// The parameter table of the policy called `name`, for documentation and `--help`.
#[must_use]
pub fn param_specs(name: &str) -> Option<&'static [ParamSpec]> {
    Some(match name {
        "thaw" => thaw::LATENCY_PARAMS,
        "thaw-depth" => thaw::DEPTH_PARAMS,
        "knative" => knative::PARAMS,
        "hpa" => hpa::PARAMS,
        "keda" => keda::PARAMS,
        "ray-serve" => ray::PARAMS,
        "beta9" => beta9::PARAMS,
        _ => return None,
    })
}

/// `ceil(a / b)` for non-negative reals, as a replica count (saturating; 0 when `b` is 0).
pub(crate) fn ceil_div(a: f64, b: f64) -> u32 {
    if b <= 0.0 || a <= 0.0 || !a.is_finite() {
        return 0;
    }
    let x = (a / b - 1e-9).ceil();
    if x >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        // In range and non-negative: checked just above.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n = x as u32;
        n
    }
}

/// A count as a float (exact below 2^53; counts of tasks and milliseconds stay far below).
pub fn f(n: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let x = n as f64;
    x
}

#[cfg(test)]
mod thaw_tests;

/// Snapshots the policies' tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::{ReplicaState, ReplicaView, Snapshot};

    /// `n` ready replicas, each working on one task.
    pub(crate) fn busy(n: usize) -> Vec<ReplicaView> {
        let r = ReplicaView {
            state: ReplicaState::Ready,
            active: 1,
            idle_since: None,
        };
        vec![r; n]
    }

    /// A snapshot after `now` seconds of constant load `load` on `ready` busy replicas.
    pub(crate) fn steady(now: f64, load: f64, ready: usize) -> Snapshot {
        Snapshot {
            now,
            load_integral: load * now,
            replicas: busy(ready),
            ..Snapshot::default()
        }
    }
}
