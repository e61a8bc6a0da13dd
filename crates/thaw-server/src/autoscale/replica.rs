//! Replicas as containers: each started from the deployment's image, lazily mounted
//! through the node's shared reader (after a prewarm of the image and its weights has
//! begun), with `thaw autoscale worker` bind-mounted from the daemon's own binary; and the
//! prewarm itself, which every local actuator shares.

use super::actuator::{replica_env, Actuator, Handle, ReplicaSpec};
use crate::error::ApiError;
use crate::Node;
use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use thaw_api::api::{self, NamedScope, Scope};
use thaw_autoscale::config::DeploymentConfig;
use thaw_core::ImageId;

/// Where the worker binary appears inside a replica.
pub(super) const WORKER_PATH: &str = "/usr/local/bin/thaw";

/// The image `reference` names in the store (a tag or an id).
pub(super) async fn resolve(node: &Node, reference: &str) -> Result<ImageId, ApiError> {
    let r = crate::validate::image_ref(reference, node.require_image_ids)?;
    Ok(node.repo.resolve(r).await?)
}

/// Where a container replica finds its deployment's weights socket: in a directory
/// bind-mounted from the host (a bind of the socket itself would keep the old socket
/// after a daemon restart).
pub(super) const WEIGHTS_SOCKET_PATH: &str = "/run/thaw/weights/weights.sock";
/// The directory the deployment's socket directory is bind-mounted on.
const WEIGHTS_SOCKET_DIR: &str = "/run/thaw/weights";
/// The socket's name in its directory, on the host and in the container.
pub(super) const WEIGHTS_SOCKET_NAME: &str = "weights.sock";

/// Starts prewarms of the deployment's image (the trace's chunks where the image has a
/// start-up trace, else every chunk) and of its weights: with `weights_files` and a
/// resident tier, a job that loads those files into the tier, so that the replica's
/// request on the weights socket finds them (or waits for that load, never a second
/// one). They run beside the replica's start, and its on-demand reads go first.
pub(super) async fn prewarm(
    node: &Node,
    image: Option<ImageId>,
    d: &DeploymentConfig,
) -> Result<(), ApiError> {
    let weights = match d.weights.as_deref() {
        Some(w) => Some(resolve(node, w).await?),
        None => None,
    };
    if let Some(id) = image {
        prewarm_chunks(node, id).await?;
    }
    let Some(id) = weights else {
        return Ok(());
    };
    let files = d.weights_files.get_ref();
    if files.is_empty() {
        return prewarm_chunks(node, id).await;
    }
    if node.resident.is_none() {
        tracing::warn!(deployment = %d.name.get_ref(), "weights_files need a daemon with --resident-weights: prewarming the weights image's chunks instead");
        return prewarm_chunks(node, id).await;
    }
    node.prewarm_weights(id, Scope::Named(NamedScope::Trace), files.clone())
        .await?;
    Ok(())
}

async fn prewarm_chunks(node: &Node, id: ImageId) -> Result<(), ApiError> {
    match node.prewarm(id, Scope::Named(NamedScope::Trace)).await {
        Err(e) if e.code == api::ErrorCode::NoTrace => {
            node.prewarm(id, Scope::Named(NamedScope::All)).await?;
        }
        other => {
            other?;
        }
    }
    Ok(())
}

/// What tells a replica where its resident weights are: its deployment's weights socket
/// (`socket`, as the replica sees it), the weights image and its files. Nothing without
/// a socket (no `weights_files`, or no resident tier).
pub(super) fn weights_env(d: &DeploymentConfig, socket: Option<&str>) -> Vec<(String, String)> {
    match (&d.weights, socket) {
        (Some(image), Some(socket)) => vec![
            ("THAW_WEIGHTS_SOCKET".into(), socket.to_owned()),
            ("THAW_WEIGHTS_IMAGE".into(), image.clone()),
            (
                "THAW_WEIGHTS_FILES".into(),
                d.weights_files.get_ref().join(","),
            ),
        ],
        _ => Vec::new(),
    }
}

/// Replicas as the daemon's containers.
#[derive(Debug)]
pub(super) struct ContainerActuator {
    pub node: Arc<Node>,
    pub config: DeploymentConfig,
    /// The deployment's weights socket on the host, bind-mounted into each replica.
    pub weights_socket: Option<std::path::PathBuf>,
    /// `STATE/autoscale/DEPLOYMENT.containers.json`: the replicas running, for the next
    /// daemon to adopt (with the containers themselves, see `Containers::adopt_orphans`).
    pub records_path: std::path::PathBuf,
    pub records: Mutex<BTreeMap<String, ContainerReplica>>,
}

/// One container replica, as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ContainerReplica {
    #[serde(flatten)]
    spec: ReplicaSpec,
    container: String,
}

impl ContainerActuator {
    fn save(&self) {
        super::persist::save_records(&self.records_path, &self.records);
    }
}

#[async_trait]
impl Actuator for ContainerActuator {
    fn kind(&self) -> &'static str {
        "containers"
    }

    async fn start(
        &self,
        spec: &ReplicaSpec,
        image: Option<ImageId>,
        command: Vec<String>,
    ) -> Result<Handle, String> {
        let (node, d) = (&self.node, &self.config);
        let (Some(image), Some(reference)) = (image, d.image.clone()) else {
            return Err("the containers actuator needs an image".into());
        };
        let exe = std::env::current_exe().map_err(|e| format!("finding the worker binary: {e}"))?;
        let socket = self.weights_socket.as_ref().map(|_| WEIGHTS_SOCKET_PATH);
        let weights = weights_env(d, socket);
        let mut mounts = vec![format!("{}:{WORKER_PATH}:ro", exe.display())];
        if let Some(dir) = self.weights_socket.as_ref().and_then(|s| s.parent()) {
            mounts.push(format!("{}:{WEIGHTS_SOCKET_DIR}:ro", dir.display()));
        }
        let req = api::ContainerRequest {
            image: reference,
            command,
            env: replica_env(d.name.get_ref(), spec)
                .into_iter()
                .chain(weights)
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            name: Some(spec.name.clone()),
            runtime: Some(d.runtime.clone()),
            mounts,
            host_network: true,
            ..api::ContainerRequest::default()
        };
        let manifest = node.manifest(&image).await.map_err(|e| e.to_string())?;
        let c = node
            .containers
            .create(manifest, &node.reader, image, &req)
            .await
            .map_err(|e| e.to_string())?;
        let view = c.view();
        let record = ContainerReplica {
            spec: spec.clone(),
            container: view.id.clone(),
        };
        self.records.lock().insert(spec.name.clone(), record);
        self.save();
        Ok(Handle {
            id: view.id,
            pid: view.pid,
        })
    }

    fn exited(&self, handle: &Handle) -> bool {
        self.node
            .containers
            .get(&handle.id)
            .map_or(true, |c| c.view().state == "exited")
    }

    async fn stop(&self, handle: &Handle, grace: f64) {
        let id = handle.id.as_str();
        if !self.exited(handle) {
            let _ = self
                .node
                .containers
                .stop(
                    id,
                    std::time::Duration::from_secs_f64(grace.clamp(0.0, 3600.0)),
                )
                .await;
        }
        if let Err(e) = self.node.containers.remove(id).await {
            tracing::warn!(container = id, error = %e, "could not remove a replica's container");
        }
        self.records.lock().retain(|_, r| r.container != handle.id);
        self.save();
    }

    fn outlives_daemon(&self) -> bool {
        self.node.containers.outlive_daemon()
    }

    async fn leave(&self, handle: &Handle) {
        if !self.node.containers.leave(&handle.id).await {
            tracing::warn!(container = %handle.id, "this replica cannot outlive the daemon: it stops with it");
        }
    }

    fn worker_exe(&self) -> Result<String, String> {
        Ok(WORKER_PATH.to_string())
    }

    async fn adopt(&self) -> Vec<(ReplicaSpec, Handle)> {
        // The node adopted the containers themselves at its start (their roots' FUSE
        // connections were held); those still running are this deployment's replicas.
        let saved: Vec<ContainerReplica> = super::persist::load_records(&self.records_path);
        let mut adopted = Vec::new();
        let mut records = BTreeMap::new();
        for r in saved {
            let Ok(c) = self.node.containers.get(&r.container) else {
                continue;
            };
            let view = c.view();
            if view.state != "running" {
                continue;
            }
            let handle = Handle {
                id: view.id,
                pid: view.pid,
            };
            adopted.push((r.spec.clone(), handle));
            records.insert(r.spec.name.clone(), r);
        }
        *self.records.lock() = records;
        self.save();
        adopted
    }
}
