//! Knative Serving's KPA (`98e5ef90`, `pkg/autoscaler/scaling/autoscaler.go`): every 2 s,
//! the average concurrency over a 60 s stable window and a 6 s panic window, divided by
//! the target (`container_concurrency × 0.7`); panic when the panic-window demand is at
//! least twice the ready replicas, and while panicking never scale down; scale-down at
//! most halves per step; a decision of 0 takes effect once the revision has been active
//! for a stable window and 0 has been wanted for the 30 s grace period. The activator
//! counts the requests it holds, and pokes the scaler when one arrives at zero.

use super::window::{Counter, History};
use super::{ceil_div, Deployment, ParamSpec, Resolved};
use crate::{Decision, Snapshot};

pub(super) const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        key: "container_concurrency",
        default: 0.0,
        min: 0.0,
        doc: "requests per replica; 0 = the replica's concurrency",
    },
    ParamSpec {
        key: "target_utilization",
        default: 0.7,
        min: 0.01,
        doc: "fraction of container_concurrency to aim for",
    },
    ParamSpec {
        key: "stable_window",
        default: 60.0,
        min: 6.0,
        doc: "seconds",
    },
    ParamSpec {
        key: "panic_window_percentage",
        default: 10.0,
        min: 1.0,
        doc: "panic window as a percentage of the stable one",
    },
    ParamSpec {
        key: "panic_threshold",
        default: 2.0,
        min: 1.0,
        doc: "panic when panic demand / ready reaches this",
    },
    ParamSpec {
        key: "max_scale_up_rate",
        default: 1000.0,
        min: 1.0,
        doc: "at most this many times the ready replicas",
    },
    ParamSpec {
        key: "max_scale_down_rate",
        default: 2.0,
        min: 1.0,
        doc: "at least ready / this",
    },
    ParamSpec {
        key: "scale_to_zero_grace",
        default: 30.0,
        min: 0.0,
        doc: "seconds 0 must be wanted before it is applied",
    },
];

#[derive(Debug)]
pub(super) struct Knative {
    target: f64,
    stable_window: f64,
    panic_window: f64,
    panic_threshold: f64,
    max_up: f64,
    max_down: f64,
    grace: f64,
    max: u32,
    history: History,
    panic_since: Option<f64>,
    max_panic_pods: u32,
    zero_wanted_since: Option<f64>,
    active_since: Option<f64>,
}

impl Knative {
    pub(super) fn new(p: Resolved, d: Deployment) -> Self {
        let cc = p.get("container_concurrency");
        let cc = if cc > 0.0 {
            cc
        } else {
            f64::from(d.concurrency.max(1))
        };
        let stable = p.get("stable_window");
        Knative {
            target: (cc * p.get("target_utilization")).max(0.01),
            stable_window: stable,
            panic_window: (stable * p.get("panic_window_percentage") / 100.0)
                .round()
                .max(1.0),
            panic_threshold: p.get("panic_threshold"),
            max_up: p.get("max_scale_up_rate"),
            max_down: p.get("max_scale_down_rate"),
            grace: p.get("scale_to_zero_grace"),
            max: d.max_replicas,
            history: History::new(stable),
            panic_since: None,
            max_panic_pods: 0,
            zero_wanted_since: None,
            active_since: None,
        }
    }

    /// The KPA's decision before the scale-to-zero rules.
    fn want(&mut self, s: &Snapshot) -> (u32, &'static str) {
        let ready = f64::from(s.ready().max(1));
        let stable_avg = self.history.rate(Counter::Load, self.stable_window);
        let panic_avg = self.history.rate(Counter::Load, self.panic_window);
        let max_up = ceil_div(self.max_up * ready, 1.0);
        // ready / rate, rounded down: a positive float below u32::MAX.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let max_down = (ready / self.max_down).floor() as u32;
        let dspc = ceil_div(stable_avg, self.target);
        let dppc = ceil_div(panic_avg, self.target);
        let stable = dspc.clamp(max_down, max_up.max(max_down));
        let panic = dppc.clamp(max_down, max_up.max(max_down));
        let over = f64::from(dppc) / ready >= self.panic_threshold;
        if over {
            self.panic_since = Some(s.now);
        } else if self
            .panic_since
            .is_some_and(|t| t + self.stable_window < s.now)
        {
            self.panic_since = None;
            self.max_panic_pods = 0;
        }
        if self.panic_since.is_some() {
            self.max_panic_pods = self.max_panic_pods.max(stable.max(panic));
            (self.max_panic_pods, "panic")
        } else {
            (stable, "stable window")
        }
    }
}

impl super::Policy for Knative {
    fn name(&self) -> &'static str {
        "knative"
    }

    fn period(&self) -> f64 {
        2.0
    }

    fn wakes_on_work_at_zero(&self) -> bool {
        true
    }

    fn decide(&mut self, s: &Snapshot) -> Decision {
        self.history.record(s);
        let (mut desired, mut reason) = self.want(s);
        if s.ready() == 0 && s.load() > 0 {
            // The activator's stat: the requests it holds count at once.
            desired = desired.max(1);
            reason = "activator";
        }
        let current = s.current();
        if current > 0 && self.active_since.is_none() {
            self.active_since = Some(s.now);
        }
        if desired > 0 {
            self.zero_wanted_since = None;
            return Decision::new(desired.min(self.max), reason);
        }
        // The revision goes inactive once it has been active for a stable window; its
        // pods go after the grace period from then.
        let active_long_enough = self
            .active_since
            .is_none_or(|t| s.now - t >= self.stable_window);
        if current > 0 && !active_long_enough {
            return Decision::new(1, "active for less than a stable window");
        }
        let since = *self.zero_wanted_since.get_or_insert(s.now);
        if current > 0 && s.now - since < self.grace {
            return Decision::new(1, "scale-to-zero grace");
        }
        self.active_since = None;
        Decision::new(0, "scaled to zero")
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::steady;
    use super::super::{build_policy, Params, Policy};
    use super::*;

    fn kpa() -> Box<dyn Policy> {
        build_policy(
            "knative",
            &Params::new(),
            Deployment {
                concurrency: 10,
                max_replicas: 1000,
            },
        )
        .unwrap()
    }

    #[test]
    fn stable_mode_divides_the_average_by_seventy_percent() {
        let mut p = kpa();
        // 14 concurrent requests / (10 × 0.7) = 2 replicas.
        assert_eq!(p.decide(&steady(60.0, 14.0, 2)).desired, 2);
    }

    #[test]
    fn panics_at_twice_the_ready_replicas_and_never_scales_down_while_panicking() {
        let mut p = kpa();
        let mut s = steady(60.0, 7.0, 1);
        assert_eq!(p.decide(&s).desired, 1);
        // A burst: 140 concurrent over the last 6 s, so the panic window wants 20 ≥ 2 × 1.
        s.now = 66.0;
        s.load_integral += 140.0 * 6.0;
        let d = p.decide(&s);
        assert_eq!((d.desired, d.reason), (20, "panic"));
        // Load falls back; still panicking, so no scale-down before 60 s without panic.
        s.now = 80.0;
        s.replicas = steady(0.0, 0.0, 20).replicas;
        let d = p.decide(&s);
        assert_eq!((d.desired, d.reason), (20, "panic"));
        s.now = 127.0;
        let d = p.decide(&s);
        assert_eq!(d.reason, "stable window");
        assert!(d.desired >= 10, "halving at most: {}", d.desired);
    }

    #[test]
    fn zero_after_grace_and_activator_wakes_it() {
        let mut p = kpa();
        let mut s = steady(0.0, 0.0, 1);
        s.now = 10.0;
        assert_eq!(
            p.decide(&s).desired,
            1,
            "active for less than the stable window"
        );
        s.now = 70.0;
        assert_eq!(p.decide(&s).desired, 1, "grace starts");
        s.now = 101.0;
        assert_eq!(p.decide(&s).desired, 0);
        let woken = Snapshot {
            now: 200.0,
            queued: 1,
            ..Snapshot::default()
        };
        assert_eq!(p.decide(&woken).desired, 1);
        assert!(p.wakes_on_work_at_zero());
    }
}
