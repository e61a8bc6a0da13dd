//! Commit, remove, stat, update, list, usage and cleanup.

use super::{check_labels, Snapshotter, Usage};
use crate::filter::Filter;
use crate::meta::{now_ns, Info, Kind};
use crate::usage::disk_usage;
use crate::SnapshotError;
use std::collections::{BTreeMap, HashSet};

impl Snapshotter {
    /// Commits the active snapshot `key` as `name`, with `labels`.
    pub async fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), SnapshotError> {
        super::check_key(name)?;
        check_labels(&labels)?;
        let mut meta = self.meta.lock().await;
        let record = meta
            .snapshots
            .get(key)
            .ok_or_else(|| SnapshotError::NotFound(key.into()))?;
        if record.kind != Kind::Active {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key:?} is not active: only active snapshots can be committed"
            )));
        }
        if meta.snapshots.contains_key(name) {
            return Err(SnapshotError::AlreadyExists(name.into()));
        }
        let usage = disk_usage(&self.dir(record.id).join("fs"))?;
        let old = meta
            .snapshots
            .remove(key)
            .ok_or_else(|| SnapshotError::NotFound(key.into()))?;
        let mut committed = old.clone();
        let now = now_ns();
        committed.kind = Kind::Committed;
        committed.labels = labels;
        committed.created_ns = now;
        committed.updated_ns = now;
        committed.usage = Some(usage);
        meta.snapshots.insert(name.to_string(), committed);
        if let Err(e) = meta.save(&self.meta_path()) {
            meta.snapshots.remove(name);
            meta.snapshots.insert(key.to_string(), old);
            return Err(e);
        }
        Ok(())
    }

    /// Removes `key`, which must have no children, and its directory (or lazy mount).
    pub async fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        let mut meta = self.meta.lock().await;
        if !meta.snapshots.contains_key(key) {
            return Err(SnapshotError::NotFound(key.into()));
        }
        if let Some(child) = meta.children(key).next() {
            return Err(SnapshotError::FailedPrecondition(format!(
                "cannot remove snapshot {key:?}: {child:?} is its child"
            )));
        }
        let record = meta
            .snapshots
            .remove(key)
            .ok_or_else(|| SnapshotError::NotFound(key.into()))?;
        if let Err(e) = meta.save(&self.meta_path()) {
            meta.snapshots.insert(key.to_string(), record);
            return Err(e);
        }
        drop(meta);
        // After the record is gone: a crash here leaves a directory Cleanup removes.
        if let Some(layer) = &record.remote {
            self.remote.release(layer).await?;
        }
        let dir = self.dir(record.id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(dir = %dir.display(), "removing a snapshot directory: {e}");
            }
            _ => {}
        }
        Ok(())
    }

    /// The info of `key`.
    pub async fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        let meta = self.meta.lock().await;
        meta.snapshots
            .get(key)
            .map(|r| r.info(key))
            .ok_or_else(|| SnapshotError::NotFound(key.into()))
    }

    /// Updates the labels of `info.name`: all of them when `paths` is empty or holds
    /// `labels`, one per `labels.KEY` path otherwise (absent from `info`: deleted).
    pub async fn update(&self, info: &Info, paths: &[String]) -> Result<Info, SnapshotError> {
        check_labels(&info.labels)?;
        let mut meta = self.meta.lock().await;
        let record = meta
            .snapshots
            .get_mut(&info.name)
            .ok_or_else(|| SnapshotError::NotFound(info.name.clone()))?;
        let old = record.clone();
        let mut labels = record.labels.clone();
        if paths.is_empty() || paths.iter().any(|p| p == "labels") {
            labels.clone_from(&info.labels);
        }
        for path in paths.iter().filter(|p| *p != "labels") {
            let Some(key) = path.strip_prefix("labels.") else {
                return Err(SnapshotError::InvalidArgument(format!(
                    "cannot update field {path:?} of snapshot {:?}",
                    info.name
                )));
            };
            match info.labels.get(key) {
                Some(v) => labels.insert(key.to_string(), v.clone()),
                None => labels.remove(key),
            };
        }
        record.labels = labels;
        record.updated_ns = now_ns();
        let updated = record.info(&info.name);
        if let Err(e) = meta.save(&self.meta_path()) {
            meta.snapshots.insert(info.name.clone(), old);
            return Err(e);
        }
        Ok(updated)
    }

    /// Every snapshot matching any of `filters` (all of them when there are none).
    pub async fn list(&self, filters: &[Filter]) -> Vec<Info> {
        let meta = self.meta.lock().await;
        meta.snapshots
            .iter()
            .map(|(name, r)| r.info(name))
            .filter(|i| filters.is_empty() || filters.iter().any(|f| f.matches(i)))
            .collect()
    }

    /// Disk use: measured for an active snapshot, recorded at commit otherwise.
    pub async fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        let (kind, id, recorded) = {
            let meta = self.meta.lock().await;
            let r = meta
                .snapshots
                .get(key)
                .ok_or_else(|| SnapshotError::NotFound(key.into()))?;
            (r.kind, r.id, r.usage)
        };
        let (size, inodes) = match (kind, recorded) {
            (Kind::Active, _) => disk_usage(&self.dir(id).join("fs"))?,
            (_, Some(u)) => u,
            (_, None) => (0, 0),
        };
        Ok(Usage { size, inodes })
    }

    /// Removes snapshot directories no record names (left by a crash mid-way).
    pub async fn cleanup(&self) -> Result<usize, SnapshotError> {
        let meta = self.meta.lock().await;
        let live: HashSet<String> = meta.snapshots.values().map(|r| r.id.to_string()).collect();
        let dir = self.root.join("snapshots");
        let mut removed = 0;
        for entry in std::fs::read_dir(&dir).map_err(SnapshotError::io("read directory", &dir))? {
            let entry = entry.map_err(SnapshotError::io("read directory", &dir))?;
            if live.contains(&*entry.file_name().to_string_lossy()) {
                continue;
            }
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(SnapshotError::io("remove", &path))?;
            removed += 1;
        }
        Ok(removed)
    }
}
