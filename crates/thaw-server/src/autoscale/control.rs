//! One deployment's control loop: it ticks, and also wakes on new work (a keyspace
//! notification or a pushed signal) and on replica events; each time it reads its source,
//! reaps replicas that died (their work goes back), learns who became ready, builds the
//! policy's snapshot, decides, and starts or drains replicas (or tells the orchestrator
//! behind a webhook). Time is tokio's clock, so a test can pause it.

mod backoff;
mod fleet;

use super::actuator::{Actuator, Handle};
use super::source::{Sample, Source, SourceError};
use super::status::StatusBoard;
use super::webhook::Webhook;
use crate::Node;
use backoff::Backoff;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use thaw_api::api::{DeploymentStatus, ReplicaStatus, WebhookScale};
use thaw_autoscale::config::DeploymentConfig;
use thaw_autoscale::{Policy, ReplicaState, ReplicaView, Snapshot};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a push deployment keeps its running replicas while its gateway has not
/// pushed since the daemon started.
pub(super) const UNHEARD_HOLD: std::time::Duration = std::time::Duration::from_secs(60);

/// Who runs a deployment's replicas.
pub(super) enum Fleet {
    /// This node, through an actuator.
    Local(Arc<dyn Actuator>),
    /// An orchestrator behind a webhook.
    External(Webhook),
}

/// One replica as the loop tracks it.
#[derive(Debug)]
struct Replica {
    handle: Option<Handle>,
    decided: Instant,
    state: ReplicaState,
    active: u32,
    idle_since: Option<Instant>,
    slot: u32,
    gpus: Option<String>,
    port: Option<u16>,
    /// Started by an earlier daemon: its start is not a cold start measured here.
    adopted: bool,
    /// Being stopped by the actuator (a background task); reaped when that ends.
    stopping: bool,
    /// Told by its source to stop after its work in hand (a queue's worker does).
    stops_itself: bool,
    /// When its readiness probe may run next, and whether one runs.
    probe_at: Instant,
    probing: bool,
}

/// What a replica's background tasks report.
#[derive(Debug)]
enum Event {
    Prewarmed,
    Created { name: String, handle: Handle },
    Failed { name: String, error: String },
    Probed { name: String, ok: bool },
    Stopped { name: String },
}

/// What a loop is made of.
pub(super) struct Parts {
    pub node: Arc<Node>,
    pub config: DeploymentConfig,
    pub policy: Box<dyn Policy>,
    pub source: Box<dyn Source>,
    pub fleet: Fleet,
    pub tick: f64,
    pub board: StatusBoard,
    /// The replicas the node has room for (GPUs, ports, `max_replicas`).
    pub slots: u32,
    pub wake: Arc<Notify>,
    /// Where the policy's learned state is kept across restarts.
    pub state_file: Option<std::path::PathBuf>,
    /// Leave local replicas running at shutdown, for the next daemon to adopt.
    pub leave_running: bool,
}

/// One deployment's loop and everything it tracks.
pub(super) struct Loop {
    parts: Parts,
    origin: Instant,
    replicas: BTreeMap<String, Replica>,
    free_slots: BTreeSet<u32>,
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
    /// A loop over `parts`.
    pub(super) fn new(parts: Parts) -> Self {
        let cold_start = *parts.config.cold_start_seconds.get_ref();
        let status = DeploymentStatus {
            name: parts.config.name.get_ref().clone(),
            policy: parts.policy.name().into(),
            cold_start_seconds: cold_start,
            source: parts.source.kind().into(),
            actuator: match &parts.fleet {
                Fleet::Local(a) => a.kind().into(),
                Fleet::External(_) => "webhook".into(),
            },
            ..DeploymentStatus::default()
        };
        // Listed from the start: the API answers before the loop's first decision.
        parts.board.publish(status.clone());
        Loop {
            free_slots: (0..parts.slots).collect(),
            parts,
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

    /// Runs until `shutdown`; then every replica is drained and removed (unless left
    /// running for the next daemon), and what they held goes back to the source.
    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        let tick = self.parts.tick.min(self.parts.policy.period()).max(0.01);
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs_f64(tick));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let wake = self.parts.wake.clone();
        if let Some(path) = &self.parts.state_file {
            super::persist::restore(self.parts.policy.as_mut(), path);
        }
        self.adopt().await;
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

    /// Puts back what replicas nothing answers for hold: those of a daemon that died
    /// (their ready keys expired), so no task is lost with it.
    async fn requeue_orphans(&mut self) {
        let found = match self.parts.source.orphans().await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(deployment = %self.status.name, error = %e, "could not look for orphaned tasks");
                return;
            }
        };
        for replica in found.into_iter().filter(|r| !self.replicas.contains_key(r)) {
            match self.parts.source.requeue(&replica).await {
                Ok(moved) => {
                    self.status.requeued += moved;
                    tracing::warn!(deployment = %self.status.name, %replica, requeued = moved, "requeued the tasks of a replica no worker answers for");
                }
                Err(e) => {
                    tracing::warn!(deployment = %self.status.name, error = %e, "could not requeue orphaned tasks");
                }
            }
        }
    }

    fn save(&self) {
        if let Some(path) = &self.parts.state_file {
            super::persist::save(self.parts.policy.as_ref(), path);
        }
    }

    fn secs(&self, t: Instant) -> f64 {
        t.duration_since(self.origin).as_secs_f64()
    }

    async fn step(&mut self) -> Result<(), SourceError> {
        self.reap().await?;
        let names: Vec<String> = self.replicas.keys().cloned().collect();
        let sample = self.parts.source.sample(&names).await?;
        self.observe(&names, &sample);
        self.probe_starting();
        self.stop_idle_drained();
        let snapshot = self.snapshot(&sample);
        let mut decision = self.parts.policy.decide(&snapshot);
        self.hold_while_unheard(&sample, &mut decision);
        self.next_wake = decision
            .wake_at
            .map(|at| self.origin + std::time::Duration::from_secs_f64(at.max(0.0)));
        self.publish(&snapshot, decision.desired, decision.reason);
        if let Fleet::External(hook) = &mut self.parts.fleet {
            let scale = WebhookScale {
                deployment: self.status.name.clone(),
                desired: decision.desired,
                reason: decision.reason.into(),
                queued: snapshot.queued,
                in_flight: snapshot.in_flight,
                cold_start_seconds: self.cold_start,
            };
            if let Err(e) = hook.send(&scale).await {
                tracing::warn!(deployment = %self.status.name, error = %e, "webhook failed; retrying at the next decision");
            }
            return Ok(());
        }
        self.apply(decision.desired).await
    }

    /// Until a push source first hears from its gateway, its zeros mean "unknown": the
    /// replicas running (adopted after a restart) are kept, for at most [`UNHEARD_HOLD`].
    fn hold_while_unheard(&self, sample: &Sample, decision: &mut thaw_autoscale::Decision) {
        let running = u32::try_from(self.replicas.len()).unwrap_or(u32::MAX);
        if sample.unheard && self.origin.elapsed() < UNHEARD_HOLD && decision.desired < running {
            decision.desired = running;
            decision.reason = "holding the replicas until the first signal";
        }
    }

    /// Updates each replica from the sample: work in hand, idleness, and readiness where
    /// the source tells it and no probe is configured.
    fn observe(&mut self, names: &[String], sample: &Sample) {
        let now = Instant::now();
        let probed = self.parts.config.readiness.is_some();
        let mut became_ready = Vec::new();
        for (name, &(active, ready)) in names.iter().zip(&sample.replicas) {
            let Some(r) = self.replicas.get_mut(name) else {
                continue;
            };
            let running = r.handle.is_some();
            if r.state == ReplicaState::Starting && !probed && ready.unwrap_or(running) {
                became_ready.push(name.clone());
            }
            let active = u32::try_from(active).unwrap_or(u32::MAX);
            if active == 0 && r.active > 0 {
                r.idle_since = Some(now);
            }
            r.active = active;
        }
        for name in became_ready {
            self.mark_ready(&name);
        }
    }

    /// `name` passed its readiness check: its start (from the decision) is measured.
    fn mark_ready(&mut self, name: &str) {
        let Some(r) = self.replicas.get_mut(name) else {
            return;
        };
        if r.state != ReplicaState::Starting {
            return;
        }
        let now = Instant::now();
        r.state = ReplicaState::Ready;
        r.idle_since = Some(now);
        self.backoff.succeeded();
        if r.adopted {
            tracing::info!(deployment = %self.status.name, replica = %name, "adopted replica ready");
            return;
        }
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
        tracing::info!(deployment = %self.status.name, replica = %name, start_seconds = took, "replica ready");
    }

    fn snapshot(&mut self, sample: &Sample) -> Snapshot {
        let now = self.secs(Instant::now());
        self.load_integral +=
            thaw_autoscale::as_f64(self.last_load) * (now - self.last_sample_at).max(0.0);
        self.last_sample_at = now;
        self.last_load = sample.queued + sample.in_flight;
        let baseline = *self.baseline_completed.get_or_insert(sample.completed);
        let completed = sample.completed.saturating_sub(baseline);
        self.status.completed = completed;
        self.status.signal_age_seconds = sample.age_seconds;
        let replicas = match &self.parts.fleet {
            Fleet::External(hook) => hook.replicas(),
            Fleet::Local(_) => self
                .replicas
                .values()
                .map(|r| ReplicaView {
                    state: r.state,
                    active: r.active,
                    idle_since: r.idle_since.map(|t| self.secs(t)),
                })
                .collect(),
        };
        Snapshot {
            now,
            queued: sample.queued,
            in_flight: sample.in_flight,
            replicas,
            arrivals_total: sample.queued + sample.in_flight + completed,
            load_integral: self.load_integral,
            queue_integral: 0.0,
            service_time: sample.service_seconds,
            cold_start: self.cold_start,
            concurrency: *self.parts.config.concurrency.get_ref(),
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
        st.replicas = self
            .replicas
            .iter()
            .map(|(name, r)| ReplicaStatus {
                name: name.clone(),
                state: match r.state {
                    ReplicaState::Starting => "starting",
                    ReplicaState::Ready => "ready",
                    ReplicaState::Draining => "draining",
                }
                .into(),
                port: r.port,
                active: r.active,
                gpus: r.gpus.clone(),
            })
            .collect();
        if desired != s.current() && (desired, reason) != (logged.0, logged.1.as_str()) {
            *logged = (desired, reason.to_string());
            tracing::info!(deployment = %st.name, desired, current = s.current(), reason, queued = s.queued, in_flight = s.in_flight, cold_start = self.cold_start, "scaling");
        }
        self.parts.board.publish(st.clone());
    }
}
