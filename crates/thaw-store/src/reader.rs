//! Reads chunks through the tiers: memory LRU, disk cache, then the packs in the
//! store. Concurrent reads of one missing chunk share a single fetch.

use crate::cache::{DiskCache, MemoryCache};
use crate::error::{ChunkError, SharedChunkError};
use crate::PackStore;
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
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
}

#[derive(Debug, Default)]
struct Counters {
    memory_hits: AtomicU64,
    disk_hits: AtomicU64,
    fetched_chunks: AtomicU64,
    fetched_bytes: AtomicU64,
    joined_fetches: AtomicU64,
    fetched_around: AtomicU64,
}

/// Disk cache reads one `read_many` runs at once.
const DISK_READS_IN_FLIGHT: usize = 4;

type Fetch = Shared<BoxFuture<'static, Result<Bytes, SharedChunkError>>>;
/// One spawned fetch of several chunks: a result per chunk, in order.
type BatchFetch = Shared<BoxFuture<'static, Arc<Vec<Result<Bytes, SharedChunkError>>>>>;

/// The tiered, single-flight chunk reader.
#[derive(Debug)]
pub struct ChunkReader {
    packs: Arc<PackStore>,
    memory: MemoryCache,
    disk: Option<Arc<DiskCache>>,
    inflight: Mutex<HashMap<ChunkId, Fetch>>,
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
        }
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
                } else if let Some(f) = inflight.get(&id) {
                    self.counters.joined_fetches.fetch_add(1, Relaxed);
                    joined.push((i, f.clone()));
                } else if starting.insert(id) {
                    to_start.push(id);
                }
            }
            if self.fetch_around > 0 {
                for id in to_start.clone() {
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
            if !to_start.is_empty() {
                let batch = self.clone().start_fetch(to_start.clone());
                for (k, id) in to_start.iter().enumerate() {
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
                    inflight.insert(*id, f);
                }
            }
            missing
                .iter()
                .filter(|&&i| out[i].is_none())
                .filter_map(|&i| inflight.get(&ids[i]).map(|f| (i, f.clone())))
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

    /// Spawns one fetch of several chunks. It runs to completion even if every reader
    /// gives up, fills the caches, and then leaves the in-flight table. Each chunk has
    /// its own result: one bad chunk fails only its own readers.
    fn start_fetch(self: Arc<Self>, ids: Vec<ChunkId>) -> BatchFetch {
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
            let remote_ids: Vec<ChunkId> = remote.iter().map(|&i| ids[i]).collect();
            let mut fetched = Vec::new();
            for (&i, r) in remote.iter().zip(self.packs.fetch(&remote_ids).await) {
                match &r {
                    Ok(data) => {
                        self.counters.fetched_chunks.fetch_add(1, Relaxed);
                        self.counters
                            .fetched_bytes
                            .fetch_add(data.len() as u64, Relaxed);
                        self.memory.insert(ids[i], data.clone());
                        fetched.push((ids[i], data.clone()));
                    }
                    Err(e @ ChunkError::Integrity { .. }) => {
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
