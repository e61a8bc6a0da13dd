//! The loop's local replicas: starting them (a slot, a prewarm, the actuator), probing
//! them, draining and stopping them, reaping the dead, and adopting what an earlier
//! daemon left running.

use super::{Event, Fleet, Loop, Replica};
use crate::autoscale::actuator::{replica_command, Actuator, Handle, ReplicaSpec};
use crate::autoscale::probe;
use crate::autoscale::replica;
use crate::autoscale::source::SourceError;
use std::sync::Arc;
use thaw_autoscale::ReplicaState;
use tokio::time::Instant;

impl Loop {
    fn actuator(&self) -> Option<Arc<dyn Actuator>> {
        match &self.parts.fleet {
            Fleet::Local(a) => Some(a.clone()),
            Fleet::External(_) => None,
        }
    }

    pub(super) fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Prewarmed => self.status.prewarms += 1,
            Event::Created { name, handle } => {
                let Some(r) = self.replicas.get_mut(&name) else {
                    return;
                };
                r.handle = Some(handle);
                // Drained while it started, by a source that cannot tell it to stop.
                if r.state == ReplicaState::Draining && !r.stops_itself && r.active == 0 {
                    self.stop_in_background(&name);
                }
            }
            Event::Failed { name, error } => {
                tracing::warn!(deployment = %self.status.name, replica = %name, %error, "replica failed to start");
                self.forget(&name);
                self.status.crashes += 1;
                self.backoff.failed(Instant::now());
            }
            Event::Probed { name, ok } => {
                if let Some(r) = self.replicas.get_mut(&name) {
                    r.probing = false;
                }
                if ok {
                    self.mark_ready(&name);
                }
            }
            Event::Stopped { name } => self.forget(&name),
        }
    }

    /// Adopts the replicas an earlier daemon left running (with their slots).
    pub(super) async fn adopt(&mut self) {
        let Some(actuator) = self.actuator() else {
            return;
        };
        for (spec, handle) in actuator.adopt().await {
            if !self.free_slots.remove(&spec.slot) {
                tracing::warn!(deployment = %self.status.name, replica = %spec.name, "an adopted replica's slot is taken or gone: stopping it");
                actuator
                    .stop(&handle, *self.parts.config.stop_grace_seconds.get_ref())
                    .await;
                continue;
            }
            tracing::info!(deployment = %self.status.name, replica = %spec.name, pid = ?handle.pid, "adopted a running replica");
            self.status.adopted += 1;
            let now = Instant::now();
            self.replicas.insert(
                spec.name.clone(),
                Replica {
                    handle: Some(handle),
                    decided: now,
                    state: ReplicaState::Starting,
                    active: 0,
                    idle_since: None,
                    slot: spec.slot,
                    gpus: spec.gpus,
                    port: spec.port,
                    adopted: true,
                    stopping: false,
                    stops_itself: false,
                    probe_at: now,
                    probing: false,
                },
            );
        }
    }

    /// Replicas that exited: their work goes back; one that was not draining crashed,
    /// and starts back off.
    pub(super) async fn reap(&mut self) -> Result<(), SourceError> {
        let Some(actuator) = self.actuator() else {
            return Ok(());
        };
        let dead: Vec<(String, Handle, bool)> = self
            .replicas
            .iter()
            .filter(|(_, r)| !r.stopping)
            .filter_map(|(n, r)| {
                r.handle
                    .as_ref()
                    .filter(|h| actuator.exited(h))
                    .map(|h| (n.clone(), h.clone(), r.state == ReplicaState::Draining))
            })
            .collect();
        for (name, handle, draining) in dead {
            let moved = self.parts.source.requeue(&name).await?;
            self.status.requeued += moved;
            if !draining {
                tracing::warn!(deployment = %self.status.name, replica = %name, requeued = moved, "replica exited on its own");
                self.status.crashes += 1;
                self.backoff.failed(Instant::now());
            }
            actuator.stop(&handle, 0.0).await;
            self.forget(&name);
        }
        Ok(())
    }

    fn forget(&mut self, name: &str) {
        if let Some(r) = self.replicas.remove(name) {
            self.free_slots.insert(r.slot);
        }
    }

    /// Begins a readiness probe of each starting replica that is due one.
    pub(super) fn probe_starting(&mut self) {
        let Some(probe) = self
            .parts
            .config
            .readiness
            .as_ref()
            .map(|r| r.get_ref().clone())
        else {
            return;
        };
        let now = Instant::now();
        let period = std::time::Duration::from_secs_f64(probe.period_seconds.clamp(0.01, 3600.0));
        for (name, r) in &mut self.replicas {
            let Some(handle) = &r.handle else { continue };
            if r.state != ReplicaState::Starting || r.probing || r.probe_at > now {
                continue;
            }
            (r.probing, r.probe_at) = (true, now + period);
            let target = probe::Target {
                name: name.clone(),
                port: r.port,
                pid: handle.pid,
            };
            let (tx, wake, probe) = (
                self.events.0.clone(),
                self.parts.wake.clone(),
                probe.clone(),
            );
            tokio::spawn(async move {
                let ok = probe::ready(&probe, &target).await;
                let _ = tx.send(Event::Probed {
                    name: target.name,
                    ok,
                });
                wake.notify_one();
            });
        }
        if let Some(at) = self
            .replicas
            .values()
            .filter(|r| r.state == ReplicaState::Starting)
            .map(|r| r.probe_at)
            .min()
        {
            self.next_wake = Some(self.next_wake.map_or(at, |w| w.min(at)));
        }
    }

    /// Stops draining replicas that are idle, where the source cannot tell them to stop
    /// by themselves (pushed signals).
    pub(super) fn stop_idle_drained(&mut self) {
        let idle: Vec<String> = self
            .replicas
            .iter()
            .filter(|(_, r)| {
                r.state == ReplicaState::Draining
                    && !r.stops_itself
                    && r.active == 0
                    && !r.stopping
                    && r.handle.is_some()
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in idle {
            self.stop_in_background(&name);
        }
    }

    fn stop_in_background(&mut self, name: &str) {
        let (Some(actuator), Some(r)) = (self.actuator(), self.replicas.get_mut(name)) else {
            return;
        };
        let Some(handle) = r.handle.clone() else {
            return;
        };
        r.stopping = true;
        let grace = *self.parts.config.stop_grace_seconds.get_ref();
        let (tx, wake, name) = (
            self.events.0.clone(),
            self.parts.wake.clone(),
            name.to_owned(),
        );
        tokio::spawn(async move {
            actuator.stop(&handle, grace).await;
            let _ = tx.send(Event::Stopped { name });
            wake.notify_one();
        });
    }

    pub(super) async fn apply(&mut self, desired: u32) -> Result<(), SourceError> {
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

    /// Starts one replica in the background; false when the node has no room left.
    fn start_one(&mut self) -> bool {
        let Some(actuator) = self.actuator() else {
            return false;
        };
        let Some(slot) = self.free_slots.pop_first() else {
            return false;
        };
        self.next_id += 1;
        let name = format!(
            "{}-{}-{}",
            self.status.name,
            std::process::id(),
            self.next_id
        );
        let per = self.parts.config.gpus_per_replica;
        let spec = ReplicaSpec {
            name: name.clone(),
            slot,
            gpus: (per > 0).then(|| {
                (slot * per..(slot + 1) * per)
                    .map(|g| g.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            }),
            port: self.parts.config.port(slot),
        };
        let now = Instant::now();
        self.replicas.insert(
            name.clone(),
            Replica {
                handle: None,
                decided: now,
                state: ReplicaState::Starting,
                active: 0,
                idle_since: None,
                slot,
                gpus: spec.gpus.clone(),
                port: spec.port,
                adopted: false,
                stopping: false,
                stops_itself: false,
                probe_at: now,
                probing: false,
            },
        );
        self.status.starts += 1;
        self.spawn_start(actuator, spec);
        true
    }

    fn spawn_start(&self, actuator: Arc<dyn Actuator>, spec: ReplicaSpec) {
        let (node, config) = (self.parts.node.clone(), self.parts.config.clone());
        let (tx, wake) = (self.events.0.clone(), self.parts.wake.clone());
        tokio::spawn(async move {
            let started = async {
                // Resolved once, for the prewarm and the start alike.
                let image = match &config.image {
                    Some(reference) => Some(
                        replica::resolve(&node, reference)
                            .await
                            .map_err(|e| e.to_string())?,
                    ),
                    None => None,
                };
                match replica::prewarm(&node, image, &config).await {
                    Ok(()) => {
                        let _ = tx.send(Event::Prewarmed);
                    }
                    Err(e) => {
                        tracing::warn!(replica = %spec.name, error = %e, "prewarm before the start failed; starting lazily");
                    }
                }
                let exe = actuator.worker_exe()?;
                let command = replica_command(&config, &spec.name, &exe);
                actuator.start(&spec, image, command).await
            };
            let event = match started.await {
                Ok(handle) => Event::Created {
                    name: spec.name,
                    handle,
                },
                Err(error) => Event::Failed {
                    name: spec.name,
                    error,
                },
            };
            let _ = tx.send(event);
            wake.notify_one();
        });
    }

    /// Drains one replica: a starting one first, then the one idle longest, else the
    /// least busy; it finishes the work in hand before it stops, so scale-down never
    /// kills a replica that is working.
    async fn drain_one(&mut self) -> Result<(), SourceError> {
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
        // A queue's worker stops by itself after its task; otherwise the loop stops the
        // replica once the gateway reports it idle.
        let stops_itself = self.parts.source.drain(&name).await?;
        if let Some(r) = self.replicas.get_mut(&name) {
            (r.state, r.stops_itself) = (ReplicaState::Draining, stops_itself);
        }
        Ok(())
    }

    /// At shutdown: every replica drained and stopped, its work back on the source;
    /// or, when asked to, left running (a process replica) for the next daemon.
    pub(super) async fn stop_all(&mut self) {
        let Some(actuator) = self.actuator() else {
            return;
        };
        let grace = *self.parts.config.stop_grace_seconds.get_ref();
        if self.parts.leave_running && actuator.outlives_daemon() {
            tracing::info!(deployment = %self.status.name, replicas = self.replicas.len(), "leaving replicas running for the next daemon");
            for h in self.replicas.values().filter_map(|r| r.handle.as_ref()) {
                actuator.leave(h).await;
            }
            return;
        }
        let names: Vec<String> = self.replicas.keys().cloned().collect();
        for name in names {
            let _ = self.parts.source.drain(&name).await;
            if let Some(h) = self.replicas.get(&name).and_then(|r| r.handle.clone()) {
                actuator.stop(&h, grace).await;
            }
            if let Ok(moved) = self.parts.source.requeue(&name).await {
                self.status.requeued += moved;
            }
            self.forget(&name);
        }
        self.parts.board.publish(self.status.clone());
    }
}
