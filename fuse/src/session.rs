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
use thaw_store::{ChunkReader, PrefetchProgress, ReadError, ReaderConfig, RepoError, Repository};
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

    /// Watches the mount's reads, and once it has served `fraction` of the image's file
    /// bytes, fetches every chunk not cached yet, in file order, at prefetch priority
    /// (large sequential requests; on-demand reads still go first). Only where a disk
    /// cache can hold the whole image: otherwise it would evict what readers use.
    pub fn bulk(shared: Arc<crate::fs::FsShared>, fraction: f64) -> Option<Self> {
        let image_bytes: u64 = shared
            .manifest
            .chunks
            .iter()
            .map(|c| u64::from(c.len))
            .sum();
        let usage = shared.reader.cache_usage();
        if usage.disk_capacity < image_bytes.saturating_mul(2) || image_bytes == 0 {
            return None;
        }
        let trigger = BulkTrigger::new(image_bytes, fraction);
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(BULK_CHECK);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let served = shared.stats.bytes_served.load(Relaxed);
                if trigger.fires(served, shared.stats.count(crate::stats::Op::Open)) {
                    break;
                }
            }
            let ids: Vec<_> = shared.manifest.chunks.iter().map(|c| c.id).collect();
            let progress = PrefetchProgress::default();
            tracing::info!(image = %shared.image, chunks = ids.len(), "most of the image is being read: fetching the rest in bulk");
            let done = shared.reader.prefetch(&ids, &progress, &stop).await;
            let chunks = progress.done_chunks.load(Relaxed);
            tracing::info!(done, chunks, "bulk fetch finished");
        });
        Some(Prefetch { cancel, task })
    }

    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// When a mount fetches the rest of its image in bulk: once it has served a fraction of
/// the image's bytes (coverage), or once a workload walks the image: it has opened
/// [`BulkTrigger::WALK_OPENS`] files and read [`BulkTrigger::WALK_FRACTION`] of the bytes.
/// A package check or a full import opens thousands of files early on, long before it has
/// read a quarter of the image; a start-up opens tens to hundreds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkTrigger {
    coverage_bytes: u64,
    walk_bytes: u64,
}

impl BulkTrigger {
    /// Opens that mark a workload walking the image.
    pub const WALK_OPENS: u64 = 300;
    /// The fraction of the image a walk must also have read.
    pub const WALK_FRACTION: f64 = 0.02;

    /// The trigger for an image of `image_bytes` with the coverage `fraction`.
    pub fn new(image_bytes: u64, fraction: f64) -> Self {
        let part = |f: f64| (image_bytes as f64 * f.clamp(0.0, 1.0)) as u64;
        BulkTrigger {
            coverage_bytes: part(fraction),
            walk_bytes: part(Self::WALK_FRACTION.min(fraction)),
        }
    }

    /// Whether a mount that has served `served` bytes through `opens` opens should fetch
    /// the rest now.
    pub fn fires(&self, served: u64, opens: u64) -> bool {
        served >= self.coverage_bytes || (opens >= Self::WALK_OPENS && served >= self.walk_bytes)
    }
}

/// How often a mount checks whether to fetch the rest of its image in bulk.
const BULK_CHECK: std::time::Duration = std::time::Duration::from_millis(25);

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
        };
        let bulk = spec
            .fs
            .bulk_after
            .and_then(|f| Prefetch::bulk(handle.fs().shared().clone(), f));
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
    if let Err(e) = crate::files::write_atomically(path, text.as_bytes()) {
        tracing::warn!(path = %path.display(), error = %e, "could not write the status file");
    }
}

#[cfg(test)]
mod tests {
    use super::BulkTrigger;

    #[test]
    fn bulk_fires_on_coverage_or_on_a_walk_of_the_image() {
        let t = BulkTrigger::new(1000, 0.25);
        assert!(!t.fires(249, 299), "neither");
        assert!(t.fires(250, 0), "a quarter read");
        assert!(t.fires(20, 300), "three hundred opens and 2% read");
        assert!(!t.fires(19, 5000), "many opens of little (a metadata walk)");
        assert!(!t.fires(200, 299), "a start-up: fewer opens");
        // A lower coverage threshold than the walk's fraction wins.
        let t = BulkTrigger::new(1000, 0.01);
        assert!(t.fires(10, 0));
    }
}
