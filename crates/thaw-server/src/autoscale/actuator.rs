//! What starts and stops a deployment's replicas on this node: the seam between the loop
//! and containers (`thaw run` from the lazily mounted image) or plain processes. An
//! actuator knows nothing of policies or queues; the loop tells it which replica to start
//! (its name, slot, GPUs and port) and which to stop.

use async_trait::async_trait;
use thaw_autoscale::config::DeploymentConfig;
use thaw_core::ImageId;

/// What one replica is started with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct ReplicaSpec {
    /// Its name, unique on the node.
    pub name: String,
    /// Its slot: which share of the node's GPUs and which port it has.
    pub slot: u32,
    /// Its `CUDA_VISIBLE_DEVICES`.
    pub gpus: Option<String>,
    /// Its `THAW_PORT`.
    pub port: Option<u16>,
}

/// A started replica: a container's id, or a process group's leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Handle {
    /// The container's id, or the process's pid in decimal.
    pub id: String,
    /// The replica's main process, where known (for command probes).
    pub pid: Option<u32>,
}

/// Starts and stops one deployment's replicas.
#[async_trait]
pub(super) trait Actuator: Send + Sync {
    /// `containers` or `process`.
    fn kind(&self) -> &'static str;
    /// Starts `spec` running `command` (from [`replica_command`]); `image` is the
    /// deployment's image, resolved (and its prewarm begun) by the loop.
    async fn start(
        &self,
        spec: &ReplicaSpec,
        image: Option<ImageId>,
        command: Vec<String>,
    ) -> Result<Handle, String>;
    /// Whether the replica has exited (or is gone).
    fn exited(&self, handle: &Handle) -> bool;
    /// Stops it (SIGTERM, then SIGKILL after `grace` seconds) and forgets it.
    async fn stop(&self, handle: &Handle, grace: f64);
    /// Replicas an earlier daemon started that still run, now this actuator's.
    async fn adopt(&self) -> Vec<(ReplicaSpec, Handle)>;
    /// Whether its replicas can outlive the daemon (and be adopted by the next one).
    fn outlives_daemon(&self) -> bool;
    /// Leaves a replica running when the daemon stops, for the next daemon to adopt.
    async fn leave(&self, _handle: &Handle) {}
    /// Where a replica finds `thaw autoscale worker`.
    fn worker_exe(&self) -> Result<String, String> {
        std::env::current_exe()
            .map(|p| p.display().to_string())
            .map_err(|e| format!("finding the worker binary: {e}"))
    }
}

/// What a replica runs: with a Redis source, `thaw autoscale worker` (at `worker_exe`)
/// taking tasks and running the deployment's command for each; with a push source, the
/// command itself (empty: the image's entrypoint).
pub(super) fn replica_command(d: &DeploymentConfig, name: &str, worker_exe: &str) -> Vec<String> {
    let Some((redis, queue)) = d.source.get_ref().redis() else {
        return d.command.clone();
    };
    let mut command = vec![
        worker_exe.to_string(),
        "autoscale".into(),
        "worker".into(),
        "--redis".into(),
        redis.to_string(),
        "--queue".into(),
        queue.to_string(),
        "--replica".into(),
        name.to_string(),
        "--".into(),
    ];
    command.extend(d.command.iter().cloned());
    command
}

/// The environment every replica gets besides its command's.
pub(super) fn replica_env(deployment: &str, spec: &ReplicaSpec) -> Vec<(String, String)> {
    let mut env = vec![
        ("THAW_DEPLOYMENT".to_string(), deployment.to_string()),
        ("THAW_REPLICA".to_string(), spec.name.clone()),
    ];
    if let Some(g) = &spec.gpus {
        env.push(("CUDA_VISIBLE_DEVICES".into(), g.clone()));
    }
    if let Some(p) = spec.port {
        env.push(("THAW_PORT".into(), p.to_string()));
    }
    env
}
