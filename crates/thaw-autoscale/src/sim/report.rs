//! What one simulation (or a comparison of several) reports.

use serde::Serialize;

/// The outcome of replaying a trace through one policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The policy's name.
    pub name: String,
    /// Replica-seconds: the GPU cost, counted from the decision to start a replica to
    /// its stop.
    pub replica_seconds: f64,
    /// Fraction of all requests (dropped ones count as missed) whose latency, waiting
    /// plus service, is at most the SLO.
    pub slo_attainment: f64,
    /// Median latency of the served requests, seconds.
    pub p50_s: f64,
    /// 95th percentile latency, seconds.
    pub p95_s: f64,
    /// 99th percentile latency, seconds.
    pub p99_s: f64,
    /// Replicas started.
    pub cold_starts: u64,
    /// Decisions that changed the replica count.
    pub scale_events: u64,
    /// Requests served.
    pub served: u64,
    /// Requests dropped after waiting longer than the timeout.
    pub dropped: u64,
    /// Replicas over time, for plots (not in the JSON summary).
    #[serde(skip)]
    pub timeline: Vec<Sample>,
    #[serde(skip)]
    pub(crate) latencies: Vec<f64>,
    #[serde(skip)]
    pub(crate) within_slo: u64,
}

/// The simulation's state at one instant, for plots.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds from the start.
    pub at: f64,
    /// Replicas starting or ready.
    pub replicas: u32,
    /// Replicas ready.
    pub ready: u32,
    /// Tasks waiting.
    pub queued: u64,
}

impl Report {
    pub(crate) fn empty(name: &str) -> Self {
        Report {
            name: name.to_owned(),
            replica_seconds: 0.0,
            slo_attainment: 0.0,
            p50_s: 0.0,
            p95_s: 0.0,
            p99_s: 0.0,
            cold_starts: 0,
            scale_events: 0,
            served: 0,
            dropped: 0,
            timeline: Vec::new(),
            latencies: Vec::new(),
            within_slo: 0,
        }
    }

    /// Adds another tenant's report to this one (the sum of costs, the union of latencies).
    pub(crate) fn absorb(&mut self, other: Report) {
        self.replica_seconds += other.replica_seconds;
        self.cold_starts += other.cold_starts;
        self.scale_events += other.scale_events;
        self.served += other.served;
        self.dropped += other.dropped;
        self.within_slo += other.within_slo;
        self.latencies.extend(other.latencies);
        if self.timeline.is_empty() {
            self.timeline = other.timeline;
        }
    }

    /// Computes the percentiles and the attainment from what was absorbed.
    pub(crate) fn finish(&mut self) {
        self.latencies.sort_by(f64::total_cmp);
        self.p50_s = percentile(&self.latencies, 0.50);
        self.p95_s = percentile(&self.latencies, 0.95);
        self.p99_s = percentile(&self.latencies, 0.99);
        let total = self.served + self.dropped;
        self.slo_attainment = if total == 0 {
            1.0
        } else {
            crate::policy::f(self.within_slo) / crate::policy::f(total)
        };
    }
}

/// Nearest-rank percentile of sorted `values` (0 when empty).
fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let rank = (p * crate::policy::f(values.len() as u64)).ceil().max(1.0);
    // A rank within 1..=len, from the line above.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let index = (rank as usize).min(values.len()) - 1;
    values[index]
}

/// A comparison of policies on one trace, as `--json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// The trace's name.
    pub trace: String,
    /// The cold start used, seconds.
    pub cold_start_s: f64,
    /// The SLO used, seconds.
    pub slo_s: f64,
    /// One report per policy.
    pub policies: Vec<Report>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!((percentile(&v, 0.5) - 50.0).abs() < 1e-12);
        assert!((percentile(&v, 0.99) - 99.0).abs() < 1e-12);
        assert!((percentile(&[3.0], 0.99) - 3.0).abs() < 1e-12);
        assert!(percentile(&[], 0.5).abs() < 1e-12);
    }
}
