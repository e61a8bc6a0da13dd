//! The seam to lazy layers: which chain ids thaw can serve, and mounting them.

use crate::SnapshotError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A layer chain that a thaw image serves: the flattened tree of layers 1..i.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteLayer {
    /// The chain id containerd asked for.
    pub chain_id: String,
    /// The thaw image (by id) holding exactly that chain's tree.
    pub image: String,
    /// Bytes and inodes of the tree, for `Usage`.
    pub size: i64,
    /// Inodes of the tree.
    pub inodes: i64,
}

/// Lazy layers: implemented by the daemon with its mounts, so the snapshotter never
/// knows FUSE or the store.
#[async_trait::async_trait]
pub trait RemoteLayers: Send + Sync + std::fmt::Debug {
    /// The image that holds exactly the layers of `chain_id`, if thaw knows one.
    /// `labels` are the Prepare's (image reference, layer digest). An error (the store
    /// is down) fails the pull: it never turns into a silent full download.
    async fn resolve(
        &self,
        chain_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<RemoteLayer>, SnapshotError>;

    /// Mounts the layer's image read-only, or finds it mounted, and returns the
    /// directory to use as an overlay lower layer.
    async fn mount(&self, layer: &RemoteLayer) -> Result<PathBuf, SnapshotError>;

    /// The layer's snapshot was removed: its mount may end.
    async fn release(&self, layer: &RemoteLayer) -> Result<(), SnapshotError>;
}

/// Knows no lazy layers: every layer is unpacked by containerd.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRemoteLayers;

#[async_trait::async_trait]
impl RemoteLayers for NoRemoteLayers {
    async fn resolve(
        &self,
        _chain_id: &str,
        _labels: &BTreeMap<String, String>,
    ) -> Result<Option<RemoteLayer>, SnapshotError> {
        Ok(None)
    }

    async fn mount(&self, layer: &RemoteLayer) -> Result<PathBuf, SnapshotError> {
        Err(SnapshotError::Remote {
            layer: layer.chain_id.clone(),
            reason: "no lazy layers are configured".into(),
        })
    }

    async fn release(&self, _layer: &RemoteLayer) -> Result<(), SnapshotError> {
        Ok(())
    }
}
