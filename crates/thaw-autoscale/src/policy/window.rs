//! Averages over sliding windows from the snapshot's cumulative counters: a policy keeps
//! the counters it saw at each decision and differences them, which is exact for the
//! simulator (whose integrals are exact) and a fair sample for the control loop.

use std::collections::VecDeque;

/// One reading of the cumulative counters.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    at: f64,
    load: f64,
    arrivals: f64,
}

/// The readings of the last `span` seconds.
#[derive(Debug, Clone)]
pub(crate) struct History {
    span: f64,
    readings: VecDeque<Reading>,
}

/// Which cumulative counter to average.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    /// `queued + in_flight`, task-seconds.
    Load,
    /// Arrivals.
    Arrivals,
}

impl History {
    /// Keeps at least `span` seconds of readings.
    pub(crate) fn new(span: f64) -> Self {
        History {
            span,
            readings: VecDeque::new(),
        }
    }

    /// Records the counters of `s`.
    pub(crate) fn record(&mut self, s: &crate::Snapshot) {
        if self.readings.is_empty() {
            // The origin: every counter starts at zero there.
            self.readings.push_back(Reading {
                at: 0.0_f64.min(s.now),
                load: 0.0,
                arrivals: 0.0,
            });
        }
        self.readings.push_back(Reading {
            at: s.now,
            load: s.load_integral,
            arrivals: super::f(s.arrivals_total),
        });
        while self.readings.len() > 2 && self.readings[1].at <= s.now - self.span {
            self.readings.pop_front();
        }
    }

    /// The average rate of `counter` over the last `window` seconds (shorter if less
    /// history exists), per second. 0 without history.
    pub(crate) fn rate(&self, counter: Counter, window: f64) -> f64 {
        let Some(last) = self.readings.back() else {
            return 0.0;
        };
        let Some(first) = self.readings.front() else {
            return 0.0;
        };
        let from = (last.at - window).max(first.at);
        let span = last.at - from;
        if span <= 0.0 {
            return 0.0;
        }
        (value(last, counter) - self.value_at(counter, from)) / span
    }

    fn value_at(&self, counter: Counter, at: f64) -> f64 {
        let mut before = self.readings.front();
        for r in &self.readings {
            if r.at >= at {
                let Some(b) = before else {
                    return value(r, counter);
                };
                if r.at <= b.at {
                    return value(r, counter);
                }
                let w = (at - b.at) / (r.at - b.at);
                return value(b, counter) + w * (value(r, counter) - value(b, counter));
            }
            before = Some(r);
        }
        before.map_or(0.0, |r| value(r, counter))
    }
}

fn value(r: &Reading, counter: Counter) -> f64 {
    match counter {
        Counter::Load => r.load,
        Counter::Arrivals => r.arrivals,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Snapshot;

    fn at(now: f64, load: f64, arrivals: u64) -> Snapshot {
        Snapshot {
            now,
            load_integral: load,
            arrivals_total: arrivals,
            ..Snapshot::default()
        }
    }

    #[test]
    fn averages_over_the_window_and_interpolates_its_start() {
        let mut h = History::new(100.0);
        h.record(&at(10.0, 10.0, 10)); // load 1 for 10 s
        h.record(&at(20.0, 40.0, 40)); // load 3 for 10 s
        assert!((h.rate(Counter::Load, 10.0) - 3.0).abs() < 1e-9);
        assert!((h.rate(Counter::Load, 20.0) - 2.0).abs() < 1e-9);
        // 15 s back lands mid-way through the first interval.
        assert!((h.rate(Counter::Load, 15.0) - (40.0 - 5.0) / 15.0).abs() < 1e-9);
        // A window longer than the history averages over what there is.
        assert!((h.rate(Counter::Arrivals, 60.0) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn forgets_readings_older_than_its_span() {
        let mut h = History::new(10.0);
        for i in 1..=100 {
            h.record(&at(f64::from(i), f64::from(i), 0));
        }
        assert!(h.readings.len() <= 13, "{}", h.readings.len());
        assert!((h.rate(Counter::Load, 10.0) - 1.0).abs() < 1e-9);
    }
}
