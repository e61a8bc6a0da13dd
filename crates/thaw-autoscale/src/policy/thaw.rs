//! thaw's policies. `thaw-depth` is the queue-depth rule (`ceil(load / tasks_per_replica)`);
//! `thaw` (the latency policy) runs the fewest replicas whose wait at a percentile plus the
//! service time stays under `target_latency` (Erlang C over the smoothed arrival rate),
//! never fewer than the backlog needs to drain within the target, and knows the cold
//! start: it plans for the rate expected once a new replica would be ready, and does not
//! start replicas that would be ready only after the backlog they are for has drained.
//! Both keep a replica warm after the last task, for `keep_warm` or, once the idle-time
//! histogram of the deployment is confident, for its 99th percentile, letting go earlier
//! and pre-warming before the predicted next task when the gap is long; both stabilise
//! scale-down over `scale_down_delay` and remove at most half the replicas per step.

use super::keep_warm::{Idle, KeepWarm};
use super::stabilize::Recommendations;
use super::window::{Counter, History};
use super::{ceil_div, f, replicas_for_latency, Deployment, ParamSpec, Resolved};
use crate::{Decision, ParamError, Snapshot};

/// The latency policy's parameters; the first [`COMMON`] are the queue-depth policy's too.
pub(super) const LATENCY_PARAMS: &[ParamSpec] = &[
    ParamSpec { key: "min_replicas", default: 0.0, min: 0.0, doc: "replicas kept even when idle" },
    ParamSpec { key: "keep_warm", default: 60.0, min: 0.0, doc: "seconds a deployment keeps one replica after its last task, until its idle-time histogram is confident" },
    ParamSpec { key: "keep_warm_max", default: 600.0, min: 0.0, doc: "the longest keep-warm the histogram may choose, seconds" },
    ParamSpec { key: "predictive", default: 1.0, min: 0.0, doc: "1: keep warm and pre-warm from the idle-time histogram; 0: fixed keep_warm" },
    ParamSpec { key: "idle_bin", default: 1.0, min: 0.001, doc: "idle-time histogram bin, seconds" },
    ParamSpec { key: "idle_range", default: 3600.0, min: 1.0, doc: "idle-time histogram range, seconds (longer gaps are out of range)" },
    ParamSpec { key: "min_idle_samples", default: 3.0, min: 1.0, doc: "idle periods seen before the histogram is trusted" },
    ParamSpec { key: "scale_down_delay", default: 30.0, min: 0.0, doc: "seconds of recommendations scale-down takes the max of" },
    ParamSpec { key: "tasks_per_replica", default: 0.0, min: 0.0, doc: "queue depth per replica; 0 = the replica's concurrency" },
    ParamSpec { key: "target_latency", default: 5.0, min: 0.001, doc: "seconds a task may spend waiting plus being served, at `percentile`" },
    ParamSpec { key: "percentile", default: 0.95, min: 0.5, doc: "the percentile target_latency applies to (below 1)" },
    ParamSpec { key: "rate_window", default: 60.0, min: 1.0, doc: "seconds of arrivals the slow rate estimate averages" },
    ParamSpec { key: "burst_window", default: 0.0, min: 0.0, doc: "seconds of arrivals the fast rate estimate averages; 0 = target_latency" },
    ParamSpec { key: "burst_memory", default: 120.0, min: 0.0, doc: "seconds the peak fast rate is planned for when a cold start is longer than the latency target allows (a burst cannot be answered by starting replicas)" },
    ParamSpec { key: "lookahead", default: 1.0, min: 0.0, doc: "1: plan for the rate expected one cold start ahead (trend of the two windows)" },
    ParamSpec { key: "service_time", default: 1.0, min: 0.001, doc: "seconds per task assumed until one has been measured" },
];
const COMMON: usize = 9;
/// The queue-depth policy's parameters.
pub(super) const DEPTH_PARAMS: &[ParamSpec] = LATENCY_PARAMS.split_at(COMMON).0;

/// What both policies share: the keep-warm, stabilisation and clamping around a need.
#[derive(Debug)]
struct Shell {
    min: u32,
    max: u32,
    keep_warm: KeepWarm,
    down: Recommendations,
    /// The most replicas the current busy period has needed.
    busy_peak: u32,
    /// The most the last busy period needed: what a pre-warm brings back.
    last_peak: u32,
}

impl Shell {
    fn new(p: &Resolved, d: Deployment) -> Self {
        Shell {
            min: p.count("min_replicas"),
            max: d.max_replicas,
            keep_warm: KeepWarm::new(p),
            down: Recommendations::new(p.get("scale_down_delay")),
            busy_peak: 0,
            last_peak: 0,
        }
    }

    /// Turns the replicas the load needs into the decision.
    fn decide(&mut self, s: &Snapshot, need: u32, reason: &'static str) -> Decision {
        let current = s.current();
        self.down.push(s.now, need);
        let stabilised = if need >= current {
            need
        } else {
            // At most half of the replicas go per step, and only after the delay.
            let floor = current - current.div_ceil(2);
            self.down.max(need).min(current).max(floor).max(need)
        };
        let reason = if stabilised < current {
            "scale down"
        } else {
            reason
        };
        let advice = self.keep_warm.advice(s);
        if advice == Idle::Busy {
            self.busy_peak = self.busy_peak.max(need);
        } else if self.busy_peak > 0 {
            self.last_peak = std::mem::take(&mut self.busy_peak);
        }
        let mut decision = match advice {
            Idle::Busy => Decision::new(stabilised, reason),
            Idle::Keep { until, reason: why } => {
                let keep = stabilised.max(u32::from(current > 0));
                Decision {
                    desired: keep,
                    reason: if stabilised == 0 { why } else { reason },
                    wake_at: Some(until),
                }
            }
            Idle::Release { wake, reason } => Decision {
                desired: 0,
                reason,
                wake_at: wake,
            },
            Idle::Prewarm { until } => {
                let desired = stabilised.max(self.last_peak).max(1);
                Decision {
                    desired,
                    reason: "pre-warm before the predicted task",
                    wake_at: Some(until),
                }
            }
        };
        decision.desired = decision.desired.max(self.min).min(self.max);
        decision
    }
}

/// `thaw-depth`: replicas for the queue depth.
#[derive(Debug)]
pub struct ThawDepth {
    per_replica: f64,
    shell: Shell,
}

impl ThawDepth {
    pub(super) fn new(p: Resolved, d: Deployment) -> Result<Self, ParamError> {
        check_min_max(&p, d)?;
        let tpr = p.get("tasks_per_replica");
        Ok(ThawDepth {
            per_replica: if tpr > 0.0 {
                tpr
            } else {
                f64::from(d.concurrency.max(1))
            },
            shell: Shell::new(&p, d),
        })
    }
}

impl super::Policy for ThawDepth {
    fn name(&self) -> &'static str {
        "thaw-depth"
    }

    fn period(&self) -> f64 {
        1.0
    }

    fn wakes_on_work_at_zero(&self) -> bool {
        true
    }

    fn decide(&mut self, s: &Snapshot) -> Decision {
        self.shell.keep_warm.observe(s);
        let need = ceil_div(f(s.load()), self.per_replica);
        self.shell.decide(s, need, "queue depth")
    }

    fn saved_state(&self) -> Option<serde_json::Value> {
        self.shell.keep_warm.saved()
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> bool {
        self.shell.keep_warm.restore(state)
    }
}

/// `thaw`: replicas for a latency target, aware of the cold start.
#[derive(Debug)]
pub struct ThawLatency {
    target: f64,
    percentile: f64,
    rate_window: f64,
    burst_window: f64,
    burst_memory: f64,
    scale_down_delay: f64,
    peaks: Recommendations<f64>,
    lookahead: bool,
    assumed_service: f64,
    concurrency: u32,
    history: History,
    shell: Shell,
}

impl ThawLatency {
    pub(super) fn new(p: Resolved, d: Deployment) -> Result<Self, ParamError> {
        check_min_max(&p, d)?;
        let percentile = p.get("percentile");
        if percentile >= 1.0 {
            return Err(ParamError::BadValue {
                key: "percentile".into(),
                reason: format!("{percentile} must be below 1"),
            });
        }
        let burst_window = match p.get("burst_window") {
            w if w > 0.0 => w,
            _ => p.get("target_latency").max(1.0),
        };
        Ok(ThawLatency {
            target: p.get("target_latency"),
            percentile,
            rate_window: p.get("rate_window"),
            burst_window,
            burst_memory: p.get("burst_memory"),
            scale_down_delay: p.get("scale_down_delay"),
            peaks: Recommendations::new(p.get("burst_memory")),
            lookahead: p.flag("lookahead"),
            assumed_service: p.get("service_time"),
            concurrency: d.concurrency.max(1),
            history: History::new(p.get("rate_window").max(burst_window)),
            shell: Shell::new(&p, d),
        })
    }

    /// The arrival rate to plan for: the faster of the two windows; the fast one's peak
    /// over `burst_memory` when a cold start is too slow to answer a burst within the
    /// target (over the scale-down delay otherwise); and with lookahead the fast window's
    /// trend carried one cold start ahead (at most doubling it).
    fn planned_rate(&mut self, s: &Snapshot, service: f64) -> f64 {
        let slow = self.history.rate(Counter::Arrivals, self.rate_window);
        let fast = self.history.rate(Counter::Arrivals, self.burst_window);
        let too_slow = s.cold_start > (self.target - service).max(0.0);
        self.peaks.set_window(if too_slow {
            self.burst_memory
        } else {
            self.scale_down_delay
        });
        self.peaks.push(s.now, fast);
        let mut rate = slow.max(self.peaks.max(fast));
        if self.lookahead && fast > slow {
            let slope =
                (fast - slow) / ((self.rate_window - self.burst_window).abs() / 2.0).max(1.0);
            rate = rate.max((fast + slope * s.cold_start).min(2.0 * fast));
        }
        rate
    }

    /// The replicas the load needs, and why.
    fn need(&mut self, s: &Snapshot) -> (u32, &'static str) {
        let service = s.service_time.unwrap_or(self.assumed_service).max(1e-3);
        let per = self.concurrency;
        let rate = self.planned_rate(s, service);
        let for_rate = replicas_for_latency(
            rate,
            service,
            per,
            self.target,
            self.percentile,
            self.shell.max,
        );
        let for_backlog = ceil_div(f(s.queued) * service, f64::from(per) * self.target);
        let busy = ceil_div(f(s.in_flight), f64::from(per));
        let any = u32::from(s.load() > 0);
        let need = for_rate.max(for_backlog).max(busy).max(any);
        let current = s.current();
        if need <= current || current == 0 || for_rate > current {
            let why = if for_rate >= for_backlog {
                "latency target"
            } else {
                "backlog"
            };
            return (need, why);
        }
        // Only the backlog asks for more. If what runs now drains it before a new
        // replica could be ready, a new one would come too late to help.
        let capacity = f64::from(current) * f64::from(per) / service;
        let drain = f(s.queued) / (capacity - rate).max(1e-9);
        if rate < capacity && drain < s.cold_start {
            return (current, "backlog drains before a cold start");
        }
        (need, "backlog")
    }
}

impl super::Policy for ThawLatency {
    fn name(&self) -> &'static str {
        "thaw"
    }

    fn period(&self) -> f64 {
        1.0
    }

    fn wakes_on_work_at_zero(&self) -> bool {
        true
    }

    fn decide(&mut self, s: &Snapshot) -> Decision {
        self.history.record(s);
        self.shell.keep_warm.observe(s);
        let (need, reason) = self.need(s);
        self.shell.decide(s, need, reason)
    }

    fn saved_state(&self) -> Option<serde_json::Value> {
        self.shell.keep_warm.saved()
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> bool {
        self.shell.keep_warm.restore(state)
    }
}

fn check_min_max(p: &Resolved, d: Deployment) -> Result<(), ParamError> {
    let min = p.count("min_replicas");
    if min > d.max_replicas {
        return Err(ParamError::BadValue {
            key: "min_replicas".into(),
            reason: format!("{min} is above max_replicas {}", d.max_replicas),
        });
    }
    Ok(())
}
