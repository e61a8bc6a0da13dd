//! Mounts the daemon serves: all read through the node's one shared reader (so one cache
//! serves every container), recorded on disk so a restarted daemon can clean up the
//! mounts its predecessor left behind.

use crate::api::{self, ErrorCode};
use crate::error::ApiError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thaw_core::{ImageId, Manifest};
use thaw_fuse::{FsConfig, MountHandle, MountOptions, StatsSnapshot, ThawFs};
use thaw_store::ChunkReader;

/// Mounts one daemon serves at most.
pub const MAX_MOUNTS: usize = 256;

/// One live mount.
#[derive(Debug)]
pub struct MountEntry {
    pub id: String,
    pub image: ImageId,
    pub mountpoint: PathBuf,
    pub upper: Option<PathBuf>,
    pub created: u64,
    /// The prewarm job started with the mount, if any.
    pub prefetch_job: Mutex<Option<String>>,
    handle: Mutex<Option<MountHandle>>,
}

impl MountEntry {
    pub fn stats(&self) -> Option<StatsSnapshot> {
        self.handle
            .lock()
            .expect("mount lock")
            .as_ref()
            .map(|h| h.stats())
    }

    pub fn view(&self) -> api::Mount {
        let s = self.stats().unwrap_or_default();
        api::Mount {
            id: self.id.clone(),
            image: self.image.to_string(),
            mountpoint: self.mountpoint.display().to_string(),
            writable: self.upper.is_some(),
            upper: self.upper.as_ref().map(|u| u.display().to_string()),
            created: self.created,
            bytes_served: s.bytes_served,
            read_errors: s.read_errors,
            prefetch_job: self.prefetch_job.lock().expect("mount lock").clone(),
        }
    }
}

/// How the daemon mounts.
#[derive(Debug, Clone)]
pub struct MountSettings {
    /// Mount records and overlay upper directories live here.
    pub state_dir: PathBuf,
    /// When set, mount points must lie under it.
    pub mount_root: Option<PathBuf>,
    pub read_timeout: Duration,
    pub threads: usize,
    /// See `thaw_fuse::MountOptions::kernel_readahead`.
    pub kernel_readahead: u64,
    /// Have `fusermount3` unmount each mount if the daemon dies. Off by default: it costs
    /// an exec of `fusermount3` per mount (5 to 40 ms here), and the daemon unmounts what a
    /// dead predecessor left when it starts again.
    pub auto_unmount: bool,
}

#[derive(Debug)]
pub struct Mounts {
    settings: MountSettings,
    live: Mutex<BTreeMap<String, Arc<MountEntry>>>,
    /// Serialises mount and unmount, so two requests cannot race for one mount point.
    busy: tokio::sync::Mutex<()>,
}

fn records_dir(state: &Path) -> PathBuf {
    state.join("mounts")
}

impl Mounts {
    /// Opens the mount table, unmounting whatever a previous daemon left mounted.
    pub fn open(settings: MountSettings) -> std::io::Result<Self> {
        let dir = records_dir(&settings.state_dir);
        std::fs::create_dir_all(&dir)?;
        for rec in std::fs::read_dir(&dir)? {
            let rec = rec?.path();
            let text = std::fs::read_to_string(&rec).unwrap_or_default();
            for line in text.lines().filter(|l| !l.is_empty()) {
                let p = Path::new(line);
                if thaw_fuse::mount::is_mounted(p) {
                    match thaw_fuse::unmount(p) {
                        Ok(how) => tracing::info!(path = line, ?how, "cleaned up a stale mount"),
                        Err(e) => tracing::warn!(path = line, error = %e, "stale mount stays"),
                    }
                }
            }
            let _ = std::fs::remove_file(&rec);
        }
        Ok(Mounts {
            settings,
            live: Mutex::default(),
            busy: tokio::sync::Mutex::new(()),
        })
    }

    pub fn list(&self) -> Vec<Arc<MountEntry>> {
        self.live
            .lock()
            .expect("mounts lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<Arc<MountEntry>> {
        self.live.lock().expect("mounts lock").get(id).cloned()
    }

    /// Mounts `image` at `mountpoint` through the shared reader.
    pub async fn create(
        &self,
        manifest: Arc<Manifest>,
        reader: &Arc<ChunkReader>,
        image: ImageId,
        mountpoint: &str,
        writable: bool,
    ) -> Result<Arc<MountEntry>, ApiError> {
        let mountpoint =
            crate::validate::mountpoint(mountpoint, self.settings.mount_root.as_deref())?;
        let _busy = self.busy.lock().await;
        if self.list().len() >= MAX_MOUNTS {
            return Err(ApiError::new(
                ErrorCode::TooManyRequests,
                format!("this daemon already serves {MAX_MOUNTS} mounts"),
            ));
        }
        if thaw_fuse::mount::is_mounted(&mountpoint) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("{} is already a mount point", mountpoint.display()),
            ));
        }
        let id = format!("{:016x}", rand::random::<u64>());
        let upper = writable.then(|| self.settings.state_dir.join("uppers").join(&id));
        let fs = ThawFs::new(
            manifest,
            image,
            reader.clone(),
            FsConfig {
                read_timeout: self.settings.read_timeout,
                ..Default::default()
            },
            None,
            tokio::runtime::Handle::current(),
        );
        let options = MountOptions {
            threads: self.settings.threads,
            kernel_readahead: self.settings.kernel_readahead,
            writable: upper.clone(),
            auto_unmount: Some(self.settings.auto_unmount),
            ..Default::default()
        };
        let record = records_dir(&self.settings.state_dir).join(&id);
        let target = mountpoint.clone();
        let handle = tokio::task::spawn_blocking(move || thaw_fuse::mount(fs, &target, &options))
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("mounting {image}: {e}")))?;
        // The overlay first, then the FUSE layer under it: the order to unmount them.
        let mut lines = format!("{}\n", handle.mountpoint().display());
        if handle.fuse_dir() != handle.mountpoint() {
            lines.push_str(&format!("{}\n", handle.fuse_dir().display()));
        }
        if let Err(e) = std::fs::write(&record, lines) {
            tracing::warn!(record = %record.display(), error = %e, "could not record a mount");
        }
        let entry = Arc::new(MountEntry {
            id: id.clone(),
            image,
            mountpoint,
            upper: upper.map(|u| u.join("upper")),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            prefetch_job: Mutex::new(None),
            handle: Mutex::new(Some(handle)),
        });
        self.live
            .lock()
            .expect("mounts lock")
            .insert(id, entry.clone());
        tracing::info!(mount = %entry.id, image = %image, path = %entry.mountpoint.display(), "mounted");
        Ok(entry)
    }

    /// Unmounts and forgets a mount. The overlay's upper directory is kept: it holds
    /// the container's writes.
    pub async fn remove(&self, id: &str) -> Result<Arc<MountEntry>, ApiError> {
        let _busy = self.busy.lock().await;
        let entry = self
            .get(id)
            .ok_or_else(|| ApiError::not_found(format!("no mount {id:?}")))?;
        let handle = entry.handle.lock().expect("mount lock").take();
        if let Some(h) = handle {
            tokio::task::spawn_blocking(move || h.unmount())
                .await
                .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
                .map_err(|e| ApiError::new(ErrorCode::Internal, format!("unmounting {id}: {e}")))?;
        }
        self.live.lock().expect("mounts lock").remove(id);
        let _ = std::fs::remove_file(records_dir(&self.settings.state_dir).join(id));
        tracing::info!(mount = id, "unmounted");
        Ok(entry)
    }

    /// Unmounts everything (at shutdown).
    pub async fn remove_all(&self) {
        for m in self.list() {
            if let Err(e) = self.remove(&m.id).await {
                tracing::warn!(mount = %m.id, error = %e.message, "unmount at shutdown failed");
            }
        }
    }
}
