//! The Kubernetes HPA (`pkg/controller/podautoscaler`): every 15 s, on an external
//! metric with an AverageValue target, `desired = ceil(total / target)` unless the ratio
//! is within the 10% tolerance; scale-up limited to `max(current + 4, 2 × current)` per
//! period, scale-down to the largest recommendation of the last 300 s; never below 1.
//! The metric here is the tasks waiting or in flight, the target the replica's concurrency.

use super::stabilize::Recommendations;
use super::{ceil_div, f, Deployment, ParamSpec, Resolved};
use crate::{Decision, Snapshot};

pub(super) const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        key: "target",
        default: 0.0,
        min: 0.0,
        doc: "tasks per replica (AverageValue); 0 = the replica's concurrency",
    },
    ParamSpec {
        key: "tolerance",
        default: 0.1,
        min: 0.0,
        doc: "no change while |ratio - 1| is within this",
    },
    ParamSpec {
        key: "downscale_stabilization",
        default: 300.0,
        min: 0.0,
        doc: "seconds of recommendations scale-down takes the max of",
    },
    ParamSpec {
        key: "min_replicas",
        default: 1.0,
        min: 0.0,
        doc: "minReplicas (0 only with the HPAScaleToZero gate)",
    },
];

/// The replica calculation and behaviour shared by the HPA and the one KEDA creates.
#[derive(Debug)]
pub(super) struct HpaCore {
    target: f64,
    tolerance: f64,
    max: u32,
    down: Recommendations,
}

impl HpaCore {
    pub(super) fn new(target: f64, tolerance: f64, down_window: f64, max: u32) -> Self {
        HpaCore {
            target,
            tolerance,
            max,
            down: Recommendations::new(down_window),
        }
    }

    /// One sync: the metric's total over `current` replicas (at least 1).
    pub(super) fn decide(&mut self, now: f64, total: f64, current: u32) -> u32 {
        let current = current.max(1);
        let ratio = total / (self.target * f64::from(current));
        let proposal = if (ratio - 1.0).abs() <= self.tolerance {
            current
        } else {
            ceil_div(total, self.target)
        };
        self.down.push(now, proposal);
        let desired = if proposal > current {
            // Behaviour defaults: Pods 4 / 15 s and Percent 100% / 15 s, select Max.
            proposal.min(current.saturating_add(4).max(current.saturating_mul(2)))
        } else {
            current.min(self.down.max(proposal))
        };
        desired.min(self.max)
    }
}

#[derive(Debug)]
pub(super) struct Hpa {
    core: HpaCore,
    min: u32,
}

impl Hpa {
    pub(super) fn new(p: Resolved, d: Deployment) -> Self {
        let target = p.get("target");
        let target = if target > 0.0 {
            target
        } else {
            f64::from(d.concurrency.max(1))
        };
        Hpa {
            core: HpaCore::new(
                target,
                p.get("tolerance"),
                p.get("downscale_stabilization"),
                d.max_replicas,
            ),
            min: p.count("min_replicas"),
        }
    }
}

impl super::Policy for Hpa {
    fn name(&self) -> &'static str {
        "hpa"
    }

    fn period(&self) -> f64 {
        15.0
    }

    fn wakes_on_work_at_zero(&self) -> bool {
        false
    }

    fn decide(&mut self, s: &Snapshot) -> Decision {
        let current = s.current();
        if current == 0 && self.min == 0 && s.load() == 0 {
            return Decision::new(0, "scaled to zero");
        }
        let desired = self.core.decide(s.now, f(s.load()), current).max(self.min);
        Decision::new(desired, "hpa")
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::busy;
    use super::super::{build_policy, Params, Policy};
    use super::*;

    fn with(n: usize, now: f64, load: u64) -> Snapshot {
        Snapshot {
            now,
            in_flight: load,
            replicas: busy(n),
            ..Snapshot::default()
        }
    }

    fn hpa() -> Box<dyn Policy> {
        build_policy(
            "hpa",
            &Params::new(),
            Deployment {
                concurrency: 2,
                max_replicas: 100,
            },
        )
        .unwrap()
    }

    #[test]
    fn tolerance_scale_up_limit_and_minimum_of_one() {
        let mut p = hpa();
        assert_eq!(p.decide(&with(10, 0.0, 21)).desired, 10, "within 10%");
        assert_eq!(p.decide(&with(10, 15.0, 100)).desired, 20, "at most double");
        assert_eq!(p.decide(&with(1, 30.0, 40)).desired, 5, "or four more");
        assert_eq!(p.decide(&with(0, 45.0, 0)).desired, 1, "never below 1");
    }

    #[test]
    fn scale_down_takes_the_max_of_the_last_300_s() {
        let mut p = hpa();
        assert_eq!(p.decide(&with(10, 0.0, 20)).desired, 10);
        assert_eq!(
            p.decide(&with(10, 15.0, 2)).desired,
            10,
            "10 still in window"
        );
        assert_eq!(p.decide(&with(10, 299.0, 2)).desired, 10);
        assert_eq!(p.decide(&with(10, 301.0, 2)).desired, 1);
    }
}
