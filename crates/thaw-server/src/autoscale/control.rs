//! One deployment's control loop: it ticks, and also wakes on new work (a keyspace
//! notification) and on replica events; each time it reads the queue, reaps replicas that
//! died (their tasks go back to the queue), builds the policy's snapshot, decides, and
//! starts or drains replicas. Time is tokio's clock, so a test can pause it.

use super::queue::{Queue, QueueError, QueueSample};
use super::replica;
use super::status::StatusBoard;
use crate::Node;
use std::collections::BTreeMap;
use std::sync::Arc;
use thaw_api::api::DeploymentStatus;
use thaw_autoscale::config::DeploymentConfig;
use thaw_autoscale::{Policy, ReplicaState, ReplicaView, Snapshot};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One replica as the loop tracks it.
#[derive(Debug)]
struct Replica {
    container: Option<String>,
    decided: Instant,
    state: ReplicaState,
    active: u32,
    idle_since: Option<Instant>,
    gpus: Option<String>,
}

/// What a replica's start task reports.
#[derive(Debug)]
enum Event {
    Prewarmed,
    Created { name: String, container: String },
    Failed { name: String, error: String },
}

/// One deployment's loop and everything it tracks.
pub(super) struct Loop {
    pub(super) node: Arc<Node>,
    pub(super) config: DeploymentConfig,
    pub(super) policy: Box<dyn Policy>,
    pub(super) queue: Queue,
    pub(super) tick: f64,
    pub(super) board: StatusBoard,
    pub(super) gpu_slots: Vec<Option<String>>,
    pub(super) wake: Arc<Notify>,
    /// Where the policy's learned state is kept across restarts.
    pub(super) state_file: Option<std::path::PathBuf>,
    origin: Instant,
    replicas: BTreeMap<String, Replica>,
    next_id: u64,
    events: (mpsc::UnboundedSender<Event>, mpsc::UnboundedReceiver<Event>),
    last_sample_at: f64,
    last_load: u64,
    load_integral: f64,
    baseline_completed: Option<u64>,
    cold_start: f64,
    backoff: Backoff,
    next_wake: Option<Instant>,
    status: DeploymentStatus,
    last_logged: (u32, String),
}

impl Loop {
    /// A loop for `config` with its policy and queue ready.
    pub(super) fn new(
        node: Arc<Node>,
        config: DeploymentConfig,
        policy: Box<dyn Policy>,
        queue: Queue,
        tick: f64,
        board: StatusBoard,
        gpu_slots: Vec<Option<String>>,
    ) -> Self {
        let cold_start = *config.cold_start_seconds.get_ref();
        let status = DeploymentStatus {
            name: config.name.get_ref().clone(),
            policy: policy.name().into(),
            cold_start_seconds: cold_start,
            ..DeploymentStatus::default()
        };
        Loop {
            node,
            config,
            policy,
            queue,
            tick,
            board,
            gpu_slots,
            wake: Arc::new(Notify::new()),
            state_file: None,
            origin: Instant::now(),
            replicas: BTreeMap::new(),
            next_id: 0,
            events: mpsc::unbounded_channel(),
            last_sample_at: 0.0,
            last_load: 0,
            load_integral: 0.0,
            baseline_completed: None,
            cold_start,
            backoff: Backoff::default(),
            next_wake: None,
            status,
            last_logged: (0, String::new()),
        }
    }

    /// Runs until `shutdown`; then every replica is drained and removed, and what they
    /// held goes back to the queue.
    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        let period =
            std::time::Duration::from_secs_f64(self.tick.min(self.policy.period()).max(0.01));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let wake = self.wake.clone();
        if let Some(path) = &self.state_file {
            super::persist::restore(self.policy.as_mut(), path);
        }
        let mut saved = Instant::now();
        self.requeue_orphans().await;
        loop {
            let timer = self
                .next_wake
                .unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(3600));
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
                () = wake.notified() => {}
                () = tokio::time::sleep_until(timer) => self.next_wake = None,
                Some(ev) = self.events.1.recv() => self.on_event(ev),
            }
            if let Err(e) = self.step().await {
                tracing::warn!(deployment = %self.status.name, error = %e, "autoscale step failed");
            }
            if saved.elapsed() >= std::time::Duration::from_secs(60) {
                self.save();
                self.requeue_orphans().await;
                saved = Instant::now();
            }
        }
        self.stop_all().await;
        self.save();
    }

    /// Moves back onto the queue what replicas no worker answers for hold: those of a
    /// daemon that died (their ready keys expired), so no task is lost with it.
    async fn requeue_orphans(&mut self) {
        let found = match self.queue.orphans().await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(deployment = %self.status.name, error = %e, "could not look for orphaned tasks");
                return;
            }
        };
        for replica in found.into_iter().filter(|r| !self.replicas.contains_key(r)) {
            match self.queue.requeue(&replica).await {
                Ok(moved) => {
                    self.status.requeued += moved;
                    tracing::warn!(deployment = %self.status.name, %replica, requeued = moved, "requeued the tasks of a replica no worker answers for");
                }
                Err(e) => {
                    tracing::warn!(deployment = %self.status.name, error = %e, "could not requeue orphaned tasks")
                }
            }
        }
    }

    fn save(&self) {
        if let Some(path) = &self.state_file {
            super::persist::save(self.policy.as_ref(), path);
        }
    }

    fn secs(&self, t: Instant) -> f64 {
        t.duration_since(self.origin).as_secs_f64()
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Prewarmed => self.status.prewarms += 1,
            Event::Created { name, container } => {
                if let Some(r) = self.replicas.get_mut(&name) {
                    r.container = Some(container);
                }
            }
            Event::Failed { name, error } => {
                tracing::warn!(deployment = %self.status.name, replica = %name, %error, "replica failed to start");
                self.forget(&name);
                self.status.crashes += 1;
                self.backoff.failed(Instant::now());
            }
        }
    }

    async fn step(&mut self) -> Result<(), QueueError> {
        self.reap().await?;
        let names: Vec<String> = self.replicas.keys().cloned().collect();
        let sample = self.queue.sample(&names).await?;
        self.observe(&names, &sample);
        let snapshot = self.snapshot(&sample);
        let decision = self.policy.decide(&snapshot);
        self.next_wake = decision
            .wake_at
            .map(|at| self.origin + std::time::Duration::from_secs_f64(at.max(0.0)));
        self.publish(&snapshot, decision.desired, decision.reason);
        self.apply(decision.desired).await
    }

    /// Replicas whose container exited: their tasks go back to the queue; one that was not
    /// draining crashed, and starts back off.
    async fn reap(&mut self) -> Result<(), QueueError> {
        let dead: Vec<(String, String, bool)> = self
            .replicas
            .iter()
            .filter_map(|(n, r)| {
                r.container
                    .as_ref()
                    .filter(|c| replica::exited(&self.node, c))
                    .map(|c| (n.clone(), c.clone(), r.state == ReplicaState::Draining))
            })
            .collect();
        for (name, container, draining) in dead {
            let moved = self.queue.requeue(&name).await?;
            self.status.requeued += moved;
            if !draining {
                tracing::warn!(deployment = %self.status.name, replica = %name, requeued = moved, "replica exited on its own");
                self.status.crashes += 1;
                self.backoff.failed(Instant::now());
            }
            replica::remove(&self.node, &container, 0.0).await;
            self.forget(&name);
        }
        Ok(())
    }

    fn forget(&mut self, name: &str) {
        if let Some(r) = self.replicas.remove(name) {
            if let Some(g) = r.gpus {
                if let Some(slot) = self.gpu_slots.iter_mut().find(|s| s.is_none()) {
                    *slot = Some(g);
                }
            }
        }
    }

    /// Updates each replica from the queue: readiness (and the start time it measures),
    /// tasks in hand, idleness.
    fn observe(&mut self, names: &[String], sample: &QueueSample) {
        let now = Instant::now();
        for (name, &(active, ready)) in names.iter().zip(&sample.replicas) {
            let Some(r) = self.replicas.get_mut(name) else {
                continue;
            };
            if r.state == ReplicaState::Starting && ready {
                r.state = ReplicaState::Ready;
                r.idle_since = Some(now);
                let took = now.duration_since(r.decided).as_secs_f64();
                self.cold_start = if self.status.start_seconds.is_empty() {
                    took
                } else {
                    0.5 * self.cold_start + 0.5 * took
                };
                self.status.start_seconds.push(took);
                if self.status.start_seconds.len() > 64 {
                    self.status.start_seconds.remove(0);
                }
                self.backoff.succeeded();
                tracing::info!(deployment = %self.status.name, replica = %name, start_seconds = took, "replica ready");
            }
            let active = u32::try_from(active).unwrap_or(u32::MAX);
            if active == 0 && r.active > 0 {
                r.idle_since = Some(now);
            }
            r.active = active;
        }
    }

    fn snapshot(&mut self, sample: &QueueSample) -> Snapshot {
        let now = self.secs(Instant::now());
        let in_flight: u64 = sample.replicas.iter().map(|&(n, _)| n).sum();
        self.load_integral +=
            thaw_autoscale::as_f64(self.last_load) * (now - self.last_sample_at).max(0.0);
        self.last_sample_at = now;
        self.last_load = sample.queued + in_flight;
        let baseline = *self.baseline_completed.get_or_insert(sample.completed);
        let completed = sample.completed.saturating_sub(baseline);
        self.status.completed = completed;
        let replicas = self
            .replicas
            .values()
            .map(|r| ReplicaView {
                state: r.state,
                active: r.active,
                idle_since: r.idle_since.map(|t| self.secs(t)),
            })
            .collect();
        Snapshot {
            now,
            queued: sample.queued,
            in_flight,
            replicas,
            arrivals_total: sample.queued + in_flight + completed,
            load_integral: self.load_integral,
            queue_integral: 0.0,
            service_time: (sample.completed > 0).then(|| {
                thaw_autoscale::as_f64(sample.service_ms)
                    / 1000.0
                    / thaw_autoscale::as_f64(sample.completed)
            }),
            cold_start: self.cold_start,
            concurrency: *self.config.concurrency.get_ref(),
        }
    }

    fn publish(&mut self, s: &Snapshot, desired: u32, reason: &str) {
        let logged = &mut self.last_logged;
        let st = &mut self.status;
        st.desired = desired;
        st.reason = reason.into();
        st.decisions += 1;
        (st.starting, st.ready) = (s.starting(), s.ready());
        st.draining = u32::try_from(s.replicas.len()).unwrap_or(u32::MAX) - s.current();
        (st.queued, st.in_flight) = (s.queued, s.in_flight);
        st.cold_start_seconds = self.cold_start;
        st.peak_replicas = st.peak_replicas.max(s.current());
        if desired != s.current() && (desired, reason) != (logged.0, logged.1.as_str()) {
            *logged = (desired, reason.to_string());
            tracing::info!(deployment = %st.name, desired, current = s.current(), reason, queued = s.queued, in_flight = s.in_flight, cold_start = self.cold_start, "scaling");
        }
        self.board.publish(st.clone());
    }

    async fn apply(&mut self, desired: u32) -> Result<(), QueueError> {
        let current = u32::try_from(
            self.replicas
                .values()
                .filter(|r| r.state != ReplicaState::Draining)
                .count(),
        )
        .unwrap_or(u32::MAX);
        if desired > current && self.backoff.allows(Instant::now()) {
            for _ in current..desired {
                if !self.start_one() {
                    break;
                }
            }
        } else if desired < current {
            for _ in desired..current {
                self.drain_one().await?;
            }
        }
        Ok(())
    }

    /// Starts one replica in the background; false when the node has no GPUs left for it.
    fn start_one(&mut self) -> bool {
        let gpus = if self.config.gpus_per_replica > 0 {
            match self
                .gpu_slots
                .iter_mut()
                .find(|s| s.is_some())
                .and_then(Option::take)
            {
                Some(g) => Some(g),
                None => return false,
            }
        } else {
            None
        };
        self.next_id += 1;
        let name = format!(
            "{}-{}-{}",
            self.status.name,
            std::process::id(),
            self.next_id
        );
        self.replicas.insert(
            name.clone(),
            Replica {
                container: None,
                decided: Instant::now(),
                state: ReplicaState::Starting,
                active: 0,
                idle_since: None,
                gpus: gpus.clone(),
            },
        );
        self.status.starts += 1;
        let (node, config, tx, wake) = (
            self.node.clone(),
            self.config.clone(),
            self.events.0.clone(),
            self.wake.clone(),
        );
        tokio::spawn(async move {
            let started = async {
                // Resolved once, for the prewarm and the container alike.
                let image = replica::resolve(&node, &config.image).await?;
                match replica::prewarm(&node, image, config.weights.as_deref()).await {
                    Ok(()) => {
                        let _ = tx.send(Event::Prewarmed);
                    }
                    Err(e) => {
                        tracing::warn!(replica = %name, error = %e, "prewarm before the start failed; starting lazily")
                    }
                }
                replica::start(&node, &config, image, &name, gpus.as_deref()).await
            };
            let event = match started.await {
                Ok(container) => Event::Created { name, container },
                Err(e) => Event::Failed {
                    name,
                    error: e.to_string(),
                },
            };
            let _ = tx.send(event);
            wake.notify_one();
        });
        true
    }

    /// Drains one replica: a starting one first, then the one idle longest, else the
    /// least busy; it finishes the task in hand and exits, and is reaped then.
    async fn drain_one(&mut self) -> Result<(), QueueError> {
        let rank = |r: &Replica| match r.state {
            ReplicaState::Starting => (0, 0, 0.0),
            ReplicaState::Ready => (
                1,
                r.active,
                r.idle_since
                    .map_or(f64::MAX, |t| -t.elapsed().as_secs_f64()),
            ),
            ReplicaState::Draining => (9, 0, 0.0),
        };
        let Some(name) = self
            .replicas
            .iter()
            .filter(|(_, r)| r.state != ReplicaState::Draining)
            .min_by(|a, b| {
                rank(a.1)
                    .partial_cmp(&rank(b.1))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .map(|(n, _)| n.clone())
        else {
            return Ok(());
        };
        self.queue.drain(&name).await?;
        if let Some(r) = self.replicas.get_mut(&name) {
            r.state = ReplicaState::Draining;
        }
        Ok(())
    }

    /// At shutdown: every replica stopped and removed, their tasks back on the queue.
    async fn stop_all(&mut self) {
        let grace = *self.config.stop_grace_seconds.get_ref();
        let names: Vec<String> = self.replicas.keys().cloned().collect();
        for name in names {
            let _ = self.queue.drain(&name).await;
            if let Some(c) = self.replicas.get(&name).and_then(|r| r.container.clone()) {
                replica::remove(&self.node, &c, grace).await;
            }
            if let Ok(moved) = self.queue.requeue(&name).await {
                self.status.requeued += moved;
            }
            self.forget(&name);
        }
        self.board.publish(self.status.clone());
    }
}

/// Exponential backoff after replicas crash or fail to start: 1 s, doubling to 60 s;
/// a replica becoming ready resets it.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    until: Option<Instant>,
}

impl Backoff {
    fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let secs = 2f64
            .powi(i32::try_from(self.failures.min(7)).unwrap_or(7) - 1)
            .min(60.0);
        self.until = Some(now + std::time::Duration::from_secs_f64(secs));
    }

    fn succeeded(&mut self) {
        *self = Backoff::default();
    }

    fn allows(&self, now: Instant) -> bool {
        self.until.is_none_or(|t| now >= t)
    }
}
