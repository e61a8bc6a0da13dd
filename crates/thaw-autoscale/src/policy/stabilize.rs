//! Stabilisation windows: the HPA's and Knative's "act on the max (or min) of the
//! recommendations made within the last N seconds".

use std::collections::VecDeque;

/// Recommendations (replica counts, or rates) of the last `window` seconds.
#[derive(Debug, Clone)]
pub(crate) struct Recommendations<T = u32> {
    window: f64,
    seen: VecDeque<(f64, T)>,
}

impl<T: Copy + PartialOrd> Recommendations<T> {
    pub(crate) fn new(window: f64) -> Self {
        Recommendations {
            window,
            seen: VecDeque::new(),
        }
    }

    /// Records `value` at `now` and forgets what is older than the window.
    pub(crate) fn push(&mut self, now: f64, value: T) {
        self.seen.push_back((now, value));
        while self
            .seen
            .front()
            .is_some_and(|&(t, _)| t < now - self.window)
        {
            self.seen.pop_front();
        }
    }

    /// The largest recommendation in the window (`fallback` if none).
    pub(crate) fn max(&self, fallback: T) -> T {
        self.seen
            .iter()
            .map(|&(_, v)| v)
            .fold(None, |m: Option<T>, v| match m {
                Some(m) if m >= v => Some(m),
                _ => Some(v),
            })
            .unwrap_or(fallback)
    }

    /// Changes the window (what is older goes at the next push).
    pub(crate) fn set_window(&mut self, window: f64) {
        self.window = window;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_window() {
        let mut r: Recommendations = Recommendations::new(10.0);
        r.push(0.0, 5);
        r.push(5.0, 2);
        assert_eq!(r.max(0), 5);
        r.push(10.5, 3);
        assert_eq!(r.max(0), 3);
        assert_eq!(Recommendations::<u32>::new(1.0).max(7), 7);
        let mut rates: Recommendations<f64> = Recommendations::new(5.0);
        rates.push(0.0, 2.5);
        rates.push(1.0, 0.5);
        assert!((rates.max(0.0) - 2.5).abs() < 1e-12);
    }
}
