//! The idle-time histogram of "Serverless in the Wild" (Shahrad et al., USENIX ATC 2020):
//! per deployment, how long it stays idle between bursts, and from it when to have a
//! replica ready again (the 5th percentile) and how long keeping one is likely to pay (the
//! 99th). It persists in the daemon's state directory, so it is plain serde data.

use serde::{Deserialize, Serialize};

use super::f;

/// The most bins a histogram keeps (a bound on memory whatever the configuration says).
const MAX_BINS: usize = 100_000;

/// Idle times seen so far, in bins of `bin` seconds up to a range; longer ones are
/// counted as out of bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleHistogram {
    bin: f64,
    counts: Vec<u32>,
    out_of_bounds: u32,
}

/// What the histogram predicts for the idle period that has just begun, in seconds after
/// its start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeepWarmPlan {
    /// The next task is unlikely before this (5th percentile, less 10%): a replica
    /// should be ready by then.
    pub ready_by: f64,
    /// The idle period very likely ends before this (99th percentile, plus 10%): keeping
    /// a replica past it is unlikely to pay.
    pub keep_until: f64,
}

impl IdleHistogram {
    /// An empty histogram of `range` seconds in bins of `bin` seconds.
    #[must_use]
    pub fn new(bin: f64, range: f64) -> Self {
        let bin = if bin.is_finite() && bin > 0.0 {
            bin
        } else {
            1.0
        };
        let wanted = (range / bin).ceil();
        let n = if wanted.is_finite() && wanted >= 1.0 {
            // Bounded just below.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let n = wanted.min(MAX_BINS as f64) as usize;
            n
        } else {
            1
        };
        IdleHistogram {
            bin,
            counts: vec![0; n],
            out_of_bounds: 0,
        }
    }

    /// Records one idle period of `secs` seconds.
    pub fn record(&mut self, secs: f64) {
        match self.bin_of(secs).and_then(|i| self.counts.get_mut(i)) {
            Some(c) => *c = c.saturating_add(1),
            None => self.out_of_bounds = self.out_of_bounds.saturating_add(1),
        }
    }

    /// Whether `other` has the same bins (width and count), so that its counts mean the same.
    #[must_use]
    pub fn same_shape(&self, other: &IdleHistogram) -> bool {
        (self.bin - other.bin).abs() < 1e-12 && self.counts.len() == other.counts.len()
    }

    /// Idle periods recorded.
    #[must_use]
    pub fn samples(&self) -> u64 {
        self.counts.iter().map(|&c| u64::from(c)).sum::<u64>() + u64::from(self.out_of_bounds)
    }

    /// The plan for an idle period that has already lasted `given` seconds (the paper's
    /// plan when `given` is 0), from the idle periods at least that long; `None` when
    /// the histogram says too little: fewer than `min_samples` such periods, most of them
    /// out of range, or counts spread so flat (coefficient of variation below 2) that no
    /// percentile means much. The paper falls back to ARIMA for out-of-range patterns;
    /// thaw falls back to its fixed keep-warm. Conditioning on `given` separates the
    /// short gaps inside a burst from the long ones between bursts.
    #[must_use]
    pub fn plan(&self, min_samples: u64, given: f64) -> Option<KeepWarmPlan> {
        let first = self.bin_of(given)?;
        let tail = &self.counts[first..];
        let in_range: u64 = tail.iter().map(|&c| u64::from(c)).sum();
        let total = in_range + u64::from(self.out_of_bounds);
        if total < min_samples.max(1) {
            return None;
        }
        if 2 * u64::from(self.out_of_bounds) >= total || coefficient_of_variation(tail) < 2.0 {
            return None;
        }
        let head = percentile_bin(tail, in_range, 0.05)? + first;
        let last = percentile_bin(tail, in_range, 0.99)? + first;
        Some(KeepWarmPlan {
            ready_by: f(head as u64) * self.bin * 0.9,
            keep_until: (f(last as u64) + 1.0) * self.bin * 1.1,
        })
    }

    /// The bin `secs` falls in, `None` past the range.
    fn bin_of(&self, secs: f64) -> Option<usize> {
        let index = (secs.max(0.0) / self.bin).floor();
        // A non-negative float compared against the length before the cast.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let fits = index.is_finite() && index < f(self.counts.len() as u64);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        fits.then_some(index as usize)
    }
}

/// The index of the bin holding the `p` quantile of `in_range` samples.
fn percentile_bin(counts: &[u32], in_range: u64, p: f64) -> Option<usize> {
    let want = (f(in_range) * p).ceil().max(1.0);
    let mut seen = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        seen += u64::from(c);
        if f(seen) >= want {
            return Some(i);
        }
    }
    None
}

fn coefficient_of_variation(counts: &[u32]) -> f64 {
    if counts.is_empty() {
        return 0.0;
    }
    let n = f(counts.len() as u64);
    let mean = counts.iter().map(|&c| f64::from(c)).sum::<f64>() / n;
    if mean <= 0.0 {
        return 0.0;
    }
    let var = counts
        .iter()
        .map(|&c| (f64::from(c) - mean).powi(2))
        .sum::<f64>()
        / n;
    var.sqrt() / mean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_gap_gives_a_tight_plan() {
        let mut h = IdleHistogram::new(1.0, 600.0);
        for i in 0..100 {
            h.record(120.0 + f64::from(i % 5)); // 120..124 s
        }
        let plan = h.plan(10, 0.0).unwrap();
        assert!((plan.ready_by - 120.0 * 0.9).abs() < 1e-9, "{plan:?}");
        assert!((plan.keep_until - 125.0 * 1.1).abs() < 1e-9, "{plan:?}");
    }

    #[test]
    fn conditioning_on_the_idle_so_far_skips_the_gaps_inside_bursts() {
        let mut h = IdleHistogram::new(1.0, 600.0);
        for i in 0..300 {
            h.record(f64::from(i % 3)); // inside bursts: 0..2 s
        }
        for _ in 0..20 {
            h.record(300.0);
        }
        assert!(
            h.plan(10, 0.0).unwrap().ready_by < 1.0,
            "the paper's plan: from 0"
        );
        let plan = h.plan(10, 30.0).unwrap();
        assert!((plan.ready_by - 270.0).abs() < 1e-9, "{plan:?}");
        assert!(h.plan(10, 301.0).is_none(), "nothing that long");
        assert!(h.plan(10, 1e9).is_none(), "past the range");
    }

    #[test]
    fn too_few_out_of_range_or_flat_is_no_plan() {
        let mut h = IdleHistogram::new(1.0, 600.0);
        for _ in 0..5 {
            h.record(30.0);
        }
        assert!(h.plan(10, 0.0).is_none(), "too few");
        let mut oob = IdleHistogram::new(1.0, 60.0);
        for i in 0..20 {
            oob.record(if i % 2 == 0 { 10.0 } else { 1000.0 });
        }
        assert!(oob.plan(10, 0.0).is_none(), "half out of range");
        let mut flat = IdleHistogram::new(1.0, 100.0);
        for i in 0..1000 {
            flat.record(f64::from(i % 100));
        }
        assert!(flat.plan(10, 0.0).is_none(), "flat");
    }

    #[test]
    fn survives_a_round_trip_and_bounds_its_size() {
        let mut h = IdleHistogram::new(0.5, 10.0);
        h.record(3.2);
        h.record(f64::NAN);
        h.record(-4.0);
        h.record(f64::INFINITY);
        let text = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<IdleHistogram>(&text).unwrap(), h);
        assert_eq!(h.samples(), 4);
        assert_eq!(h.out_of_bounds, 1);
        assert!(IdleHistogram::new(1e-9, 1e9).counts.len() <= MAX_BINS);
    }
}
