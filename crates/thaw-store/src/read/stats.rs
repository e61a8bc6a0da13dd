//! What the read path counts: where reads were served from, how full the caches are, and
//! how far a prefetch has got.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Where reads were served from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReaderStats {
    /// Chunks found in memory.
    pub memory_hits: u64,
    /// Chunks found in the disk cache.
    pub disk_hits: u64,
    /// Chunks fetched from the store.
    pub fetched_chunks: u64,
    /// Their uncompressed bytes.
    pub fetched_bytes: u64,
    /// Reads that joined a fetch already in flight.
    pub joined_fetches: u64,
    /// On-demand flights run on the reader's own thread ([`crate::read::inline`]).
    pub inline_fetches: u64,
    /// Chunks fetched because they follow a missed chunk in its pack.
    pub fetched_around: u64,
    /// Of those, chunks not decoded because on-demand work was waiting (no reader wanted
    /// them yet).
    pub dropped_around: u64,
    /// Of the fetched chunks, those a prefetch asked for.
    pub prefetched_chunks: u64,
    /// Their uncompressed bytes.
    pub prefetched_bytes: u64,
    /// Chunks a read did not find in memory.
    pub memory_misses: u64,
    /// Chunks looked for on disk and not found there (so fetched from the store).
    pub disk_misses: u64,
    /// Chunks the store returned that failed verification.
    pub integrity_failures: u64,
    /// Stored bytes fetched around a miss now (the fetch policy's choice).
    pub fetch_around_bytes: u64,
    /// The store's measured latency per GET, microseconds (0: not measured yet).
    pub store_latency_us: u64,
    /// The store's measured bandwidth, bytes per second (0: not measured yet).
    pub store_bytes_per_second: u64,
    /// Measured decoding on one core, bytes per second (0: not measured yet).
    pub decode_bytes_per_second: u64,
}

/// How full the caches are.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheUsage {
    /// Bytes held in memory.
    pub memory_bytes: u64,
    /// The memory cache's bound.
    pub memory_capacity: u64,
    /// Chunks held in memory.
    pub memory_entries: usize,
    /// Bytes held on disk (entries with their trailers).
    pub disk_bytes: u64,
    /// The disk cache's bound (0 without one).
    pub disk_capacity: u64,
    /// Chunks held on disk.
    pub disk_entries: usize,
    /// Disk cache writes that failed (the chunk was still served).
    pub disk_write_errors: u64,
    /// Whether the last disk cache write failed because its file system is full.
    pub disk_full: bool,
}

/// The live counters behind [`ReaderStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub memory_hits: AtomicU64,
    pub disk_hits: AtomicU64,
    pub fetched_chunks: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub joined_fetches: AtomicU64,
    pub inline_fetches: AtomicU64,
    pub fetched_around: AtomicU64,
    pub dropped_around: AtomicU64,
    pub prefetched_chunks: AtomicU64,
    pub prefetched_bytes: AtomicU64,
    pub memory_misses: AtomicU64,
    pub disk_misses: AtomicU64,
    pub integrity_failures: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn snapshot(&self) -> ReaderStats {
        ReaderStats {
            memory_hits: self.memory_hits.load(Relaxed),
            disk_hits: self.disk_hits.load(Relaxed),
            fetched_chunks: self.fetched_chunks.load(Relaxed),
            fetched_bytes: self.fetched_bytes.load(Relaxed),
            joined_fetches: self.joined_fetches.load(Relaxed),
            inline_fetches: self.inline_fetches.load(Relaxed),
            fetched_around: self.fetched_around.load(Relaxed),
            dropped_around: self.dropped_around.load(Relaxed),
            prefetched_chunks: self.prefetched_chunks.load(Relaxed),
            prefetched_bytes: self.prefetched_bytes.load(Relaxed),
            memory_misses: self.memory_misses.load(Relaxed),
            disk_misses: self.disk_misses.load(Relaxed),
            integrity_failures: self.integrity_failures.load(Relaxed),
            ..ReaderStats::default()
        }
    }
}

/// How far a prefetch has got; shared with whoever reports on it.
#[derive(Debug, Default)]
pub struct PrefetchProgress {
    /// Distinct chunks to warm.
    pub total_chunks: AtomicU64,
    /// Their uncompressed bytes.
    pub total_bytes: AtomicU64,
    /// Chunks warmed so far (fetched, or found cached).
    pub done_chunks: AtomicU64,
    /// Their uncompressed bytes.
    pub done_bytes: AtomicU64,
    /// Of the done chunks, those that were cached already.
    pub cached_chunks: AtomicU64,
    /// Chunks that could not be warmed.
    pub errors: AtomicU64,
    /// The last of those errors.
    pub last_error: Mutex<Option<String>>,
}

impl PrefetchProgress {
    pub(crate) fn done(&self, chunks: u64, bytes: u64) {
        self.done_chunks.fetch_add(chunks, Relaxed);
        self.done_bytes.fetch_add(bytes, Relaxed);
    }

    /// One chunk found cached: done, and counted as such.
    pub(crate) fn cached(&self, bytes: u64) {
        self.done(1, bytes);
        self.cached_chunks.fetch_add(1, Relaxed);
    }

    pub(crate) fn error(&self, e: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Relaxed);
        *self.last_error.lock() = Some(e.to_string());
    }
}
