//! The event loop of one tenant's simulation.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use super::report::{Report, Sample};
use super::SimConfig;
use crate::policy::Policy;
use crate::trace::Request;
use crate::{ReplicaState, ReplicaView, Snapshot};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Arrival(usize),
    Done { replica: usize, request: usize },
    Ready(usize),
    Tick,
    Wake,
    Sample,
}

#[derive(Debug, Clone, Copy)]
struct Event {
    at: f64,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    /// Reversed, so that the heap pops the earliest (then the first scheduled) event.
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.total_cmp(&self.at).then(other.seq.cmp(&self.seq))
    }
}

#[derive(Debug, Clone)]
struct Replica {
    started: f64,
    state: ReplicaState,
    active: u32,
    idle_since: Option<f64>,
}

struct Engine<'a> {
    cfg: &'a SimConfig,
    requests: &'a [Request],
    now: f64,
    seq: u64,
    events: BinaryHeap<Event>,
    queue: VecDeque<usize>,
    replicas: Vec<Replica>,
    live: Vec<usize>,
    in_flight: u64,
    arrivals: u64,
    load_integral: f64,
    queue_integral: f64,
    service_sum: f64,
    completed: u64,
    next_wake: Option<f64>,
    report: Report,
}

/// Replays `requests` through `policy`.
pub(super) fn run(requests: &[Request], policy: &mut dyn Policy, cfg: &SimConfig) -> Report {
    let mut e = Engine::new(requests, policy.name(), cfg);
    let end = requests.last().map_or(0.0, |r| r.arrival) + cfg.tail;
    e.schedule(0.0, Kind::Tick);
    e.schedule(0.0, Kind::Sample);
    if !requests.is_empty() {
        e.schedule(requests[0].arrival, Kind::Arrival(0));
    }
    while let Some(ev) = e.events.pop() {
        let idle = e.queue.is_empty() && e.in_flight == 0;
        if ev.at > end && idle && matches!(ev.kind, Kind::Tick | Kind::Wake | Kind::Sample) {
            break;
        }
        e.advance(ev.at);
        e.handle(ev, policy);
    }
    e.finish()
}

impl<'a> Engine<'a> {
    fn new(requests: &'a [Request], name: &str, cfg: &'a SimConfig) -> Self {
        Engine {
            cfg,
            requests,
            now: 0.0,
            seq: 0,
            events: BinaryHeap::new(),
            queue: VecDeque::new(),
            replicas: Vec::new(),
            live: Vec::new(),
            in_flight: 0,
            arrivals: 0,
            load_integral: 0.0,
            queue_integral: 0.0,
            service_sum: 0.0,
            completed: 0,
            next_wake: None,
            report: Report::empty(name),
        }
    }

    fn schedule(&mut self, at: f64, kind: Kind) {
        self.seq += 1;
        self.events.push(Event {
            at,
            seq: self.seq,
            kind,
        });
    }

    fn advance(&mut self, to: f64) {
        let dt = (to - self.now).max(0.0);
        let queued = crate::policy::f(self.queue.len() as u64);
        self.load_integral += (queued + crate::policy::f(self.in_flight)) * dt;
        self.queue_integral += queued * dt;
        self.now = self.now.max(to);
    }

    fn handle(&mut self, ev: Event, policy: &mut dyn Policy) {
        match ev.kind {
            Kind::Arrival(i) => {
                self.arrivals += 1;
                self.queue.push_back(i);
                if i + 1 < self.requests.len() {
                    self.schedule(self.requests[i + 1].arrival, Kind::Arrival(i + 1));
                }
                if self.current() == 0 && policy.wakes_on_work_at_zero() {
                    self.decide(policy);
                }
            }
            Kind::Done { replica, request } => self.done(replica, request),
            Kind::Ready(r) => {
                if let Some(rep) = self
                    .replicas
                    .get_mut(r)
                    .filter(|rep| rep.state == ReplicaState::Starting)
                {
                    rep.state = ReplicaState::Ready;
                    rep.idle_since = Some(self.now);
                }
            }
            Kind::Tick => {
                self.decide(policy);
                self.schedule(self.now + policy.period(), Kind::Tick);
            }
            Kind::Wake => {
                if self.next_wake.is_some_and(|w| w <= self.now) {
                    self.next_wake = None;
                    self.decide(policy);
                }
            }
            Kind::Sample => {
                self.report.timeline.push(Sample {
                    at: self.now,
                    replicas: self.current(),
                    ready: self.count(ReplicaState::Ready),
                    queued: self.queue.len() as u64,
                });
                self.schedule(self.now + self.cfg.sample_every, Kind::Sample);
            }
        }
        self.dispatch();
    }

    fn done(&mut self, replica: usize, request: usize) {
        self.in_flight -= 1;
        let r = &self.requests[request];
        let latency = self.now - r.arrival;
        self.report.latencies.push(latency);
        self.report.served += 1;
        if latency <= self.cfg.slo {
            self.report.within_slo += 1;
        }
        self.service_sum += r.service;
        self.completed += 1;
        let Some(rep) = self.replicas.get_mut(replica) else {
            return;
        };
        rep.active = rep.active.saturating_sub(1);
        if rep.active == 0 {
            rep.idle_since = Some(self.now);
            if rep.state == ReplicaState::Draining {
                self.stop(replica);
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        let replicas = self
            .live
            .iter()
            .map(|&i| &self.replicas[i])
            .map(|r| ReplicaView {
                state: r.state,
                active: r.active,
                idle_since: if r.state == ReplicaState::Ready {
                    r.idle_since
                } else {
                    None
                },
            })
            .collect();
        Snapshot {
            now: self.now,
            queued: self.queue.len() as u64,
            in_flight: self.in_flight,
            replicas,
            arrivals_total: self.arrivals,
            load_integral: self.load_integral,
            queue_integral: self.queue_integral,
            service_time: (self.completed > 0)
                .then(|| self.service_sum / crate::policy::f(self.completed)),
            cold_start: self.cfg.cold_start,
            concurrency: self.cfg.concurrency,
        }
    }

    fn decide(&mut self, policy: &mut dyn Policy) {
        let decision = policy.decide(&self.snapshot());
        self.apply(decision.desired.min(self.cfg.max_replicas));
        if let Some(at) = decision.wake_at.filter(|&at| at > self.now) {
            if self.next_wake != Some(at) {
                self.next_wake = Some(at);
                self.schedule(at, Kind::Wake);
            }
        }
    }

    fn current(&self) -> u32 {
        self.count(ReplicaState::Starting) + self.count(ReplicaState::Ready)
    }

    fn count(&self, state: ReplicaState) -> u32 {
        let n = self
            .live
            .iter()
            .filter(|&&i| self.replicas[i].state == state)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn apply(&mut self, desired: u32) {
        let current = self.current();
        match desired.cmp(&current) {
            Ordering::Equal => return,
            Ordering::Greater => {
                for _ in current..desired {
                    self.start();
                }
            }
            Ordering::Less => {
                for _ in desired..current {
                    self.remove_one();
                }
            }
        }
        self.report.scale_events += 1;
    }

    fn start(&mut self) {
        let id = self.replicas.len();
        self.replicas.push(Replica {
            started: self.now,
            state: ReplicaState::Starting,
            active: 0,
            idle_since: None,
        });
        self.live.push(id);
        self.report.cold_starts += 1;
        self.schedule(self.now + self.cfg.cold_start, Kind::Ready(id));
    }

    /// Removes one replica: a starting one (the newest) first, then an idle one (idle the
    /// longest), else the least busy drains.
    fn remove_one(&mut self) {
        let pick = |e: &Engine, want: &dyn Fn(&Replica) -> bool| {
            e.live
                .iter()
                .copied()
                .filter(|&i| want(&e.replicas[i]))
                .collect::<Vec<_>>()
        };
        if let Some(&i) = pick(self, &|r| r.state == ReplicaState::Starting).last() {
            self.stop(i);
            return;
        }
        let idle = pick(self, &|r| r.state == ReplicaState::Ready && r.active == 0);
        if let Some(i) = idle.into_iter().min_by(|&a, &b| {
            let (x, y) = (self.replicas[a].idle_since, self.replicas[b].idle_since);
            x.unwrap_or(0.0).total_cmp(&y.unwrap_or(0.0))
        }) {
            self.stop(i);
            return;
        }
        let busy = pick(self, &|r| r.state == ReplicaState::Ready);
        if let Some(i) = busy.into_iter().min_by_key(|&i| self.replicas[i].active) {
            self.replicas[i].state = ReplicaState::Draining;
        }
    }

    fn stop(&mut self, i: usize) {
        self.report.replica_seconds += self.now - self.replicas[i].started;
        self.live.retain(|&j| j != i);
        // Its pending Ready event finds it no longer starting and does nothing.
        self.replicas[i].state = ReplicaState::Draining;
    }

    fn dispatch(&mut self) {
        while let Some(&front) = self.queue.front() {
            if self.now - self.requests[front].arrival > self.cfg.timeout {
                self.queue.pop_front();
                self.report.dropped += 1;
                continue;
            }
            let c = self.cfg.concurrency.max(1);
            let Some(r) = self
                .live
                .iter()
                .copied()
                .filter(|&i| {
                    self.replicas[i].state == ReplicaState::Ready && self.replicas[i].active < c
                })
                .min_by_key(|&i| self.replicas[i].active)
            else {
                return;
            };
            self.queue.pop_front();
            self.in_flight += 1;
            self.replicas[r].active += 1;
            let at = self.now + self.requests[front].service;
            self.schedule(
                at,
                Kind::Done {
                    replica: r,
                    request: front,
                },
            );
        }
    }

    fn finish(mut self) -> Report {
        for i in std::mem::take(&mut self.live) {
            self.report.replica_seconds += self.now - self.replicas[i].started;
        }
        self.report.dropped += self.queue.len() as u64;
        self.report
    }
}
