//! The autoscaler's part of the API: each deployment's status, and the signals a gateway
//! pushes.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
/// `GET /v1/autoscale`: one autoscaled deployment, as its control loop last saw it.
pub struct DeploymentStatus {
    /// The deployment.
    pub name: String,
    /// Its policy.
    pub policy: String,
    /// The replica count last decided.
    pub desired: u32,
    /// Why, in a few words.
    pub reason: String,
    /// Replicas starting.
    pub starting: u32,
    /// Replicas ready.
    pub ready: u32,
    /// Replicas draining.
    pub draining: u32,
    /// Tasks waiting.
    pub queued: u64,
    /// Tasks being worked on.
    pub in_flight: u64,
    /// Tasks completed since the loop started.
    pub completed: u64,
    /// Decisions taken.
    pub decisions: u64,
    /// Replicas started.
    pub starts: u64,
    /// Prewarms (image and weights) begun before a replica's start.
    pub prewarms: u64,
    /// Replicas that exited without being asked to.
    pub crashes: u64,
    /// Tasks moved back to the queue from replicas that died.
    pub requeued: u64,
    /// The cold start the policy uses: the configured one until measured, then a moving
    /// average of measured starts (decision to readiness), seconds.
    pub cold_start_seconds: f64,
    /// Each measured start, seconds, oldest first (the last 64).
    pub start_seconds: Vec<f64>,
    /// The most replicas running at once so far.
    pub peak_replicas: u32,
    /// Where work is read from: `redis` or `push`.
    #[serde(default)]
    pub source: String,
    /// What runs replicas: `containers`, `process` or `webhook`.
    #[serde(default)]
    pub actuator: String,
    /// Seconds since a gateway last pushed signals (push sources).
    #[serde(default)]
    pub signal_age_seconds: Option<f64>,
    /// Replicas adopted from an earlier daemon (still running when it started).
    #[serde(default)]
    pub adopted: u64,
    /// Each replica: where a gateway sends work, and whether it should.
    #[serde(default)]
    pub replicas: Vec<ReplicaStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
/// One replica of an autoscaled deployment.
pub struct ReplicaStatus {
    /// Its name (unique on the node).
    pub name: String,
    /// `starting`, `ready` or `draining` (a gateway sends new work to `ready` ones only).
    pub state: String,
    /// The port it listens on (`port_base` + its slot), when the deployment has ports.
    #[serde(default)]
    pub port: Option<u16>,
    /// Tasks or requests it is working on.
    pub active: u32,
    /// Its GPUs (`CUDA_VISIBLE_DEVICES`), when it has some.
    #[serde(default)]
    pub gpus: Option<String>,
}

/// The most replicas one signal may report on.
pub const MAX_SIGNAL_REPLICAS: usize = 1024;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// `POST /v1/deployments/{name}/signals`: what a gateway in front of a deployment with
/// `push = true` sees, sent every second or so and whenever work arrives at zero.
pub struct Signals {
    /// Requests waiting for a replica.
    pub queued: u64,
    /// Requests being served.
    #[serde(default)]
    pub in_flight: u64,
    /// Requests completed, a counter that only grows (for the arrival rate).
    #[serde(default)]
    pub completed: Option<u64>,
    /// The mean service time of recent requests, seconds.
    #[serde(default)]
    pub service_seconds: Option<f64>,
    /// Requests in flight per replica (by name), so that scale-down picks idle replicas
    /// and waits for busy ones; at most [`MAX_SIGNAL_REPLICAS`].
    #[serde(default)]
    pub replicas: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
/// What the `webhook` actuator posts to an orchestrator: the replica count thaw decided,
/// and what it saw. Sent when the count changes and every 15 s otherwise.
pub struct WebhookScale {
    /// The deployment.
    pub deployment: String,
    /// The replicas it should have.
    pub desired: u32,
    /// Why, in a few words.
    pub reason: String,
    /// Work waiting.
    pub queued: u64,
    /// Work in hand.
    pub in_flight: u64,
    /// The cold start the decision assumed, seconds.
    pub cold_start_seconds: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
/// What an orchestrator may answer a [`WebhookScale`] with (any 2xx; an empty body
/// means it has the replicas asked for, all ready).
pub struct WebhookReply {
    /// Replicas it has (Kubernetes: `status.replicas`).
    #[serde(default)]
    pub replicas: Option<u32>,
    /// Replicas ready (`status.readyReplicas`).
    #[serde(default)]
    pub ready: Option<u32>,
}
