//! How long a deployment keeps a replica after its last task, and when it pre-warms one
//! before the next: a fixed `keep_warm` until the idle-time histogram is confident, then
//! the histogram's plan, which may let the replica go at once and start one again a cold
//! start before the predicted next task.

use super::{IdleHistogram, KeepWarmPlan, Resolved};
use crate::Snapshot;

#[derive(Debug)]
pub(super) struct KeepWarm {
    keep_warm: f64,
    keep_warm_max: f64,
    predictive: bool,
    min_samples: u64,
    /// Unloading between bursts pays only if the replica would otherwise sit idle longer
    /// than this (the scale-down delay would keep it that long anyway).
    min_gap: f64,
    histogram: IdleHistogram,
    idle_since: Option<f64>,
    plan: Option<KeepWarmPlan>,
}

impl KeepWarm {
    pub(super) fn new(p: &Resolved) -> Self {
        KeepWarm {
            keep_warm: p.get("keep_warm"),
            keep_warm_max: p.get("keep_warm_max"),
            predictive: p.flag("predictive"),
            min_samples: u64::from(p.count("min_idle_samples")),
            min_gap: p.get("scale_down_delay"),
            histogram: IdleHistogram::new(p.get("idle_bin"), p.get("idle_range")),
            idle_since: None,
            plan: None,
        }
    }

    /// Notes when the deployment goes idle and, when work comes back, how long it was.
    pub(super) fn observe(&mut self, s: &Snapshot) {
        if s.load() == 0 {
            if self.idle_since.is_none() {
                self.idle_since = Some(s.now);
                self.plan = if self.predictive {
                    self.histogram.plan(self.min_samples, self.min_gap)
                } else {
                    None
                };
            }
        } else if let Some(since) = self.idle_since.take() {
            self.histogram.record(s.now - since);
        }
    }

    /// The histogram as JSON, for persisting.
    pub(super) fn saved(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&self.histogram).ok()
    }

    /// Takes a saved histogram back if it has this one's bins.
    pub(super) fn restore(&mut self, state: &serde_json::Value) -> bool {
        match serde_json::from_value::<IdleHistogram>(state.clone()) {
            Ok(h) if h.same_shape(&self.histogram) => {
                self.histogram = h;
                true
            }
            _ => false,
        }
    }

    /// What the keep-warm advises now.
    pub(super) fn advice(&self, s: &Snapshot) -> Idle {
        let Some(since) = self.idle_since else {
            return Idle::Busy;
        };
        let idle = s.now - since;
        let Some(plan) = self.plan else {
            if idle < self.keep_warm {
                return Idle::Keep {
                    until: since + self.keep_warm,
                    reason: "keep warm",
                };
            }
            return Idle::Release {
                wake: None,
                reason: "idle past keep_warm",
            };
        };
        // The plan is for idle periods past the scale-down delay: until then keep what
        // runs. After it, let go if the next task is predicted late enough to pre-warm
        // again in time; else keep one replica while the next task is still likely.
        if idle < self.min_gap {
            return Idle::Keep {
                until: since + self.min_gap,
                reason: "keep warm",
            };
        }
        let start_at = plan.ready_by - s.cold_start;
        if idle < start_at {
            return Idle::Release {
                wake: Some(since + start_at),
                reason: "idle: pre-warm planned",
            };
        }
        let keep_until = since + plan.keep_until.min(self.keep_warm_max);
        if s.now >= keep_until {
            return Idle::Release {
                wake: None,
                reason: "idle past the predicted gap",
            };
        }
        if start_at > self.min_gap {
            Idle::Prewarm { until: keep_until }
        } else {
            Idle::Keep {
                until: keep_until,
                reason: "keep warm (histogram)",
            }
        }
    }
}

/// The keep-warm's advice while the deployment is idle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Idle {
    /// There is work: the load decides.
    Busy,
    /// Keep one replica (if any runs) until `until`.
    Keep {
        /// When the advice runs out.
        until: f64,
        /// Why.
        reason: &'static str,
    },
    /// Let every replica go (whatever the load's memory says); ask again at `wake`.
    Release {
        /// When to ask again, if a pre-warm is planned.
        wake: Option<f64>,
        /// Why.
        reason: &'static str,
    },
    /// Start a replica now if none runs: the next task is predicted soon; keep it
    /// until `until`.
    Prewarm {
        /// When the advice runs out.
        until: f64,
    },
}
