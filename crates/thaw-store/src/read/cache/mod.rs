//! Local cache tiers for decompressed, verified chunks: memory, then disk; and whole
//! files assembled from them for FUSE passthrough.

mod disk;
mod files;

pub(crate) use disk::{check_entry, write_atomically};
mod memory;

pub use disk::DiskCache;
pub use files::{FileCache, FileCacheStats, FileKey, FileState};
pub use memory::MemoryCache;

use crate::read::stats::CacheUsage;
use thaw_core::ChunkId;

/// The node's two local tiers, looked up in this order.
#[derive(Debug)]
pub struct Caches {
    /// Chunks in memory (a byte-bounded LRU).
    pub memory: MemoryCache,
    /// Chunks on disk, if the reader has a disk cache.
    pub disk: Option<DiskCache>,
    /// Whole files for FUSE passthrough, next to the disk cache, if configured.
    pub files: Option<FileCache>,
    /// Whether chunks fetched on demand are written to the disk cache: not when the
    /// store is a local directory on the disk cache's filesystem, where a copy would only
    /// cost a second write of every byte (see `ReaderConfig::copy_local_store`). A
    /// prefetch's chunks are written either way unless memory holds them: they wait
    /// there for their readers.
    pub copy_fetched: bool,
}

impl Caches {
    /// Whether a chunk fetched from the store is written to the disk cache: always with
    /// `copy_fetched`, else only a prefetch's (its chunks wait there for their readers).
    pub fn keeps_on_disk(&self, prefetch: bool) -> bool {
        self.disk.is_some() && (self.copy_fetched || prefetch)
    }

    /// Whether either tier holds `id` (index lookups only: no I/O, no verification).
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.memory.contains(id) || self.disk.as_ref().is_some_and(|d| d.contains(id))
    }

    /// How full the tiers are.
    pub fn usage(&self) -> CacheUsage {
        let disk = self.disk.as_ref();
        CacheUsage {
            memory_bytes: self.memory.bytes(),
            memory_capacity: self.memory.capacity(),
            memory_entries: self.memory.len(),
            disk_bytes: disk.map_or(0, DiskCache::bytes),
            disk_capacity: disk.map_or(0, DiskCache::capacity),
            disk_entries: disk.map_or(0, DiskCache::len),
            disk_write_errors: disk.map_or(0, DiskCache::write_errors),
            disk_full: disk.is_some_and(DiskCache::is_full),
        }
    }
}
