//! Lazy layers: a layer chain thaw knows (a chain-id tag naming the flattened image of
//! those layers) is mounted read-only from the shared reader, with a holder keeping each
//! mount's connection so that containers on it outlive a restart of the daemon.

use crate::Node;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thaw_core::tag::chain_hex;
use thaw_core::ImageId;
use thaw_fuse::session::{Image, MountSession, SessionSpec};
use thaw_fuse::{FsConfig, MountOptions};
use thaw_snapshotter::{RemoteLayer, RemoteLayers, SnapshotError};

/// Mount records of lazy layers carry ids with this prefix.
const RECORD_PREFIX: &str = "layer-";

/// The daemon's lazy layers.
#[derive(Debug)]
pub struct LazyLayers {
    node: Arc<Node>,
    dir: PathBuf,
    live: tokio::sync::Mutex<HashMap<String, MountSession>>,
}

impl LazyLayers {
    /// Lazy layers mounted under `dir`.
    pub fn new(node: Arc<Node>, dir: &Path) -> Self {
        LazyLayers {
            node,
            dir: dir.to_path_buf(),
            live: tokio::sync::Mutex::default(),
        }
    }

    fn remote_err(layer: &str, e: impl std::fmt::Display) -> SnapshotError {
        SnapshotError::Remote {
            layer: layer.to_string(),
            reason: e.to_string(),
        }
    }

    /// Serves again the layer mounts a dead predecessor left held; returns how many.
    /// Run before the containers' adoption, which removes held mounts nobody claims.
    pub async fn adopt(&self) -> usize {
        let registry = self.node.mounts.settings().registry.clone();
        let mut live = self.live.lock().await;
        for record in registry.list() {
            let chain = record
                .mountpoint
                .parent()
                .and_then(|d| d.file_name())
                .map(|h| format!("sha256:{}", h.to_string_lossy()));
            let (Some(chain), true) = (chain, record.id.starts_with(RECORD_PREFIX)) else {
                continue;
            };
            if !record.adoptable() || !record.mountpoint.starts_with(&self.dir) {
                continue;
            }
            match self.adopt_one(record.clone()).await {
                Ok(session) => {
                    live.insert(chain, session);
                }
                Err(why) => {
                    tracing::warn!(mount = %record.id, why, "a lazy layer was not adopted: cleaning up");
                    thaw_fuse::registry::clean_up(&record);
                    registry.remove(&record.mountpoint);
                }
            }
        }
        live.len()
    }

    async fn adopt_one(
        &self,
        record: thaw_fuse::registry::MountRecord,
    ) -> Result<MountSession, String> {
        let id: ImageId = record.image.parse().map_err(|e| format!("{e}"))?;
        let manifest = self.node.manifest(&id).await.map_err(|e| e.message)?;
        let settings = self.node.mounts.settings();
        MountSession::adopt(
            self.node.reader.clone(),
            Image { id, manifest },
            record,
            FsConfig::default(),
            self.options(),
            settings.registry.clone(),
        )
        .await
        .map_err(|e| e.to_string())
    }

    fn options(&self) -> MountOptions {
        let settings = self.node.mounts.settings();
        MountOptions {
            threads: settings.threads,
            kernel_readahead: settings.kernel_readahead,
            holder: settings.holder.clone(),
            ..Default::default()
        }
    }

    /// Leaves every layer mounted (held) for the next daemon.
    pub async fn detach_all(&self) {
        for (_, session) in self.live.lock().await.drain() {
            // Not ended: ending would unmount. The holder keeps the connection until
            // the next daemon adopts it, as for containers left running.
            std::mem::forget(session);
        }
    }
}

#[async_trait::async_trait]
impl RemoteLayers for LazyLayers {
    async fn resolve(
        &self,
        chain_id: &str,
        _labels: &BTreeMap<String, String>,
    ) -> Result<Option<RemoteLayer>, SnapshotError> {
        let Some(tag) = thaw_core::tag::chain_tag(chain_id) else {
            return Ok(None);
        };
        let found = self
            .node
            .repo
            .get_tag(&tag)
            .await
            .map_err(|e| Self::remote_err(chain_id, e))?;
        let Some(image) = found else {
            return Ok(None);
        };
        let manifest = self
            .node
            .manifest(&image)
            .await
            .map_err(|e| Self::remote_err(chain_id, e.message))?;
        let summary = manifest.summary();
        Ok(Some(RemoteLayer {
            chain_id: chain_id.to_string(),
            image: image.to_string(),
            size: i64::try_from(summary.file_bytes).unwrap_or(i64::MAX),
            inodes: i64::try_from(summary.inodes).unwrap_or(i64::MAX),
        }))
    }

    async fn mount(&self, layer: &RemoteLayer) -> Result<PathBuf, SnapshotError> {
        let mut live = self.live.lock().await;
        if let Some(s) = live.get(&layer.chain_id) {
            if s.is_mounted() {
                return Ok(s.mountpoint().to_path_buf());
            }
        }
        let hex = chain_hex(&layer.chain_id)
            .ok_or_else(|| Self::remote_err(&layer.chain_id, "not a sha256 chain id"))?;
        let id: ImageId = layer
            .image
            .parse()
            .map_err(|e| Self::remote_err(&layer.chain_id, format!("{e}")))?;
        let manifest = self
            .node
            .manifest(&id)
            .await
            .map_err(|e| Self::remote_err(&layer.chain_id, e.message))?;
        let mountpoint = self.dir.join(hex).join("root");
        std::fs::create_dir_all(&mountpoint).map_err(|e| Self::remote_err(&layer.chain_id, e))?;
        let spec = SessionSpec {
            // Unique per mount point: another daemon's snapshotter on this node may
            // serve the same chain, and the id names the mount's open table.
            id: format!(
                "{RECORD_PREFIX}{}",
                &blake3::hash(mountpoint.as_os_str().as_encoded_bytes()).to_hex()[..16]
            ),
            mountpoint,
            fs: FsConfig::default(),
            options: self.options(),
            record_trace: None,
            requested_by: format!("containerd snapshotter, chain {}", layer.chain_id),
            daemon: self.node.mounts.settings().api_address.clone(),
        };
        let session = MountSession::start(
            self.node.reader.clone(),
            Image { id, manifest },
            spec,
            self.node.mounts.settings().registry.clone(),
            None,
        )
        .await
        .map_err(|e| Self::remote_err(&layer.chain_id, e))?;
        let path = session.mountpoint().to_path_buf();
        live.insert(layer.chain_id.clone(), session);
        tracing::info!(chain = %layer.chain_id, image = %layer.image, "mounted a lazy layer");
        Ok(path)
    }

    async fn release(&self, layer: &RemoteLayer) -> Result<(), SnapshotError> {
        let session = self.live.lock().await.remove(&layer.chain_id);
        if let Some(session) = session {
            session
                .end()
                .await
                .map_err(|e| Self::remote_err(&layer.chain_id, e))?;
        }
        if let Some(hex) = chain_hex(&layer.chain_id) {
            let _ = std::fs::remove_dir_all(self.dir.join(hex));
        }
        Ok(())
    }
}
