//! The snapshot operations with containerd's semantics, on directories under the root:
//! `snapshots/ID/fs` (the tree, or an overlay upper) and `snapshots/ID/work`.

use crate::meta::{now_ns, Kind, Meta, Record};
use crate::mounts::{mounts_for, Mount};
use crate::remote::{RemoteLayer, RemoteLayers};
use crate::{SnapshotError, TARGET_REF_LABEL};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Labels larger than this (key and value together) are refused, as containerd does.
const MAX_LABEL_BYTES: usize = 4096;

/// Disk use of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes allocated.
    pub size: i64,
    /// Inodes.
    pub inodes: i64,
}

/// A snapshotter rooted at a directory of the state directory.
#[derive(Debug)]
pub struct Snapshotter {
    root: PathBuf,
    meta: tokio::sync::Mutex<Meta>,
    remote: Arc<dyn RemoteLayers>,
}

impl Snapshotter {
    /// Opens (or creates) the snapshotter at `root`, with lazy layers from `remote`.
    pub fn open(root: &Path, remote: Arc<dyn RemoteLayers>) -> Result<Self, SnapshotError> {
        let snapshots = root.join("snapshots");
        std::fs::create_dir_all(&snapshots).map_err(SnapshotError::io("create", &snapshots))?;
        let meta = Meta::load(&root.join("metadata.json"))?;
        Ok(Snapshotter {
            root: root.to_path_buf(),
            meta: tokio::sync::Mutex::new(meta),
            remote,
        })
    }

    fn meta_path(&self) -> PathBuf {
        self.root.join("metadata.json")
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// Creates a writable snapshot `key` on `parent` (empty: none). With the target label
    /// of a layer thaw serves, commits that layer instead and answers `AlreadyExists`.
    pub async fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(Kind::Active, key, parent, labels).await
    }

    /// Creates a read-only view `key` of `parent`.
    pub async fn view(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(Kind::View, key, parent, labels).await
    }

    async fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        check_key(key)?;
        check_labels(&labels)?;
        if let Some(target) = labels
            .get(TARGET_REF_LABEL)
            .filter(|_| kind == Kind::Active)
        {
            if let Some(layer) = self.remote.resolve(target, &labels).await? {
                return Err(self
                    .commit_remote(target, parent, labels.clone(), layer)
                    .await);
            }
        }
        let mut meta = self.meta.lock().await;
        if meta.snapshots.contains_key(key) {
            return Err(SnapshotError::AlreadyExists(key.into()));
        }
        let parent = self.committed_parent(&meta, parent)?;
        let id = meta.next_id;
        meta.next_id += 1;
        let dir = self.dir(id);
        for sub in ["fs", "work"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(SnapshotError::io("create", &d))?;
        }
        let now = now_ns();
        let record = Record {
            id,
            kind,
            parent,
            labels,
            created_ns: now,
            updated_ns: now,
            remote: None,
            usage: None,
        };
        if let Err(e) = self.insert_saved(&mut meta, key, record) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        self.mounts_locked(&meta, key).await
    }

    /// `parent` by name, which must be committed; `None` for the empty name.
    fn committed_parent(&self, meta: &Meta, parent: &str) -> Result<Option<String>, SnapshotError> {
        if parent.is_empty() {
            return Ok(None);
        }
        match meta.snapshots.get(parent) {
            None => Err(SnapshotError::NotFound(parent.into())),
            Some(r) if r.kind != Kind::Committed => Err(SnapshotError::FailedPrecondition(
                format!("parent {parent:?} is not committed"),
            )),
            Some(_) => Ok(Some(parent.to_string())),
        }
    }

    /// Records `layer` as the committed snapshot `target` and returns the
    /// `AlreadyExists` that tells containerd so (or the error that stopped it).
    async fn commit_remote(
        &self,
        target: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        layer: RemoteLayer,
    ) -> SnapshotError {
        let mut meta = self.meta.lock().await;
        if meta.snapshots.contains_key(target) {
            // Another pull (another namespace) committed it first: the same layer.
            return SnapshotError::AlreadyExists(target.into());
        }
        let parent = match self.committed_parent(&meta, parent) {
            Ok(p) => p,
            Err(e) => return e,
        };
        let id = meta.next_id;
        meta.next_id += 1;
        let now = now_ns();
        let usage = Some((layer.size, layer.inodes));
        let record = Record {
            id,
            kind: Kind::Committed,
            parent,
            labels,
            created_ns: now,
            updated_ns: now,
            remote: Some(layer),
            usage,
        };
        if let Err(e) = self.insert_saved(&mut meta, target, record) {
            return e;
        }
        tracing::info!(target, "committed a lazy layer");
        SnapshotError::AlreadyExists(target.into())
    }

    /// Records `record` as `name` and saves the metadata; on a failed save the record is
    /// taken back, so memory and file never disagree.
    fn insert_saved(
        &self,
        meta: &mut Meta,
        name: &str,
        record: Record,
    ) -> Result<(), SnapshotError> {
        meta.snapshots.insert(name.to_string(), record);
        let saved = meta.save(&self.meta_path());
        if saved.is_err() {
            meta.snapshots.remove(name);
        }
        saved
    }

    /// The mounts of an active snapshot or a view.
    pub async fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let meta = self.meta.lock().await;
        self.mounts_locked(&meta, key).await
    }

    async fn mounts_locked(&self, meta: &Meta, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let record = meta
            .snapshots
            .get(key)
            .ok_or_else(|| SnapshotError::NotFound(key.into()))?;
        if record.kind == Kind::Committed {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key:?} is committed: it has no mounts"
            )));
        }
        let mut lowers = Vec::new();
        let mut next = record.parent.clone();
        while let Some(name) = next {
            let r = meta
                .snapshots
                .get(&name)
                .ok_or_else(|| SnapshotError::NotFound(name.clone()))?;
            if let Some(layer) = &r.remote {
                // A lazy layer is the whole chain below it, flattened.
                lowers.push(self.remote.mount(layer).await?);
                break;
            }
            lowers.push(self.dir(r.id).join("fs"));
            next = r.parent.clone();
        }
        let dir = self.dir(record.id);
        Ok(mounts_for(
            record.kind == Kind::Active,
            &dir.join("fs"),
            &dir.join("work"),
            &lowers,
        ))
    }
}

pub(crate) fn check_key(key: &str) -> Result<(), SnapshotError> {
    if key.is_empty() {
        return Err(SnapshotError::InvalidArgument(
            "a snapshot key is empty".into(),
        ));
    }
    Ok(())
}

pub(crate) fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), SnapshotError> {
    match labels
        .iter()
        .find(|(k, v)| k.len() + v.len() > MAX_LABEL_BYTES)
    {
        Some((k, _)) => Err(SnapshotError::InvalidArgument(format!(
            "label {k:?}: key and value exceed {MAX_LABEL_BYTES} bytes"
        ))),
        None => Ok(()),
    }
}

#[path = "snapshotter_ops.rs"]
mod ops;
