//! Mounts the daemon serves: all read through the node's one shared reader (so one cache
//! serves every container), each a `thaw_fuse` mount session recorded in the node's mount
//! registry, so `thaw umount` finds the daemon and a restarted daemon cleans up what its
//! predecessor left behind.

use crate::error::ApiError;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thaw_api::api::{self, ErrorCode};
use thaw_core::{ImageId, Manifest};
use thaw_fuse::registry::MountRegistry;
use thaw_fuse::session::{Image, MountSession, SessionSpec};
use thaw_fuse::{FsConfig, MountOptions, StatsSnapshot};
use thaw_store::ChunkReader;

/// Mounts one daemon serves at most.
pub const MAX_MOUNTS: usize = 256;

/// One live mount.
#[derive(Debug)]
pub struct MountEntry {
    /// The mount's id.
    pub id: String,
    /// The image mounted.
    pub image: ImageId,
    /// Where.
    pub mountpoint: PathBuf,
    /// The overlay's upper directory (the container's writes), if writable.
    pub upper: Option<PathBuf>,
    /// Unix time of creation, in seconds.
    pub created: u64,
    /// The prewarm job started with the mount, if any.
    pub prefetch_job: Mutex<Option<String>>,
    session: tokio::sync::Mutex<Option<MountSession>>,
}

impl MountEntry {
    /// The mount's counters, unless it is being unmounted right now.
    pub fn stats(&self) -> Option<StatsSnapshot> {
        self.session
            .try_lock()
            .ok()?
            .as_ref()
            .map(MountSession::stats)
    }

    /// The mount as the API shows it.
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
            prefetch_job: self.prefetch_job.lock().clone(),
        }
    }
}

/// How the daemon mounts.
#[derive(Debug, Clone)]
pub struct MountSettings {
    /// Overlay upper directories live here.
    pub state_dir: PathBuf,
    /// Where mounts are recorded (the node's registry, shared with `thaw mount`).
    pub registry: MountRegistry,
    /// This daemon's API address, written into its mount records so `thaw umount` asks
    /// the daemon rather than unmounting behind its back.
    pub api_address: Option<String>,
    /// Every mount point lies under it (mode 0700, owned by the daemon's user).
    pub mount_root: PathBuf,
    /// A read that cannot be served within this fails with EIO.
    pub read_timeout: Duration,
    /// FUSE worker threads per mount.
    pub threads: usize,
    /// See `thaw_fuse::MountOptions::kernel_readahead`.
    pub kernel_readahead: u64,
    /// Have `fusermount3` unmount each mount if the daemon dies. Off by default: it costs
    /// an exec of `fusermount3` per mount (5 to 40 ms here), and the daemon unmounts what a
    /// dead predecessor left when it starts again.
    pub auto_unmount: bool,
    /// How the daemon starts a holder for each of its containers' roots, so that they
    /// outlive it and the next daemon adopts them (see `thaw_fuse::takeover`); `None`:
    /// containers end with the daemon.
    pub holder: Option<thaw_fuse::takeover::HolderCommand>,
}

#[derive(Debug)]
/// The mounts one daemon serves.
pub struct Mounts {
    settings: MountSettings,
    live: Mutex<BTreeMap<String, Arc<MountEntry>>>,
    /// Serialises mount and unmount, so two requests cannot race for one mount point.
    busy: tokio::sync::Mutex<()>,
}

impl Mounts {
    /// Opens the mount table, cleaning up the mounts of serving processes that died (a
    /// killed predecessor, a killed `thaw mount`).
    pub fn open(settings: MountSettings) -> std::io::Result<Self> {
        crate::confine::prepare_root(&settings.state_dir)?;
        crate::confine::prepare_root(&settings.mount_root)?;
        for r in settings.registry.clean_dead() {
            tracing::info!(mount = %r.id, path = %r.mountpoint.display(), "cleaned up after a dead mount process");
        }
        Ok(Mounts {
            settings,
            live: Mutex::default(),
            busy: tokio::sync::Mutex::new(()),
        })
    }

    /// How this daemon mounts.
    pub fn settings(&self) -> &MountSettings {
        &self.settings
    }

    /// Every live mount.
    pub fn list(&self) -> Vec<Arc<MountEntry>> {
        self.live.lock().values().cloned().collect()
    }

    /// A live mount by id.
    pub fn get(&self, id: &str) -> Option<Arc<MountEntry>> {
        self.live.lock().get(id).cloned()
    }

    /// Mounts `image` at the request's mount point (confined to the mount root) through
    /// the shared reader.
    pub async fn create(
        &self,
        manifest: Arc<Manifest>,
        reader: &Arc<ChunkReader>,
        image: ImageId,
        request: &api::MountRequest,
    ) -> Result<Arc<MountEntry>, ApiError> {
        let _busy = self.busy.lock().await;
        let (root, requested) = (self.settings.mount_root.clone(), request.mountpoint.clone());
        let allow_non_empty = request.allow_non_empty;
        let confined = tokio::task::spawn_blocking(move || {
            crate::confine::mount_point(&root, &requested, allow_non_empty)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
        let mountpoint = confined.path.clone();
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
        let upper = request
            .writable
            .then(|| self.settings.state_dir.join("uppers").join(&id));
        let target = thaw_fuse::mount::MountTarget {
            dir: Arc::new(confined.dir),
            staging: self.settings.state_dir.join("staging").join(&id),
        };
        let spec = SessionSpec {
            id: id.clone(),
            mountpoint: mountpoint.clone(),
            fs: FsConfig {
                read_timeout: self.settings.read_timeout,
                ..Default::default()
            },
            options: MountOptions {
                threads: self.settings.threads,
                kernel_readahead: self.settings.kernel_readahead,
                writable: upper.clone(),
                target: Some(target),
                auto_unmount: Some(self.settings.auto_unmount),
                ..Default::default()
            },
            record_trace: None,
            requested_by: "api".to_string(),
            daemon: self.settings.api_address.clone(),
        };
        let registry = self.settings.registry.clone();
        let image_ref = Image {
            id: image,
            manifest,
        };
        let session = MountSession::start(reader.clone(), image_ref, spec, registry, None)
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("mounting {image}: {e}")))?;
        let entry = Arc::new(MountEntry {
            id: id.clone(),
            image,
            mountpoint: session.mountpoint().to_path_buf(),
            upper: upper.map(|u| u.join("upper")),
            created: session.record().created,
            prefetch_job: Mutex::new(None),
            session: tokio::sync::Mutex::new(Some(session)),
        });
        self.live.lock().insert(id, entry.clone());
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
        let session = entry.session.lock().await.take();
        if let Some(session) = session {
            session
                .end()
                .await
                .map_err(|e| ApiError::new(ErrorCode::Internal, format!("unmounting {id}: {e}")))?;
        }
        self.live.lock().remove(id);
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
