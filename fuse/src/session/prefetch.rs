//! Background fetches tied to a mount session: the image's start-up trace at mount, and
//! the rest of the image in bulk once a workload reads most of it.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use thaw_core::ImageId;
use thaw_store::{ChunkReader, PrefetchProgress, Repository};
use tokio_util::sync::CancellationToken;

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
    /// bytes (or walks it: [`BulkTrigger`]), carries out the [`BulkPlan`] the caches and
    /// the store allow: fetches every chunk not cached yet, in file order, at prefetch
    /// priority (large sequential requests; on-demand reads still go first), and once the
    /// workload has also opened a large part of the image's files, reads the image through
    /// `root` (its FUSE layer) into the kernel's caches ([`super::warm`]).
    pub fn bulk(
        shared: Arc<crate::fs::FsShared>,
        fraction: f64,
        root: std::path::PathBuf,
    ) -> Option<Self> {
        let image_bytes: u64 = shared
            .manifest
            .chunks
            .iter()
            .map(|c| u64::from(c.len))
            .sum();
        let usage = shared.reader.cache_usage();
        let local = shared.reader.reads_local_store();
        let plan = BulkPlan::choose(
            image_bytes,
            usage.memory_capacity,
            usage.disk_capacity,
            local,
        )?;
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
                if trigger.fires(served, shared.stats.opened.distinct()) {
                    break;
                }
            }
            let fetching = plan == BulkPlan::FetchAndWarm;
            let fetch = async {
                if !fetching {
                    return;
                }
                let ids: Vec<_> = shared.manifest.chunks.iter().map(|c| c.id).collect();
                tracing::info!(image = %shared.image, chunks = ids.len(), "most of the image is being read: fetching the rest in bulk");
                let progress = PrefetchProgress::default();
                let done = shared.reader.prefetch(&ids, &progress, &stop).await;
                let chunks = progress.done_chunks.load(Relaxed);
                tracing::info!(done, chunks, "bulk fetch finished");
            };
            let warm = super::warm::when_opened(shared.clone(), root, stop.clone(), fetching);
            tokio::join!(fetch, warm);
        });
        Some(Prefetch { cancel, task })
    }

    /// Asks the fetch to stop, without waiting (for a drop).
    pub(super) fn cancel(&self) {
        self.cancel.cancel();
    }

    pub(super) async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// When a mount fetches the rest of its image in bulk: once it has served a fraction of
/// the image's bytes (coverage), or once a workload walks the image: it has opened
/// [`BulkTrigger::WALK_OPENS`] distinct files and read [`BulkTrigger::WALK_FRACTION`] of
/// the bytes.
/// A package check or a full import opens thousands of files early on, long before it has
/// read a quarter of the image; a start-up opens tens to hundreds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkTrigger {
    coverage_bytes: u64,
    walk_bytes: u64,
}

impl BulkTrigger {
    /// Distinct files opened that mark a workload walking the image. The Debian start-up
    /// of the benchmarks opens 48; `dpkg --verify` reaches 150 about 100 ms sooner than
    /// 300, and was 8% faster for it (7 of 8 alternating pairs).
    pub const WALK_OPENS: u64 = 150;
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

/// What a mount does once a workload reads most of its image ([`Prefetch::bulk`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkPlan {
    /// Fetch every chunk not cached yet (decoded ahead of the workload on every core),
    /// and warm the kernel's caches from the cached chunks.
    FetchAndWarm,
    /// Only warm the kernel's caches, its reads fetching on demand: a local store read in
    /// place with an image larger than half of memory, where a bulk fetch could only
    /// keep what it decoded by writing a second copy of the store into the disk cache on
    /// the same disk (the 5.7 GB machine-learning image read whole took 1.7-2.3x the full
    /// pull that way, against about 1.4x without a bulk fetch and less with warming).
    WarmOnly,
}

impl BulkPlan {
    /// The plan for an image of `image_bytes` with these cache capacities, from a local
    /// store read in place (`local`) or not; `None` where neither can pay: from a remote
    /// store, only a disk cache that holds twice the image keeps a bulk fetch without
    /// evicting what readers use.
    pub fn choose(image_bytes: u64, memory: u64, disk: u64, local: bool) -> Option<Self> {
        let twice = image_bytes.saturating_mul(2);
        match (image_bytes, local) {
            (0, _) => None,
            (_, true) if twice <= memory => Some(BulkPlan::FetchAndWarm),
            (_, true) => Some(BulkPlan::WarmOnly),
            (_, false) => (twice <= disk).then_some(BulkPlan::FetchAndWarm),
        }
    }
}

/// How often a mount checks whether to fetch the rest of its image in bulk.
const BULK_CHECK: std::time::Duration = std::time::Duration::from_millis(25);

#[cfg(test)]
mod tests {
    use super::{BulkPlan, BulkTrigger};

    #[test]
    fn a_bulk_read_fetches_ahead_only_where_the_caches_keep_it() {
        let gib = 1u64 << 30;
        let choose = |image, memory, disk, local| BulkPlan::choose(image, memory, disk, local);
        // A local store read in place: into memory while the image fits in half of it,
        // else the kernel's caches alone, whatever the disk cache's size.
        assert_eq!(choose(gib / 4, gib, 0, true), Some(BulkPlan::FetchAndWarm));
        assert_eq!(
            choose(6 * gib, gib / 2, 20 * gib, true),
            Some(BulkPlan::WarmOnly)
        );
        assert_eq!(choose(6 * gib, gib / 2, 0, true), Some(BulkPlan::WarmOnly));
        // A remote store: only into a disk cache of twice the image.
        assert_eq!(
            choose(6 * gib, gib / 2, 12 * gib, false),
            Some(BulkPlan::FetchAndWarm)
        );
        assert_eq!(choose(6 * gib, 64 * gib, 10 * gib, false), None);
        assert_eq!(choose(0, gib, gib, true), None);
    }

    #[test]
    fn bulk_fires_on_coverage_or_on_a_walk_of_the_image() {
        let t = BulkTrigger::new(1000, 0.25);
        assert!(!t.fires(249, 149), "neither");
        assert!(t.fires(250, 0), "a quarter read");
        assert!(t.fires(20, 150), "150 opens and 2% read");
        assert!(!t.fires(19, 5000), "many opens of little (a metadata walk)");
        assert!(!t.fires(200, 149), "a start-up: fewer opens");
        // A lower coverage threshold than the walk's fraction wins.
        let t = BulkTrigger::new(1000, 0.01);
        assert!(t.fires(10, 0));
    }
}
