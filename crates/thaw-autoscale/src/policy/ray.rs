//! Ray Serve's default autoscaling policy (`autoscaling_policy.py`): the average of
//! ongoing plus queued requests over `look_back_period_s` (30 s), `desired =
//! ceil(running × (1 + (error − 1) × smoothing))` with `error = total / (target ×
//! running)`, applied only after the wish has held for `upscale_delay_s` (30 s) or
//! `downscale_delay_s` (600 s); from zero it starts one replica at once. Ray's controller
//! ticks every 0.1 s and counts ticks; here the delays are measured in time, ticking once
//! a second (replicas push their metrics every 10 s anyway).

use super::window::{Counter, History};
use super::{ceil_div, Deployment, ParamSpec, Resolved};
use crate::{Decision, Snapshot};

pub(super) const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        key: "target_ongoing_requests",
        default: 0.0,
        min: 0.0,
        doc:
            "per replica; 0 = 2/5 of the replica's concurrency (Ray's 2 of max_ongoing_requests 5)",
    },
    ParamSpec {
        key: "min_replicas",
        default: 1.0,
        min: 0.0,
        doc: "min_replicas",
    },
    ParamSpec {
        key: "look_back_period",
        default: 30.0,
        min: 0.1,
        doc: "seconds averaged",
    },
    ParamSpec {
        key: "upscale_delay",
        default: 30.0,
        min: 0.0,
        doc: "seconds an upscale wish must hold",
    },
    ParamSpec {
        key: "downscale_delay",
        default: 600.0,
        min: 0.0,
        doc: "seconds a downscale wish must hold",
    },
    ParamSpec {
        key: "smoothing_factor",
        default: 1.0,
        min: 0.01,
        doc: "multiplies the error",
    },
];

#[derive(Debug)]
pub(super) struct RayServe {
    target: f64,
    min: u32,
    max: u32,
    look_back: f64,
    up_delay: f64,
    down_delay: f64,
    smoothing: f64,
    history: History,
    /// The direction wished for and since when.
    wish: Option<(std::cmp::Ordering, f64)>,
}

impl RayServe {
    pub(super) fn new(p: Resolved, d: Deployment) -> Self {
        let target = p.get("target_ongoing_requests");
        let target = if target > 0.0 {
            target
        } else {
            (0.4 * f64::from(d.concurrency.max(1))).max(1.0)
        };
        RayServe {
            target,
            min: p.count("min_replicas"),
            max: d.max_replicas,
            look_back: p.get("look_back_period"),
            up_delay: p.get("upscale_delay"),
            down_delay: p.get("downscale_delay"),
            smoothing: p.get("smoothing_factor"),
            history: History::new(p.get("look_back_period")),
            wish: None,
        }
    }

    fn formula(&self, total: f64, running: u32) -> u32 {
        let running_f = f64::from(running);
        let error = total / (self.target * running_f);
        let mut desired = ceil_div(running_f * (1.0 + (error - 1.0) * self.smoothing), 1.0);
        if ceil_div(running_f * error, 1.0) < running && desired == running {
            desired -= 1;
        }
        desired.clamp(self.min, self.max.max(self.min))
    }
}

impl super::Policy for RayServe {
    fn name(&self) -> &'static str {
        "ray-serve"
    }

    fn period(&self) -> f64 {
        1.0
    }

    fn wakes_on_work_at_zero(&self) -> bool {
        true
    }

    fn decide(&mut self, s: &Snapshot) -> Decision {
        self.history.record(s);
        let running = s.current();
        if running < self.min {
            return Decision::new(self.min, "min_replicas");
        }
        if running == 0 {
            self.wish = None;
            let desired = u32::from(s.load() > 0);
            return Decision::new(desired, "from zero, no delay");
        }
        let total = self.history.rate(Counter::Load, self.look_back);
        let desired = self.formula(total, running);
        let direction = desired.cmp(&running);
        if direction == std::cmp::Ordering::Equal {
            self.wish = None;
            return Decision::new(running, "steady");
        }
        let since = match self.wish {
            Some((d, t)) if d == direction => t,
            _ => {
                self.wish = Some((direction, s.now));
                s.now
            }
        };
        let delay = if direction.is_gt() {
            self.up_delay
        } else {
            self.down_delay
        };
        if s.now - since >= delay {
            self.wish = None;
            Decision::new(desired, "delay held")
        } else {
            Decision::new(running, "waiting out the delay")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::steady;
    use super::super::{build_policy, Params, Policy};
    use super::*;

    fn ray(min: f64) -> Box<dyn Policy> {
        let mut params = Params::new();
        params.set("min_replicas", min);
        build_policy(
            "ray-serve",
            &params,
            Deployment {
                concurrency: 5,
                max_replicas: 100,
            },
        )
        .unwrap()
    }

    #[test]
    fn upscale_waits_30_s_and_downscale_600_s() {
        let mut p = ray(1.0);
        // 8 ongoing over 1 replica with target 2: 4 replicas, after 30 s of wishing.
        assert_eq!(p.decide(&steady(100.0, 8.0, 1)).desired, 1);
        assert_eq!(p.decide(&steady(129.0, 8.0, 1)).desired, 1);
        assert_eq!(p.decide(&steady(130.0, 8.0, 1)).desired, 4);
        // Load gone: 4 → 1 only after 600 s.
        let mut s = steady(130.0, 8.0, 4);
        s.now = 200.0;
        assert_eq!(p.decide(&s).desired, 4);
        s.now = 799.0;
        assert_eq!(p.decide(&s).desired, 4);
        s.now = 801.0;
        assert_eq!(p.decide(&s).desired, 1);
    }

    #[test]
    fn from_zero_without_delay_and_min_replicas_held() {
        let mut p = ray(0.0);
        assert_eq!(p.decide(&Snapshot::default()).desired, 0);
        let s = Snapshot {
            now: 5.0,
            queued: 1,
            ..Snapshot::default()
        };
        assert_eq!(p.decide(&s).desired, 1);
        assert_eq!(ray(1.0).decide(&Snapshot::default()).desired, 1);
    }
}
