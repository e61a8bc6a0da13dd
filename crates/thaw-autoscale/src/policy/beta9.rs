//! beta9 (Beam) as of `0b79dfeb`: every second, with no smoothing, `desired = 0` when
//! nothing is in flight, else `min(ceil(in_flight / tasks_per_container), max)`; a
//! replica is stoppable only once idle for `keep_warm` seconds after its last task
//! (endpoints: 180 s), so that timer, not the formula, decides when it reaches zero.

use super::{ceil_div, f, Deployment, ParamSpec, Resolved};
use crate::{Decision, Snapshot};

pub(super) const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        key: "keep_warm",
        default: 180.0,
        min: 0.0,
        doc: "seconds a replica stays after its last task (endpoint default)",
    },
    ParamSpec {
        key: "tasks_per_container",
        default: 0.0,
        min: 0.0,
        doc: "tasks per replica; 0 = the replica's concurrency",
    },
];

#[derive(Debug)]
pub(super) struct Beta9 {
    keep_warm: f64,
    tasks_per_container: f64,
    max: u32,
}

impl Beta9 {
    pub(super) fn new(p: Resolved, d: Deployment) -> Self {
        let tpc = p.get("tasks_per_container");
        Beta9 {
            keep_warm: p.get("keep_warm"),
            tasks_per_container: if tpc > 0.0 {
                tpc
            } else {
                f64::from(d.concurrency.max(1))
            },
            max: d.max_replicas,
        }
    }
}

impl super::Policy for Beta9 {
    fn name(&self) -> &'static str {
        "beta9"
    }

    fn period(&self) -> f64 {
        1.0
    }

    fn wakes_on_work_at_zero(&self) -> bool {
        // The loop also runs on Trigger(), which only pods call: new work waits a tick.
        false
    }

    fn decide(&mut self, s: &Snapshot) -> Decision {
        let in_flight = s.load();
        let wanted = if in_flight == 0 {
            0
        } else {
            ceil_div(f(in_flight), self.tasks_per_container).min(self.max)
        };
        let current = s.current();
        if wanted >= current {
            return Decision::new(wanted, "queue depth");
        }
        // Only replicas past their keep-warm lock can be stopped.
        let stoppable = s.idle_for_at_least(self.keep_warm);
        Decision::new(wanted.max(current - stoppable.min(current)), "keep-warm")
    }
}

#[cfg(test)]
mod tests {
    use super::super::{build_policy, Params};
    use super::*;
    use crate::{ReplicaState, ReplicaView};

    fn replica(active: u32, idle_since: Option<f64>) -> ReplicaView {
        ReplicaView {
            state: ReplicaState::Ready,
            active,
            idle_since,
        }
    }

    fn policy() -> Box<dyn super::super::Policy> {
        let d = Deployment {
            concurrency: 2,
            max_replicas: 3,
        };
        build_policy("beta9", &Params::new(), d).unwrap()
    }

    #[test]
    fn queue_depth_formula_clamped_to_max() {
        let mut p = policy();
        let s = Snapshot {
            now: 1.0,
            queued: 3,
            in_flight: 0,
            ..Snapshot::default()
        };
        assert_eq!(p.decide(&s).desired, 2);
        let s = Snapshot { queued: 30, ..s };
        assert_eq!(p.decide(&s).desired, 3);
    }

    #[test]
    fn idle_replicas_stop_only_after_keep_warm() {
        let mut p = policy();
        let mut s = Snapshot {
            now: 100.0,
            replicas: vec![replica(0, Some(0.0)), replica(0, Some(50.0))],
            ..Snapshot::default()
        };
        assert_eq!(p.decide(&s).desired, 2, "both warm");
        s.now = 185.0;
        assert_eq!(p.decide(&s).desired, 1, "first past 180 s");
        s.now = 240.0;
        assert_eq!(p.decide(&s).desired, 0);
        assert_eq!(p.period(), 1.0);
        assert!(!p.wakes_on_work_at_zero());
    }
}
