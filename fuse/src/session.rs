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
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thaw_core::{ImageId, Manifest};
use thaw_store::{ChunkReader, PrefetchProgress, Repository};
use tokio_util::sync::CancellationToken;

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
}

/// What to mount, and how.
#[derive(Debug)]
pub struct SessionSpec {
    /// The mount's id (the daemon's API id, or a random one).
    pub id: String,
    /// The image and its manifest.
    pub image: ImageId,
    /// Its manifest.
    pub manifest: Arc<Manifest>,
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

/// A background prefetch tied to a session: cancelled and awaited when it ends.
#[derive(Debug)]
pub struct Prefetch {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Prefetch {
    /// Starts warming the caches with the image's pushed start-up traces (one GET for the
    /// merged list), at prefetch priority. Starts at once: the list and the manifest are
    /// both a round trip away.
    pub fn trace(repo: &Repository, reader: &Arc<ChunkReader>, image: ImageId) -> Self {
        let cancel = CancellationToken::new();
        let (repo, reader, stop) = (repo.clone(), reader.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            let list = match repo.prefetch_list(&image).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "no prefetch: reading the image's traces failed");
                    return;
                }
            };
            if list.is_empty() {
                return;
            }
            let ids: Vec<_> = list.into_iter().map(|r| r.chunk).collect();
            let progress = PrefetchProgress::default();
            let done = reader.prefetch(&ids, &progress, &stop).await;
            let chunks = progress.done_chunks.load(Relaxed);
            tracing::info!(done, chunks, "trace prefetch finished");
        });
        Prefetch { cancel, task }
    }

    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
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
}

impl MountSession {
    /// Mounts `spec.image` through `reader` and records the mount in `registry`. If the
    /// record cannot be written, nothing stays mounted.
    pub async fn start(
        reader: Arc<ChunkReader>,
        spec: SessionSpec,
        registry: MountRegistry,
        prefetch: Option<Prefetch>,
    ) -> Result<Self, SessionError> {
        let rt = tokio::runtime::Handle::current();
        let fs = ThawFs::new(
            spec.manifest,
            spec.image,
            reader,
            spec.fs,
            spec.record_trace,
            rt,
        );
        let (target, options) = (spec.mountpoint.clone(), spec.options.clone());
        let mounted =
            tokio::task::spawn_blocking(move || crate::mount::mount(fs, &target, &options));
        let handle = match mounted.await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return Err(stop_then(prefetch, e.into()).await),
            Err(_) => return Err(stop_then(prefetch, SessionError::Task("mount")).await),
        };
        let record = MountRecord {
            id: spec.id,
            image: spec.image.to_string(),
            mountpoint: handle.mountpoint().to_path_buf(),
            fuse_dir: handle.fuse_dir().to_path_buf(),
            upper: spec.options.writable,
            owner: ProcessId::current(),
            requested_by: spec.requested_by,
            daemon: spec.daemon,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let session = MountSession {
            handle: Some(handle),
            record,
            registry,
            prefetch,
        };
        if let Err(e) = session.registry.write(&session.record) {
            // Dropping the session unmounts and removes any record.
            return Err(e.into());
        }
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
        if let Some(p) = self.prefetch.take() {
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
        if let Some(p) = self.prefetch.take() {
            p.cancel.cancel();
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
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let written = tempfile::NamedTempFile::new_in(dir).and_then(|mut tmp| {
        std::io::Write::write_all(&mut tmp, text.as_bytes())?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    });
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "could not write the status file");
    }
}
