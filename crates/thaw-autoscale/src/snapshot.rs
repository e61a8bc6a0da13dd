//! What a policy sees at one instant (the sensors) and what it answers (a replica count).

/// Where one replica is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaState {
    /// Started (image, weights, process) but not ready to take work.
    Starting,
    /// Taking work.
    Ready,
    /// Told to stop: takes no new work, stops when its current work is done.
    Draining,
}

/// One replica as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaView {
    /// Its state.
    pub state: ReplicaState,
    /// Tasks it is working on now.
    pub active: u32,
    /// When it last finished a task or, if it never has, when it became ready (seconds on
    /// the snapshot's clock); `None` while starting.
    pub idle_since: Option<f64>,
}

/// The sensors at one instant. Times are seconds since an origin the caller chooses (the
/// simulator's start, or the control loop's injected clock at start-up); cumulative
/// counters let a policy compute rates and averages over any window it keeps.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// Now, in seconds since the origin.
    pub now: f64,
    /// Tasks waiting for a replica.
    pub queued: u64,
    /// Tasks being worked on.
    pub in_flight: u64,
    /// Every replica that is starting, ready or draining.
    pub replicas: Vec<ReplicaView>,
    /// Tasks that have arrived since the origin.
    pub arrivals_total: u64,
    /// Integral over time of `queued + in_flight` since the origin (task-seconds): the
    /// difference between two snapshots over their time gap is the average concurrency.
    pub load_integral: f64,
    /// Integral over time of `queued` alone (task-seconds).
    pub queue_integral: f64,
    /// Measured mean service time of one task, seconds (`None` before any completed).
    pub service_time: Option<f64>,
    /// Measured (or configured) cold start of one replica: from the decision to start it
    /// to its readiness, seconds.
    pub cold_start: f64,
    /// How many tasks one replica works on at once.
    pub concurrency: u32,
}

impl Snapshot {
    /// Replicas starting or ready (draining ones are on their way out).
    #[must_use]
    pub fn current(&self) -> u32 {
        self.count(|s| s != ReplicaState::Draining)
    }

    /// Replicas ready to take work.
    #[must_use]
    pub fn ready(&self) -> u32 {
        self.count(|s| s == ReplicaState::Ready)
    }

    /// Replicas still starting.
    #[must_use]
    pub fn starting(&self) -> u32 {
        self.count(|s| s == ReplicaState::Starting)
    }

    /// Tasks waiting or being worked on.
    #[must_use]
    pub fn load(&self) -> u64 {
        self.queued + self.in_flight
    }

    /// Ready replicas that have been idle (no active task) for at least `secs`.
    #[must_use]
    pub fn idle_for_at_least(&self, secs: f64) -> u32 {
        let n = self
            .replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Ready && r.active == 0)
            .filter(|r| r.idle_since.is_some_and(|t| self.now - t >= secs))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn count(&self, keep: impl Fn(ReplicaState) -> bool) -> u32 {
        let n = self.replicas.iter().filter(|r| keep(r.state)).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// A policy's answer: how many replicas (starting or ready) there should be.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The replica count wanted now.
    pub desired: u32,
    /// Why, in a few words, for logs and metrics.
    pub reason: &'static str,
    /// When the policy wants to be asked again even if nothing happens (seconds on the
    /// snapshot's clock), for timers such as a predictive pre-warm; `None` if its
    /// regular tick is enough.
    pub wake_at: Option<f64>,
}

impl Decision {
    /// A decision with no extra wake-up.
    #[must_use]
    pub fn new(desired: u32, reason: &'static str) -> Self {
        Decision {
            desired,
            reason,
            wake_at: None,
        }
    }
}
