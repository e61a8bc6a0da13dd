//! The chunk reader: the memory tier in front of the [`Fetcher`]. A read looks each chunk
//! up in memory once; the misses go to the fetcher, which tries the disk cache and then
//! the store, once per chunk however many readers want it.

use crate::error::{ReadError, SharedReadError};
use crate::pack::store::PackStore;
use crate::read::cache::{Caches, DiskCache, FileCache, MemoryCache};
use crate::read::fetcher::Fetcher;
use crate::read::policy::{FetchAround, FetchPolicyStats};
use crate::read::schedule::{FetchClass, SchedulerConfig, SchedulerStats};
use crate::read::stats::{CacheUsage, Counters, ReaderStats};
use bytes::Bytes;
use std::path::PathBuf;
use std::sync::Arc;
use thaw_core::ChunkId;

/// The whole-file cache's directory inside the disk cache's.
pub const WHOLE_FILES_DIR: &str = "files";

/// Cache sizes and places.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// The memory cache's bound in bytes.
    pub memory_bytes: u64,
    /// A disk cache directory and its size in bytes.
    pub disk: Option<(PathBuf, u64)>,
    /// On a miss, also fetch the chunks that follow it in its pack, in the same request:
    /// a fixed number of stored bytes (`Fixed(0)`, the default: only what is asked), or
    /// chosen from the store's measured latency and bandwidth (`Auto`, see
    /// [`crate::read::policy`]). Pays off when request latency dominates, as with a remote
    /// object store.
    pub fetch_around: FetchAround,
    /// Limits of the fetch scheduler.
    pub scheduler: SchedulerConfig,
    /// The bound, in bytes, of the whole-file cache kept next to the disk cache (in its
    /// `files/` directory) for FUSE passthrough; 0, or no disk cache: none. See
    /// [`crate::read::cache::FileCache`].
    pub whole_files: u64,
    /// Copy chunks into the disk cache even when the store is a local directory on the
    /// disk cache's filesystem (off by default: reading the store there is as local as
    /// reading the cache, and the copy doubled the time of reading a whole image).
    pub copy_local_store: bool,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            memory_bytes: 256 * 1024 * 1024,
            disk: None,
            fetch_around: FetchAround::Fixed(0),
            scheduler: SchedulerConfig::default(),
            whole_files: 0,
            copy_local_store: false,
        }
    }
}

/// The tiered, single-flight chunk reader.
#[derive(Debug)]
pub struct ChunkReader {
    packs: Arc<PackStore>,
    caches: Arc<Caches>,
    fetcher: Arc<Fetcher>,
    counters: Arc<Counters>,
}

/// Chunks looked up in memory: those found, and which are still to fetch.
#[derive(Debug)]
pub struct Lookup {
    ids: Vec<ChunkId>,
    found: Vec<Option<Bytes>>,
}

impl Lookup {
    /// Every chunk, if all were in memory; else the lookup back, to complete with
    /// [`ChunkReader::complete`].
    pub fn into_found(self) -> Result<Vec<Bytes>, Lookup> {
        if self.found.iter().all(Option::is_some) {
            Ok(self.found.into_iter().flatten().collect())
        } else {
            Err(self)
        }
    }
}

impl ChunkReader {
    /// A reader over `packs` with the caches `config` names.
    pub fn new(packs: Arc<PackStore>, config: ReaderConfig) -> Result<Arc<Self>, ReadError> {
        let disk = match &config.disk {
            Some((dir, bytes)) => {
                Some(
                    DiskCache::open(dir, *bytes).map_err(|source| ReadError::DiskCache {
                        path: dir.display().to_string(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let files = match &config.disk {
            Some((dir, _)) if config.whole_files > 0 => {
                let dir = dir.join(WHOLE_FILES_DIR);
                Some(FileCache::open(&dir, config.whole_files).map_err(|source| {
                    ReadError::DiskCache {
                        path: dir.display().to_string(),
                        source,
                    }
                })?)
            }
            _ => None,
        };
        let copy_fetched = config.copy_local_store
            || !config
                .disk
                .as_ref()
                .is_some_and(|(dir, _)| same_filesystem(packs.store().local_dir(), dir));
        if disk.is_some() && !copy_fetched {
            tracing::info!(store = %packs.store().describe(), "the store is a local directory on the disk cache's filesystem: chunks are not copied into the cache");
        }
        let caches = Arc::new(Caches {
            memory: MemoryCache::new(config.memory_bytes),
            disk,
            files,
            copy_fetched,
        });
        let counters = Arc::new(Counters::default());
        let fetcher = Arc::new(Fetcher::new(
            packs.clone(),
            caches.clone(),
            counters.clone(),
            config.fetch_around,
            config.scheduler,
        ));
        Ok(Arc::new(ChunkReader {
            packs,
            caches,
            fetcher,
            counters,
        }))
    }

    /// The packs this reader fetches from.
    pub fn packs(&self) -> &Arc<PackStore> {
        &self.packs
    }

    /// The disk cache, if any.
    pub fn disk(&self) -> Option<&DiskCache> {
        self.caches.disk.as_ref()
    }

    /// The whole-file cache (for FUSE passthrough), if any.
    pub fn files(&self) -> Option<&FileCache> {
        self.caches.files.as_ref()
    }

    /// Whether chunks fetched from the store are kept in the disk cache (not from a local
    /// directory on its filesystem; see [`ReaderConfig::copy_local_store`]).
    pub fn copies_fetched(&self) -> bool {
        self.caches.disk.is_some() && self.caches.copy_fetched
    }

    /// Whether chunks fetched on demand stay out of the disk cache because the store is a
    /// local directory on its filesystem, read in place (see
    /// [`ReaderConfig::copy_local_store`]).
    pub fn reads_store_in_place(&self) -> bool {
        self.caches.disk.is_some() && !self.caches.copy_fetched
    }

    /// Whether every chunk this reader fetches comes from a local directory and stays
    /// there: the store is local and its chunks are not copied into a disk cache (there
    /// is none, or it is on the store's filesystem; see [`ReaderConfig::copy_local_store`]).
    pub fn reads_local_store(&self) -> bool {
        self.fetcher.reads_local_store()
    }

    pub(crate) fn caches(&self) -> &Caches {
        &self.caches
    }

    /// The fetcher below the memory tier.
    pub fn fetcher(&self) -> &Arc<Fetcher> {
        &self.fetcher
    }

    /// Changes the fetch scheduler's limits.
    pub fn configure_scheduler(&self, config: SchedulerConfig) {
        self.fetcher.configure(config);
    }

    /// The fetch scheduler's counters.
    pub fn scheduler_stats(&self) -> SchedulerStats {
        self.fetcher.scheduler_stats()
    }

    /// Where reads were served from so far.
    pub fn stats(&self) -> ReaderStats {
        let p = self.fetcher.policy().stats();
        ReaderStats {
            fetch_around_bytes: p.fetch_around_bytes,
            store_latency_us: p.store_latency_us,
            store_bytes_per_second: p.store_bytes_per_second,
            decode_bytes_per_second: p.decode_bytes_per_second,
            ..self.counters.snapshot()
        }
    }

    /// What the fetch policy has measured of the store and chooses from it.
    pub fn fetch_policy(&self) -> FetchPolicyStats {
        self.fetcher.policy().stats()
    }

    /// How full the caches are.
    pub fn cache_usage(&self) -> CacheUsage {
        self.caches.usage()
    }

    /// Whether a chunk is in memory or on disk (index lookups, no I/O).
    pub fn is_cached(&self, id: &ChunkId) -> bool {
        self.caches.contains(id)
    }

    /// One chunk from the memory tier, if it is there (counted as a hit or a miss).
    pub fn memory_get(&self, id: &ChunkId) -> Option<Bytes> {
        let found = self.caches.memory.get(id);
        let counter = if found.is_some() {
            &self.counters.memory_hits
        } else {
            &self.counters.memory_misses
        };
        Counters::add(counter, 1);
        found
    }

    /// Looks every chunk up in memory, once, counting hits and misses. Lets a blocking
    /// caller skip the async runtime when everything is there.
    pub fn lookup(&self, ids: &[ChunkId]) -> Lookup {
        let found: Vec<Option<Bytes>> = ids.iter().map(|id| self.caches.memory.get(id)).collect();
        let hits = found.iter().filter(|f| f.is_some()).count() as u64;
        Counters::add(&self.counters.memory_hits, hits);
        Counters::add(&self.counters.memory_misses, ids.len() as u64 - hits);
        Lookup {
            ids: ids.to_vec(),
            found,
        }
    }

    /// Fetches what a [`Lookup`] did not find in memory, at on-demand priority.
    pub async fn complete(&self, lookup: Lookup) -> Result<Vec<Bytes>, SharedReadError> {
        let Lookup { ids, mut found } = lookup;
        let missing: Vec<usize> = (0..ids.len()).filter(|&i| found[i].is_none()).collect();
        let want: Vec<ChunkId> = missing.iter().map(|&i| ids[i]).collect();
        let got = self.fetcher.fetch(&want, FetchClass::OnDemand).await;
        for (i, outcome) in missing.into_iter().zip(got) {
            found[i] = Some(outcome?);
        }
        Ok(found.into_iter().flatten().collect())
    }

    /// Reads chunks, in order. Misses are fetched together, so neighbours in a pack
    /// share requests.
    pub async fn read_many(&self, ids: &[ChunkId]) -> Result<Vec<Bytes>, SharedReadError> {
        match self.lookup(ids).into_found() {
            Ok(all) => Ok(all),
            Err(partial) => self.complete(partial).await,
        }
    }

    /// Reads one chunk.
    pub async fn read(&self, id: ChunkId) -> Result<Bytes, SharedReadError> {
        let mut v = self.read_many(&[id]).await?;
        v.pop().ok_or_else(|| Arc::new(ReadError::Abandoned(id)))
    }
}

/// Whether the local store directory `store` (if any) is on the same filesystem as the
/// disk cache directory `cache` (compared by device; false if either cannot be read).
fn same_filesystem(store: Option<PathBuf>, cache: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| m.dev());
    match (store, dev(cache)) {
        (Some(store), Some(cache)) => dev(&store) == Some(cache),
        _ => false,
    }
}
