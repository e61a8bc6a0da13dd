//! Weights resident on the node: the daemon's resident tier (filled by `POST /v1/prewarm`
//! with `weights`), its hand-off socket for serving processes, and its metrics.

use crate::{validate, Node, ServeError};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thaw_gpu::handoff::{HandoffRequest, ModelSource};
use thaw_gpu::resident::{normalise, ResidentModel};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

/// How the daemon keeps weights.
#[derive(Debug, Clone, Default)]
pub struct WeightsSettings {
    /// The resident tier's bound in bytes (0: no tier).
    pub resident_bytes: u64,
    /// Hand resident weights to serving processes on this unix socket (mode 0600, or
    /// 0660 with the API socket's group).
    pub socket: Option<PathBuf>,
}

/// The node as a source of resident models for the hand-off.
#[derive(Debug)]
pub struct NodeModels(pub Arc<Node>);

#[async_trait::async_trait]
impl ModelSource for NodeModels {
    async fn model(&self, request: &HandoffRequest) -> Result<Arc<ResidentModel>, String> {
        let node = &self.0;
        let tier = node
            .resident
            .as_ref()
            .ok_or("this daemon keeps no resident weights (start it with --resident-weights)")?;
        let image_ref =
            validate::image_ref(&request.image, node.require_image_ids).map_err(|e| e.message)?;
        let image = node
            .repo
            .resolve(image_ref)
            .await
            .map_err(|e| e.to_string())?;
        let manifest = node.manifest(&image).await.map_err(|e| e.message)?;
        let model = tier
            .get_or_load(node.reader.clone(), &manifest, image, &request.path)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(target: "thaw::audit", %image, path = %request.path, "weights handed over");
        Ok(model)
    }
}

/// Binds the hand-off socket (replacing a stale one), mode 0600 or 0660 with `group`.
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Bind {
        addr: path.display().to_string(),
        source,
    };
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ServeError::SocketInUse(path.display().to_string()));
    }
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(err)?;
    }
    Ok(listener)
}

/// Serves hand-offs until `stop`.
pub fn spawn(node: &Arc<Node>, listener: UnixListener, stop: &CancellationToken) {
    let source: Arc<dyn ModelSource> = Arc::new(NodeModels(node.clone()));
    tokio::spawn(thaw_gpu::handoff::serve(
        listener,
        source,
        stop.clone().cancelled_owned(),
    ));
}

/// A deployment's own hand-off: only its weights image and files, whoever asks. What its
/// replicas get, so that a replica can read no other image's weights.
#[derive(Debug)]
pub struct DeploymentModels {
    node: Arc<Node>,
    image: String,
    files: Vec<String>,
}

#[async_trait::async_trait]
impl ModelSource for DeploymentModels {
    async fn model(&self, request: &HandoffRequest) -> Result<Arc<ResidentModel>, String> {
        let path = normalise(&request.path);
        if request.image != self.image || !self.files.iter().any(|f| normalise(f) == path) {
            return Err(format!(
                "this socket hands over only {} of {}",
                self.files.join(", "),
                self.image
            ));
        }
        NodeModels(self.node.clone()).model(request).await
    }
}

/// Binds a deployment's hand-off socket at `path` and serves `files` of `image` on it
/// until `stop`. The socket is open to every user (replicas may run as any user in their
/// containers), in a directory of its own that containers bind-mount (so that a
/// restarted daemon's new socket reaches the replicas it adopts), under a directory only
/// the daemon's user can enter: on the host only that user reaches it.
pub fn serve_deployment(
    node: &Arc<Node>,
    path: &Path,
    image: &str,
    files: &[String],
    stop: &CancellationToken,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        if let Some(guard) = dir.parent() {
            std::fs::set_permissions(guard, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    let source: Arc<dyn ModelSource> = Arc::new(DeploymentModels {
        node: node.clone(),
        image: image.to_owned(),
        files: files.to_vec(),
    });
    tokio::spawn(thaw_gpu::handoff::serve(
        listener,
        source,
        stop.clone().cancelled_owned(),
    ));
    Ok(())
}
