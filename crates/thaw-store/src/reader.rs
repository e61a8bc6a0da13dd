//! Reads chunks through the tiers: memory LRU, disk cache, then the packs in the
//! store. Concurrent reads of one missing chunk share a single fetch.

use crate::cache::{DiskCache, MemoryCache};
use crate::error::{ChunkError, SharedChunkError};
use crate::schedule::Priority;
use crate::PackStore;
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use thaw_core::ChunkId;

/// Cache sizes and places.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    pub memory_bytes: u64,
    /// A disk cache directory and its size in bytes.
    pub disk: Option<(PathBuf, u64)>,
    /// On a miss, also fetch the chunks that follow it in its pack, up to this many stored
    /// bytes, in the same request (0: only what is asked). Pays off when request latency
    /// dominates, as with a remote object store.
    pub fetch_around: u64,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            memory_bytes: 256 * 1024 * 1024,
            disk: None,
            fetch_around: 0,
        }
    }
}

/// Where reads were served from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReaderStats {
    pub memory_hits: u64,
    pub disk_hits: u64,
    /// Chunks fetched from the store.
    pub fetched_chunks: u64,
    pub fetched_bytes: u64,
    /// Reads that joined a fetch already in flight.
    pub joined_fetches: u64,
    /// Chunks fetched because they follow a missed chunk in its pack.
    pub fetched_around: u64,
    /// Of the fetched chunks, those a prefetch asked for.
    pub prefetched_chunks: u64,
    pub prefetched_bytes: u64,
    /// Chunks a read did not find in memory.
    pub memory_misses: u64,
    /// Chunks looked for on disk and not found there (so fetched from the store).
    pub disk_misses: u64,
    /// Chunks the store returned that failed verification.
    pub integrity_failures: u64,
}

/// How full the caches are.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheUsage {
    pub memory_bytes: u64,
    pub memory_capacity: u64,
    pub memory_entries: usize,
    pub disk_bytes: u64,
    pub disk_capacity: u64,
    pub disk_entries: usize,
}

#[derive(Debug, Default)]
struct Counters {
    memory_hits: AtomicU64,
    disk_hits: AtomicU64,
    fetched_chunks: AtomicU64,
    fetched_bytes: AtomicU64,
    joined_fetches: AtomicU64,
    fetched_around: AtomicU64,
    prefetched_chunks: AtomicU64,
    prefetched_bytes: AtomicU64,
    memory_misses: AtomicU64,
    disk_misses: AtomicU64,
    integrity_failures: AtomicU64,
}

/// How far a prefetch has got; shared with whoever reports on it.
#[derive(Debug, Default)]
pub struct PrefetchProgress {
    pub total_chunks: AtomicU64,
    /// Uncompressed bytes.
    pub total_bytes: AtomicU64,
    pub done_chunks: AtomicU64,
    pub done_bytes: AtomicU64,
    /// Of the done chunks, those that were cached already.
    pub cached_chunks: AtomicU64,
    pub errors: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl PrefetchProgress {
    fn done(&self, chunks: u64, bytes: u64) {
        self.done_chunks.fetch_add(chunks, Relaxed);
        self.done_bytes.fetch_add(bytes, Relaxed);
    }

    /// One chunk found cached: done, and counted as such.
    fn cached(&self, bytes: u64) {
        self.done(1, bytes);
        self.cached_chunks.fetch_add(1, Relaxed);
    }

    fn error(&self, e: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Relaxed);
        *self.last_error.lock().expect("progress lock") = Some(e.to_string());
    }
}

/// The most stored bytes one prefetch GET asks for (one chunk may be larger).
const PREFETCH_PIECE: u64 = 1 << 20;

/// Disk cache reads one `read_many` runs at once.
const DISK_READS_IN_FLIGHT: usize = 4;

type Fetch = Shared<BoxFuture<'static, Result<Bytes, SharedChunkError>>>;
/// A fetch in flight and its priority, which a waiting reader promotes.
type InFlight = (Fetch, Arc<Priority>);
/// One spawned fetch of several chunks: a result per chunk, in order.
type BatchFetch = Shared<BoxFuture<'static, Arc<Vec<Result<Bytes, SharedChunkError>>>>>;

/// The tiered, single-flight chunk reader.
#[derive(Debug)]
pub struct ChunkReader {
    packs: Arc<PackStore>,
    memory: MemoryCache,
    disk: Option<Arc<DiskCache>>,
    inflight: Mutex<HashMap<ChunkId, InFlight>>,
    counters: Counters,
    fetch_around: u64,
}

impl ChunkReader {
    pub fn new(packs: Arc<PackStore>, config: ReaderConfig) -> Result<Arc<Self>, ChunkError> {
        let disk = match &config.disk {
            Some((dir, bytes)) => Some(Arc::new(DiskCache::open(dir, *bytes).map_err(
                |source| ChunkError::DiskCache {
                    path: dir.display().to_string(),
                    source,
                },
            )?)),
            None => None,
        };
        Ok(Arc::new(ChunkReader {
            packs,
            memory: MemoryCache::new(config.memory_bytes),
            disk,
            inflight: Mutex::default(),
            counters: Counters::default(),
            fetch_around: config.fetch_around,
        }))
    }

    pub fn packs(&self) -> &Arc<PackStore> {
        &self.packs
    }

    pub fn disk(&self) -> Option<&Arc<DiskCache>> {
        self.disk.as_ref()
    }

    pub fn stats(&self) -> ReaderStats {
        let c = &self.counters;
        ReaderStats {
            memory_hits: c.memory_hits.load(Relaxed),
            disk_hits: c.disk_hits.load(Relaxed),
            fetched_chunks: c.fetched_chunks.load(Relaxed),
            fetched_bytes: c.fetched_bytes.load(Relaxed),
            joined_fetches: c.joined_fetches.load(Relaxed),
            fetched_around: c.fetched_around.load(Relaxed),
            prefetched_chunks: c.prefetched_chunks.load(Relaxed),
            prefetched_bytes: c.prefetched_bytes.load(Relaxed),
            memory_misses: c.memory_misses.load(Relaxed),
            disk_misses: c.disk_misses.load(Relaxed),
            integrity_failures: c.integrity_failures.load(Relaxed),
        }
    }

    pub fn cache_usage(&self) -> CacheUsage {
        CacheUsage {
            memory_bytes: self.memory.bytes(),
            memory_capacity: self.memory.capacity(),
            memory_entries: self.memory.len(),
            disk_bytes: self.disk.as_ref().map_or(0, |d| d.bytes()),
            disk_capacity: self.disk.as_ref().map_or(0, |d| d.capacity()),
            disk_entries: self.disk.as_ref().map_or(0, |d| d.len()),
        }
    }

    /// The chunks, if every one is in memory (counted as memory hits); else `None`, and
    /// the caller takes the async path. Lets a blocking caller skip the runtime.
    pub fn read_from_memory(&self, ids: &[ChunkId]) -> Option<Vec<Bytes>> {
        let found: Option<Vec<Bytes>> = ids.iter().map(|id| self.memory.get(id)).collect();
        if let Some(v) = &found {
            self.counters.memory_hits.fetch_add(v.len() as u64, Relaxed);
        }
        found
    }

    /// Reads one chunk.
    pub async fn read(self: &Arc<Self>, id: ChunkId) -> Result<Bytes, SharedChunkError> {
        Ok(self
            .read_many(&[id])
            .await?
            .pop()
            .expect("one chunk asked, one returned"))
    }

    /// Reads chunks, in order. Misses are fetched together, so neighbours in a pack
    /// share requests.
    pub async fn read_many(
        self: &Arc<Self>,
        ids: &[ChunkId],
    ) -> Result<Vec<Bytes>, SharedChunkError> {
        let mut out: Vec<Option<Bytes>> = ids.iter().map(|id| self.memory.get(id)).collect();
        let hits = out.iter().filter(|o| o.is_some()).count() as u64;
        self.counters.memory_hits.fetch_add(hits, Relaxed);
        self.counters
            .memory_misses
            .fetch_add(ids.len() as u64 - hits, Relaxed);

        let missing: Vec<usize> = (0..ids.len()).filter(|i| out[*i].is_none()).collect();
        if missing.is_empty() {
            return Ok(out.into_iter().map(|o| o.expect("filled")).collect());
        }
        let fetches: Vec<(usize, Fetch)> = {
            let mut inflight = self.inflight.lock().expect("inflight lock");
            let mut to_start: Vec<ChunkId> = Vec::new();
            let mut starting: HashSet<ChunkId> = HashSet::new();
            let mut joined = Vec::new();
            for &i in &missing {
                let id = ids[i];
                // A fetch fills memory before it leaves the in-flight table, so checking
                // again under the lock closes the gap in which it could be fetched twice.
                if let Some(data) = self.memory.get(&id) {
                    out[i] = Some(data);
                } else if let Some((f, priority)) = inflight.get(&id) {
                    self.counters.joined_fetches.fetch_add(1, Relaxed);
                    self.packs.scheduler().promote(priority);
                    joined.push((i, f.clone()));
                } else if starting.insert(id) {
                    to_start.push(id);
                }
            }
            if self.fetch_around > 0 {
                // Only misses that will go to the store take their neighbours along; a
                // chunk found on disk costs no request to share.
                let remote: Vec<ChunkId> = to_start
                    .iter()
                    .copied()
                    .filter(|id| !self.disk.as_ref().is_some_and(|d| d.contains(id)))
                    .collect();
                for id in remote {
                    for n in self.packs.following(&id, self.fetch_around) {
                        let cached = self.memory.contains(&n)
                            || self.disk.as_ref().is_some_and(|d| d.contains(&n));
                        if !cached && !inflight.contains_key(&n) && starting.insert(n) {
                            self.counters.fetched_around.fetch_add(1, Relaxed);
                            to_start.push(n);
                        }
                    }
                }
            }
            self.clone()
                .register(&mut inflight, to_start, Priority::on_demand());
            missing
                .iter()
                .filter(|&&i| out[i].is_none())
                .filter_map(|&i| inflight.get(&ids[i]).map(|(f, _)| (i, f.clone())))
                .chain(joined)
                .collect()
        };
        for (i, f) in fetches {
            if out[i].is_none() {
                out[i] = Some(f.await?);
            }
        }
        Ok(out.into_iter().map(|o| o.expect("filled")).collect())
    }

    /// Starts one fetch of `ids` and enters each chunk in the in-flight table.
    fn register(
        self: Arc<Self>,
        inflight: &mut HashMap<ChunkId, InFlight>,
        ids: Vec<ChunkId>,
        priority: Arc<Priority>,
    ) {
        if ids.is_empty() {
            return;
        }
        let batch = self.start_fetch(ids.clone(), priority.clone());
        for (k, id) in ids.iter().enumerate() {
            let f: Fetch = batch
                .clone()
                .map(move |v| {
                    v.get(k)
                        .or_else(|| v.first())
                        .cloned()
                        .expect("a fetch has results")
                })
                .boxed()
                .shared();
            inflight.insert(*id, (f, priority.clone()));
        }
    }

    /// Whether a chunk is in memory or on disk.
    pub fn is_cached(&self, id: &ChunkId) -> bool {
        self.memory.contains(id) || self.disk.as_ref().is_some_and(|d| d.contains(id))
    }

    /// A chunk's uncompressed length (0 if the store does not hold it).
    fn raw_len(&self, id: &ChunkId) -> u64 {
        self.packs
            .location(id)
            .map_or(0, |l| u64::from(l.entry.raw_len))
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
        self: &Arc<Self>,
        ids: &[ChunkId],
        progress: &PrefetchProgress,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> bool {
        let ids = self.count_prefetch(ids, progress);
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
        let (runs, unknown) = self.packs.plan(&pending);
        for (_, e) in unknown {
            progress.error(&e);
        }
        // Runs are cut into pieces of about PREFETCH_PIECE stored bytes: a reader that
        // needs a chunk being prefetched then waits for a piece, not a whole pack, and the
        // first pieces land while later ones are still on the wire.
        let mut pieces: Vec<Vec<ChunkId>> = Vec::new();
        for run in runs {
            let mut piece = Vec::new();
            let mut bytes = 0u64;
            for (i, e) in run.entries {
                if !piece.is_empty() && bytes + u64::from(e.stored_len) > PREFETCH_PIECE {
                    pieces.push(std::mem::take(&mut piece));
                    bytes = 0;
                }
                bytes += u64::from(e.stored_len);
                piece.push(pending[i]);
            }
            pieces.push(piece);
        }
        let slots = self.packs.scheduler().config().prefetch_in_flight.max(1);
        let work = futures::stream::iter(pieces)
            .map(|ids| self.prefetch_run(ids, progress))
            .buffered(slots)
            .for_each(|()| async {});
        tokio::select! {
            () = work => true,
            () = cancel.cancelled() => false,
        }
    }

    /// Fetches one run of a prefetch, joining fetches already in flight.
    async fn prefetch_run(self: &Arc<Self>, ids: Vec<ChunkId>, progress: &PrefetchProgress) {
        let mut waits: Vec<Fetch> = Vec::new();
        {
            let mut inflight = self.inflight.lock().expect("inflight lock");
            let mut to_start = Vec::new();
            for id in ids {
                if self.is_cached(&id) {
                    progress.cached(self.raw_len(&id));
                } else if let Some((f, _)) = inflight.get(&id) {
                    waits.push(f.clone());
                } else {
                    to_start.push(id);
                }
            }
            let started = to_start.clone();
            self.clone()
                .register(&mut inflight, to_start, Priority::prefetch());
            waits.extend(
                started
                    .iter()
                    .filter_map(|id| inflight.get(id).map(|(f, _)| f.clone())),
            );
        }
        for w in waits {
            match w.await {
                Ok(b) => progress.done(1, b.len() as u64),
                Err(e) => progress.error(&e),
            }
        }
    }

    /// Spawns one fetch of several chunks. It runs to completion even if every reader
    /// gives up, fills the caches, and then leaves the in-flight table. Each chunk has
    /// its own result: one bad chunk fails only its own readers.
    fn start_fetch(self: Arc<Self>, ids: Vec<ChunkId>, priority: Arc<Priority>) -> BatchFetch {
        let task = tokio::spawn(async move {
            let mut results: Vec<Option<Result<Bytes, SharedChunkError>>> = vec![None; ids.len()];
            // The disk cache first, several files at once: one file per chunk gets no
            // readahead across chunks, so depth comes from parallelism. Every read re-hashes.
            if let Some(disk) = &self.disk {
                let want: Vec<(usize, ChunkId)> = ids
                    .iter()
                    .copied()
                    .enumerate()
                    .filter(|(_, id)| disk.contains(id))
                    .collect();
                if !want.is_empty() {
                    let per = want.len().div_ceil(want.len().min(DISK_READS_IN_FLIGHT));
                    let tasks: Vec<_> = want
                        .chunks(per)
                        .map(|group| {
                            let (d, group) = (disk.clone(), group.to_vec());
                            tokio::task::spawn_blocking(move || {
                                group
                                    .into_iter()
                                    .map(|(i, id)| (i, d.get(&id)))
                                    .collect::<Vec<_>>()
                            })
                        })
                        .collect();
                    for t in tasks {
                        for (i, data) in t.await.expect("disk cache task panicked") {
                            if let Some(data) = data {
                                self.counters.disk_hits.fetch_add(1, Relaxed);
                                self.memory.insert(ids[i], data.clone());
                                results[i] = Some(Ok(data));
                            }
                        }
                    }
                }
            }
            // Then the store, for the rest.
            let remote: Vec<usize> = (0..ids.len()).filter(|&i| results[i].is_none()).collect();
            if self.disk.is_some() {
                self.counters
                    .disk_misses
                    .fetch_add(remote.len() as u64, Relaxed);
            }
            let remote_ids: Vec<ChunkId> = remote.iter().map(|&i| ids[i]).collect();
            let mut fetched = Vec::new();
            let fetched_all = self.packs.fetch_with(&remote_ids, &priority).await;
            // A prefetch nobody waits for fills free memory but never evicts: warming a
            // large image must not push the working set out (it still lands on disk).
            let evicting = self.disk.is_none() || !priority.is_prefetch();
            for (&i, r) in remote.iter().zip(fetched_all) {
                match &r {
                    Ok(data) => {
                        self.counters.fetched_chunks.fetch_add(1, Relaxed);
                        self.counters
                            .fetched_bytes
                            .fetch_add(data.len() as u64, Relaxed);
                        if priority.is_prefetch() {
                            self.counters.prefetched_chunks.fetch_add(1, Relaxed);
                            self.counters
                                .prefetched_bytes
                                .fetch_add(data.len() as u64, Relaxed);
                        }
                        if evicting {
                            self.memory.insert(ids[i], data.clone());
                        } else {
                            self.memory.insert_if_room(ids[i], data.clone());
                        }
                        fetched.push((ids[i], data.clone()));
                    }
                    Err(e @ ChunkError::Integrity { .. }) => {
                        self.counters.integrity_failures.fetch_add(1, Relaxed);
                        tracing::error!(error = %e, "chunk failed verification")
                    }
                    Err(_) => {}
                }
                results[i] = Some(r.map_err(Arc::new));
            }
            let results: Vec<Result<Bytes, SharedChunkError>> = results
                .into_iter()
                .map(|r| r.expect("every chunk has a result"))
                .collect();
            if let Some(disk) = &self.disk {
                let d = disk.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    fetched.iter().for_each(|(id, b)| d.insert(id, b))
                })
                .await;
            }
            let mut inflight = self.inflight.lock().expect("inflight lock");
            for id in &ids {
                inflight.remove(id);
            }
            drop(inflight);
            Arc::new(results)
        });
        async move {
            match task.await {
                Ok(r) => r,
                Err(e) => {
                    let err: SharedChunkError =
                        Arc::new(ChunkError::Writer(format!("fetch task failed: {e}")));
                    Arc::new(vec![Err(err)])
                }
            }
        }
        .boxed()
        .shared()
    }
}
