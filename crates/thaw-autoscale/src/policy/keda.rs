//! KEDA (`8b4f083c`) with its Redis list scaler: every `polling_interval` (30 s) the
//! operator scales 0 → 1 when the list is active (`LLEN > activation`), and 1 → 0 once it
//! has been inactive for `cooldown` (300 s); between 1 and N the HPA it creates scales on
//! `LLEN` with an average target of `list_length` per replica (default 5), its 15 s
//! period, 10% tolerance and 300 s scale-down stabilisation. LLEN is the waiting list
//! only: tasks being worked on are in processing lists the scaler does not read.

use super::hpa::HpaCore;
use super::{f, Deployment, ParamSpec, Resolved};
use crate::{Decision, Snapshot};

pub(super) const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        key: "polling_interval",
        default: 30.0,
        min: 0.1,
        doc: "seconds between activity checks",
    },
    ParamSpec {
        key: "cooldown",
        default: 300.0,
        min: 0.0,
        doc: "seconds inactive before 1 -> 0",
    },
    ParamSpec {
        key: "list_length",
        default: 5.0,
        min: 0.001,
        doc: "waiting tasks per replica (HPA AverageValue target)",
    },
    ParamSpec {
        key: "activation",
        default: 0.0,
        min: 0.0,
        doc: "list length above which the scaler is active",
    },
    ParamSpec {
        key: "min_replicas",
        default: 0.0,
        min: 0.0,
        doc: "minReplicaCount",
    },
];

#[derive(Debug)]
pub(super) struct Keda {
    polling: f64,
    cooldown: f64,
    activation: f64,
    min: u32,
    last_active: Option<f64>,
    next_poll: f64,
    hpa: HpaCore,
}

impl Keda {
    pub(super) fn new(p: Resolved, d: Deployment) -> Self {
        Keda {
            polling: p.get("polling_interval"),
            cooldown: p.get("cooldown"),
            activation: p.get("activation"),
            min: p.count("min_replicas"),
            last_active: None,
            next_poll: 0.0,
            hpa: HpaCore::new(p.get("list_length"), 0.1, 300.0, d.max_replicas),
        }
    }
}

impl super::Policy for Keda {
    fn name(&self) -> &'static str {
        "keda"
    }

    fn period(&self) -> f64 {
        // The HPA's sync period; the operator's poll runs on its own interval below.
        15.0
    }

    fn wakes_on_work_at_zero(&self) -> bool {
        false
    }

    fn decide(&mut self, s: &Snapshot) -> Decision {
        let current = s.current();
        if s.now + 1e-9 >= self.next_poll {
            self.next_poll = s.now + self.polling;
            if f(s.queued) > self.activation {
                self.last_active = Some(s.now);
                if current == 0 {
                    return Decision::new(self.min.max(1), "activated");
                }
            } else if current > 0 && self.min == 0 {
                let since = self.last_active.unwrap_or(f64::NEG_INFINITY);
                if since + self.cooldown < s.now {
                    return Decision::new(0, "cooldown over");
                }
            }
        }
        if current == 0 {
            return Decision::new(0, "inactive");
        }
        let desired = self
            .hpa
            .decide(s.now, f(s.queued), current)
            .max(self.min.max(1));
        Decision::new(desired, "hpa on list length")
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::busy as ready;
    use super::super::{build_policy, Params, Policy};
    use super::*;

    fn keda() -> Box<dyn Policy> {
        build_policy(
            "keda",
            &Params::new(),
            Deployment {
                concurrency: 1,
                max_replicas: 50,
            },
        )
        .unwrap()
    }

    #[test]
    fn activates_only_on_its_poll_and_cools_down_after_300_s() {
        let mut p = keda();
        let idle = Snapshot {
            now: 0.0,
            ..Snapshot::default()
        };
        assert_eq!(p.decide(&idle).desired, 0);
        // Work arrives at 1 s; the next poll is at 30 s.
        let busy = Snapshot {
            now: 15.0,
            queued: 3,
            ..Snapshot::default()
        };
        assert_eq!(p.decide(&busy).desired, 0, "between polls");
        let busy = Snapshot { now: 30.0, ..busy };
        assert_eq!(p.decide(&busy).desired, 1, "activated");
        // Drained at 45 s; still 1 until 300 s after the last active poll.
        let drained = Snapshot {
            now: 300.0,
            replicas: ready(1),
            ..Snapshot::default()
        };
        assert_eq!(p.decide(&drained).desired, 1);
        let drained = Snapshot {
            now: 331.0,
            ..drained
        };
        assert_eq!(p.decide(&drained).desired, 0);
    }

    #[test]
    fn hpa_scales_on_waiting_tasks_only() {
        let mut p = keda();
        let s = Snapshot {
            now: 0.0,
            queued: 1,
            ..Snapshot::default()
        };
        p.decide(&s);
        // 12 tasks working, 20 waiting, 2 replicas: ceil(20 / 5) = 4.
        let s = Snapshot {
            now: 15.0,
            queued: 20,
            in_flight: 12,
            replicas: ready(2),
            ..Snapshot::default()
        };
        assert_eq!(p.decide(&s).desired, 4);
    }
}
