//! Local replicas: each a container the daemon starts from the deployment's image (lazily
//! mounted through the node's shared reader, after a prewarm of the image and its weights
//! has begun), running `thaw autoscale worker` bind-mounted from the daemon's own binary.

use crate::error::ApiError;
use crate::Node;
use std::sync::Arc;
use thaw_api::api::{self, NamedScope, Scope};
use thaw_autoscale::config::DeploymentConfig;
use thaw_core::ImageId;

/// Where the worker binary appears inside a replica.
const WORKER_PATH: &str = "/usr/local/bin/thaw";

/// The image `reference` names in the store (a tag or an id).
pub(super) async fn resolve(node: &Node, reference: &str) -> Result<ImageId, ApiError> {
    let r = crate::validate::image_ref(reference, node.require_image_ids)?;
    Ok(node.repo.resolve(r).await?)
}

/// Starts prewarms of the deployment's image and weights (the trace's chunks where the
/// image has a start-up trace, else every chunk): they run beside the replica's start,
/// and its on-demand reads go first.
pub(super) async fn prewarm(
    node: &Node,
    image: ImageId,
    weights: Option<&str>,
) -> Result<(), ApiError> {
    let weights = match weights {
        Some(w) => Some(resolve(node, w).await?),
        None => None,
    };
    for id in std::iter::once(image).chain(weights) {
        let trace = node.prewarm(id, Scope::Named(NamedScope::Trace)).await;
        match trace {
            Err(e) if e.code == api::ErrorCode::NoTrace => {
                node.prewarm(id, Scope::Named(NamedScope::All)).await?;
            }
            other => {
                other?;
            }
        }
    }
    Ok(())
}

/// Starts replica `name` of `d`; returns its container's id.
pub(super) async fn start(
    node: &Arc<Node>,
    d: &DeploymentConfig,
    image: ImageId,
    name: &str,
    gpus: Option<&str>,
) -> Result<String, ApiError> {
    let exe = std::env::current_exe().map_err(|e| {
        ApiError::new(
            api::ErrorCode::Internal,
            format!("finding the worker binary: {e}"),
        )
    })?;
    let mut command = vec![
        WORKER_PATH.to_string(),
        "autoscale".into(),
        "worker".into(),
        "--redis".into(),
        d.source.redis.clone(),
        "--queue".into(),
        d.source.queue.clone(),
        "--replica".into(),
        name.to_string(),
        "--".into(),
    ];
    command.extend(d.command.iter().cloned());
    let mut env = Vec::new();
    if let Some(g) = gpus {
        env.push(format!("CUDA_VISIBLE_DEVICES={g}"));
    }
    let req = api::ContainerRequest {
        image: d.image.clone(),
        command,
        env,
        name: Some(name.to_string()),
        runtime: Some(d.runtime.clone()),
        mounts: vec![format!("{}:{WORKER_PATH}:ro", exe.display())],
        host_network: true,
        ..api::ContainerRequest::default()
    };
    let manifest = node.manifest(&image).await?;
    let c = node
        .containers
        .create(manifest, &node.reader, image, &req)
        .await?;
    Ok(c.view().id)
}

/// Whether the container `id` has exited (or is gone).
pub(super) fn exited(node: &Node, id: &str) -> bool {
    node.containers
        .get(id)
        .map_or(true, |c| c.view().state == "exited")
}

/// Stops (SIGTERM, then SIGKILL after `grace` seconds) and removes the container `id`.
pub(super) async fn remove(node: &Node, id: &str, grace: f64) {
    if !exited(node, id) {
        let _ = node
            .containers
            .stop(
                id,
                std::time::Duration::from_secs_f64(grace.clamp(0.0, 3600.0)),
            )
            .await;
    }
    if let Err(e) = node.containers.remove(id).await {
        tracing::warn!(container = id, error = %e, "could not remove a replica's container");
    }
}
