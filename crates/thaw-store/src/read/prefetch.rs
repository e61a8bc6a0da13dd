//! Prefetch: warms the caches with a list of chunks, in order, at prefetch priority, in
//! GETs of about [`PREFETCH_PIECE`] planned once by the packs.

use crate::pack::store::PlanOptions;
use crate::read::reader::ChunkReader;
use crate::read::schedule::FetchClass;
use crate::read::stats::PrefetchProgress;
use futures::StreamExt;
use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use thaw_core::ChunkId;
use tokio_util::sync::CancellationToken;

/// The most stored bytes one prefetch GET asks for (one chunk may be larger): a reader
/// that needs a chunk being prefetched then waits for a piece, not a whole pack, and the
/// first pieces land while later ones are still on the wire.
pub const PREFETCH_PIECE: u64 = 1 << 20;

impl ChunkReader {
    /// A chunk's uncompressed length (0 if the store does not hold it).
    fn raw_len(&self, id: &ChunkId) -> u64 {
        self.packs()
            .location(id)
            .map_or(0, |l| u64::from(l.entry.raw_len))
    }

    /// The part of a prefetch worth fetching ahead. All of it with a disk cache, or from a
    /// remote store (large GETs ahead of the reader beat one round trip per miss even when
    /// memory evicts some chunks before their readers come: the ML start-up 20 ms away
    /// took 6.1 s with the whole trace prefetched, 10.2 s with half of memory's worth).
    /// From a local store with memory alone, chunks beyond half of memory would evict
    /// earlier ones and be decoded twice (a 0.7 GB trace through 512 MiB fetched 1.35 GB,
    /// and the start-up took 5.0 s instead of 4.0 s), so the list stops there.
    fn fitting<'a>(&self, ids: &'a [ChunkId]) -> std::borrow::Cow<'a, [ChunkId]> {
        if self.disk().is_some() || self.packs().store().local_dir().is_none() {
            return ids.into();
        }
        let room = self.cache_usage().memory_capacity / 2;
        let mut seen = HashSet::new();
        let mut used = 0u64;
        ids.iter()
            .copied()
            .filter(|id| seen.insert(*id))
            .take_while(|id| {
                used = used.saturating_add(self.raw_len(id));
                used <= room
            })
            .collect::<Vec<_>>()
            .into()
    }

    /// Sets a prefetch's totals (distinct chunks and their bytes) before it starts;
    /// returns the distinct chunks in order.
    pub fn count_prefetch(&self, ids: &[ChunkId], progress: &PrefetchProgress) -> Vec<ChunkId> {
        let mut seen = HashSet::new();
        let ids: Vec<ChunkId> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
        let bytes: u64 = ids.iter().map(|id| self.raw_len(id)).sum();
        progress.total_chunks.store(ids.len() as u64, Relaxed);
        progress.total_bytes.store(bytes, Relaxed);
        ids
    }

    /// Warms the caches with `ids`, in order, at prefetch priority: on-demand reads go
    /// first, and a reader that needs a chunk being prefetched promotes that fetch.
    /// Chunks already cached count as done at once. Returns `false` if cancelled (at most
    /// the scheduler's prefetch slots' worth of fetches finish after that).
    pub async fn prefetch(
        &self,
        ids: &[ChunkId],
        progress: &PrefetchProgress,
        cancel: &CancellationToken,
    ) -> bool {
        let ids = self.count_prefetch(&self.fitting(ids), progress);
        let pending: Vec<ChunkId> = ids
            .into_iter()
            .filter(|id| {
                let cached = self.is_cached(id);
                if cached {
                    progress.cached(self.raw_len(id));
                }
                !cached
            })
            .collect();
        let options = PlanOptions {
            fetch_around: 0,
            max_run: PREFETCH_PIECE,
        };
        let plan = self.packs().plan(&pending, options, |_| false);
        for id in plan.unknown {
            progress.error(&crate::error::ReadError::UnknownChunk(id));
        }
        let pending_bytes: u64 = pending.iter().map(|id| self.raw_len(id)).sum();
        let to_memory = pending_bytes.saturating_mul(2) <= self.cache_usage().memory_capacity;
        let slots = self.fetcher().scheduler_config().prefetch_in_flight.max(1);
        let fetcher = self.fetcher().clone();
        let work = futures::stream::iter(plan.runs)
            .map(|run| fetcher.fetch_run(run, FetchClass::Prefetch, to_memory))
            .buffered(slots)
            .for_each(|outcomes| async move {
                for outcome in outcomes {
                    match outcome {
                        Ok(b) => progress.done(1, b.len() as u64),
                        Err(e) => progress.error(&e),
                    }
                }
            });
        tokio::select! {
            () = work => true,
            () = cancel.cancelled() => false,
        }
    }
}
