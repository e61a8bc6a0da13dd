//! Exponential backoff after replicas crash or fail to start: 1 s, doubling to 60 s; a
//! replica becoming ready resets it.

use tokio::time::Instant;

/// The backoff's state.
#[derive(Debug, Default)]
pub(super) struct Backoff {
    failures: u32,
    until: Option<Instant>,
}

impl Backoff {
    /// One more failure at `now`.
    pub(super) fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let secs = 2f64
            .powi(i32::try_from(self.failures.min(7)).unwrap_or(7) - 1)
            .min(60.0);
        self.until = Some(now + std::time::Duration::from_secs_f64(secs));
    }

    /// A replica became ready.
    pub(super) fn succeeded(&mut self) {
        *self = Backoff::default();
    }

    /// Whether a replica may start at `now`.
    pub(super) fn allows(&self, now: Instant) -> bool {
        self.until.is_none_or(|t| now >= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute_and_resets() {
        let now = Instant::now();
        let mut b = Backoff::default();
        assert!(b.allows(now));
        let mut waits = Vec::new();
        for _ in 0..9 {
            b.failed(now);
            let until = b.until.unwrap();
            waits.push(until.duration_since(now).as_secs());
            assert!(!b.allows(now) && b.allows(until));
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        b.succeeded();
        assert!(b.allows(now));
    }
}
