//! One mount session, the same for `thaw mount` and the daemon's `/v1/mounts`: mount an
//! image through a reader (with the image's trace prefetch, when asked), record the mount
//! in the node's registry, report its status, and at the end stop the prefetch, write the
//! start-up trace, unmount and remove the record. A serving process that dies leaves its
//! record behind, and [`MountRegistry::clean_dead`] cleans up after it.

use crate::fs::{FsConfig, ThawFs};
use crate::mount::{MountError, MountHandle, MountOptions};
use crate::registry::{MountRecord, MountRegistry, ProcessId, RegistryError};
use crate::stats::StatsSnapshot;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thaw_core::{ImageId, Manifest};
use thaw_store::{ChunkReader, ReadError, ReaderConfig, RepoError, Repository};

mod prefetch;
mod warm;
pub use prefetch::{BulkPlan, BulkTrigger, Prefetch};
pub use warm::{opens_to_warm, WARM_OPENED_SHARE, WARM_THREADS};

/// Why a session could not start or end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Mounting or unmounting failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// The mount could not be recorded.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The start-up trace could not be written.
    #[error("writing the start-up trace: {0}")]
    Trace(std::io::Error),
    /// A blocking mount or unmount task died.
    #[error("the {0} task failed")]
    Task(&'static str),
    /// The image could not be resolved or its manifest read.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The session's own reader (its disk cache) could not be made.
    #[error(transparent)]
    Reader(#[from] ReadError),
}

/// Where a session's reader comes from.
#[derive(Debug)]
pub enum ReaderSource {
    /// A reader of its own, with these caches (`thaw mount`).
    Own(ReaderConfig),
    /// A reader shared with other mounts (the daemon's one reader, so one cache).
    Shared(Arc<ChunkReader>),
}

/// Where and how to mount (the image is given separately).
#[derive(Debug)]
pub struct SessionSpec {
    /// The mount's id (the daemon's API id, or a random one).
    pub id: String,
    /// Where to mount it.
    pub mountpoint: PathBuf,
    /// The filesystem's tunables.
    pub fs: FsConfig,
    /// The mount's options (the writable upper directory among them).
    pub options: MountOptions,
    /// Record the start-up trace to this file.
    pub record_trace: Option<PathBuf>,
    /// Who asked, for the record: for example `thaw mount (uid 0)` or `api`.
    pub requested_by: String,
    /// The API address of the daemon that owns the mount, if one does.
    pub daemon: Option<String>,
}

/// How a session ended.
#[derive(Debug)]
pub struct SessionEnd {
    /// The mount's counters at the end.
    pub stats: StatsSnapshot,
    /// Records written to the start-up trace, if one was recorded.
    pub trace_records: Option<usize>,
}

/// A live mount and its record.
#[derive(Debug)]
pub struct MountSession {
    handle: Option<MountHandle>,
    record: MountRecord,
    registry: MountRegistry,
    prefetch: Option<Prefetch>,
    bulk: Option<Prefetch>,
}

/// An image to mount: its id and manifest.
#[derive(Debug, Clone)]
pub struct Image {
    /// The image's id.
    pub id: ImageId,
    /// Its manifest.
    pub manifest: Arc<Manifest>,
}

impl MountSession {
    /// Opens a session from an image name (a tag, an id or an unambiguous prefix):
    /// resolves it in `repo`, makes or takes the reader, starts the image's trace prefetch
    /// when `trace_prefetch` is set (before loading the manifest: both are a round trip
    /// away), loads the manifest, mounts and records the mount.
    pub async fn open(
        repo: &Repository,
        name: &str,
        reader: ReaderSource,
        trace_prefetch: bool,
        spec: SessionSpec,
        registry: MountRegistry,
    ) -> Result<Self, SessionError> {
        let id = repo.resolve(name).await?;
        let reader = match reader {
            ReaderSource::Own(config) => ChunkReader::new(repo.packs().clone(), config)?,
            ReaderSource::Shared(reader) => reader,
        };
        let prefetch = trace_prefetch.then(|| Prefetch::trace(repo, &reader, id));
        let manifest = match repo.get_manifest(&id).await {
            Ok(m) => Arc::new(m),
            Err(e) => return Err(stop_then(prefetch, e.into()).await),
        };
        // The packs were listed from a local copy, perhaps before this image was built.
        if let Err(e) = repo
            .ensure_packs_for(manifest.chunks.iter().map(|c| c.id))
            .await
        {
            return Err(stop_then(prefetch, e.into()).await);
        }
        Self::start(reader, Image { id, manifest }, spec, registry, prefetch).await
    }

    /// Mounts `image` through `reader` and records the mount in `registry`. If the record
    /// cannot be written, nothing stays mounted.
    pub async fn start(
        reader: Arc<ChunkReader>,
        image: Image,
        spec: SessionSpec,
        registry: MountRegistry,
        prefetch: Option<Prefetch>,
    ) -> Result<Self, SessionError> {
        let rt = tokio::runtime::Handle::current();
        let fs = ThawFs::new(
            image.manifest,
            image.id,
            reader,
            spec.fs,
            spec.record_trace,
            rt,
        );
        let (target, mut options) = (spec.mountpoint.clone(), spec.options.clone());
        if options.holder.is_some() {
            options.open_table = Some(registry.open_table_for(&spec.id));
        }
        let mounted =
            tokio::task::spawn_blocking(move || crate::mount::mount(fs, &target, &options));
        let handle = match mounted.await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return Err(stop_then(prefetch, e.into()).await),
            Err(_) => return Err(stop_then(prefetch, SessionError::Task("mount")).await),
        };
        let record = MountRecord {
            id: spec.id,
            image: image.id.to_string(),
            mountpoint: handle.mountpoint().to_path_buf(),
            fuse_dir: handle.fuse_dir().to_path_buf(),
            upper: spec.options.writable,
            owner: ProcessId::current(),
            requested_by: spec.requested_by,
            daemon: spec.daemon,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            holder: handle.holder(),
            passthrough: handle.passthrough_negotiated(),
        };
        let bulk = spec.fs.bulk_after.and_then(|f| {
            let root = handle.fuse_dir().to_path_buf();
            Prefetch::bulk(handle.fs().shared().clone(), f, root)
        });
        let session = MountSession {
            handle: Some(handle),
            record,
            registry,
            prefetch,
            bulk,
        };
        if let Err(e) = session.registry.write(&session.record) {
            // Dropping the session unmounts and removes any record.
            return Err(e.into());
        }
        Ok(session)
    }

    /// Serves again the mount of `record`, whose owner died while a holder kept its
    /// connection (see [`crate::takeover`]): `image` must be the record's image. The
    /// record then names this process as the owner. If it cannot be adopted, the caller
    /// cleans it up ([`crate::registry::clean_up`]).
    pub async fn adopt(
        reader: Arc<ChunkReader>,
        image: Image,
        record: MountRecord,
        fs: FsConfig,
        options: MountOptions,
        registry: MountRegistry,
    ) -> Result<Self, SessionError> {
        let rt = tokio::runtime::Handle::current();
        let fs = ThawFs::new(image.manifest, image.id, reader, fs, None, rt);
        let r = record.clone();
        let mut options = options;
        options.open_table = Some(registry.open_table_for(&record.id));
        let adopted =
            tokio::task::spawn_blocking(move || crate::mount::adopt(fs, &r, &options)).await;
        let handle = match adopted {
            Ok(h) => h?,
            Err(_) => return Err(SessionError::Task("adopt")),
        };
        let session = MountSession {
            handle: Some(handle),
            record: MountRecord {
                owner: ProcessId::current(),
                ..record
            },
            registry,
            prefetch: None,
            bulk: None,
        };
        session.registry.write(&session.record)?;
        Ok(session)
    }

    /// The mount's record.
    pub fn record(&self) -> &MountRecord {
        &self.record
    }

    /// Where the mount is (resolved).
    pub fn mountpoint(&self) -> &Path {
        &self.record.mountpoint
    }

    /// The mount's counters now.
    pub fn stats(&self) -> StatsSnapshot {
        self.handle
            .as_ref()
            .map(MountHandle::stats)
            .unwrap_or_default()
    }

    /// Whether the mount is still in the mount table.
    pub fn is_mounted(&self) -> bool {
        self.handle.as_ref().is_some_and(MountHandle::is_mounted)
    }

    /// Reports status every `every` (writing `status_file`, if given, atomically) until
    /// `shutdown` resolves or the mount disappears from outside; returns why it stopped.
    pub async fn watch(
        &self,
        shutdown: impl Future<Output = &'static str>,
        status_file: Option<&Path>,
        every: Duration,
    ) -> &'static str {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                reason = &mut shutdown => return reason,
                _ = tick.tick() => {
                    if !self.is_mounted() {
                        return "unmounted from outside";
                    }
                    if let Some(p) = status_file {
                        write_status(p, &self.stats().render());
                    }
                }
            }
        }
    }

    /// Ends the session: stops the prefetch, writes the trace, unmounts (overlay, then
    /// FUSE) and removes the record.
    pub async fn end(mut self) -> Result<SessionEnd, SessionError> {
        for p in [self.prefetch.take(), self.bulk.take()]
            .into_iter()
            .flatten()
        {
            p.stop().await;
        }
        let stats = self.stats();
        let Some(handle) = self.handle.take() else {
            return Ok(SessionEnd {
                stats,
                trace_records: None,
            });
        };
        let trace_records = handle.write_trace().map_err(SessionError::Trace);
        let unmounted = tokio::task::spawn_blocking(move || handle.unmount()).await;
        self.registry.remove(&self.record.mountpoint);
        let trace_records = trace_records?;
        unmounted.map_err(|_| SessionError::Task("unmount"))??;
        Ok(SessionEnd {
            stats,
            trace_records,
        })
    }
}

impl Drop for MountSession {
    fn drop(&mut self) {
        for p in [self.prefetch.take(), self.bulk.take()]
            .into_iter()
            .flatten()
        {
            p.cancel();
        }
        if let Some(handle) = self.handle.take() {
            // MountHandle unmounts on drop.
            drop(handle);
            self.registry.remove(&self.record.mountpoint);
        }
    }
}

async fn stop_then(prefetch: Option<Prefetch>, e: SessionError) -> SessionError {
    if let Some(p) = prefetch {
        p.stop().await;
    }
    e
}

/// Rewrites a status file atomically; a failure is logged, not fatal.
pub fn write_status(path: &Path, text: &str) {
    if let Err(e) = crate::files::write_atomically(path, text.as_bytes()) {
        tracing::warn!(path = %path.display(), error = %e, "could not write the status file");
    }
}
