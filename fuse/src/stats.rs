//! Counters of FUSE operations and bytes served, rendered as `key: value` text.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use thaw_store::read::cache::FileCacheStats;
use thaw_store::read::histogram::{HistogramSnapshot, LatencyHistogram};
use thaw_store::ReaderStats;

/// The operations counted.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// `lookup`
    Lookup,
    /// `getattr`
    Getattr,
    /// `readlink`
    Readlink,
    /// `open`
    Open,
    /// `read`
    Read,
    /// `readdir`
    Readdir,
    /// `readdirplus`
    Readdirplus,
    /// `getxattr`
    Getxattr,
    /// `listxattr`
    Listxattr,
    /// `statfs`
    Statfs,
    /// `access`
    Access,
    /// `flush` (answered once: the kernel then stops sending it)
    Flush,
    /// `opendir` (answered once: the kernel then opens directories itself)
    Opendir,
}

const OPS: [(&str, Op); 13] = [
    ("lookup", Op::Lookup),
    ("getattr", Op::Getattr),
    ("readlink", Op::Readlink),
    ("open", Op::Open),
    ("read", Op::Read),
    ("readdir", Op::Readdir),
    ("readdirplus", Op::Readdirplus),
    ("getxattr", Op::Getxattr),
    ("listxattr", Op::Listxattr),
    ("statfs", Op::Statfs),
    ("access", Op::Access),
    ("flush", Op::Flush),
    ("opendir", Op::Opendir),
];

/// Which of an image's inodes have been opened, and how many: a workload that walks the
/// image opens many distinct files, while a server that opens the same few files for
/// every request does not (its opens alone would, given time).
#[derive(Debug, Default)]
pub struct OpenedFiles {
    inodes: u32,
    bits: Box<[AtomicU64]>,
    distinct: AtomicU64,
    /// The inode opened last, plus one (0: none yet).
    last: AtomicU32,
}

impl OpenedFiles {
    /// For an image of `inodes` inodes.
    pub fn new(inodes: usize) -> Self {
        OpenedFiles {
            inodes: u32::try_from(inodes).unwrap_or(u32::MAX),
            bits: (0..inodes.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            distinct: AtomicU64::new(0),
            last: AtomicU32::new(0),
        }
    }

    /// Records an open of `ino` (an inode out of range is not counted).
    pub fn mark(&self, ino: u32) {
        let Some(word) = self
            .bits
            .get(ino as usize / 64)
            .filter(|_| ino < self.inodes)
        else {
            return;
        };
        self.last.store(ino.saturating_add(1), Relaxed);
        let bit = 1u64 << (ino % 64);
        if word.fetch_or(bit, Relaxed) & bit == 0 {
            self.distinct.fetch_add(1, Relaxed);
        }
    }

    /// How many distinct inodes have been opened.
    pub fn distinct(&self) -> u64 {
        self.distinct.load(Relaxed)
    }

    /// The inode opened last, if any.
    pub fn last(&self) -> Option<u32> {
        self.last.load(Relaxed).checked_sub(1)
    }
}

/// Live counters of one mount.
#[derive(Debug, Default)]
pub struct FsStats {
    ops: [AtomicU64; 13],
    latency: [LatencyHistogram; 13],
    /// Bytes returned by reads.
    pub bytes_served: AtomicU64,
    /// Bytes served from zero extents (no fetch).
    pub zero_bytes_served: AtomicU64,
    /// Reads that failed.
    pub read_errors: AtomicU64,
    /// Chunks asked for by readahead.
    pub readahead_chunks: AtomicU64,
    /// Files the mount read through itself into the kernel's caches.
    pub warmed_files: AtomicU64,
    /// The distinct files opened.
    pub opened: OpenedFiles,
}

/// What FUSE passthrough did on a mount, with the node's whole-file cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassthroughSnapshot {
    /// Whether the kernel accepted passthrough and it is in use.
    pub active: bool,
    /// Opens answered with a backing file (reads then bypass thaw).
    pub opens: u64,
    /// Backing files the kernel refused (those opens were served through reads).
    pub refused: u64,
    /// The whole-file cache's counters.
    pub files: FileCacheStats,
}

/// Records one operation's latency when dropped.
#[derive(Debug)]
pub struct OpTimer<'a> {
    stats: &'a FsStats,
    op: Op,
    started: std::time::Instant,
}

impl Drop for OpTimer<'_> {
    fn drop(&mut self) {
        self.stats.latency[self.op as usize].observe(self.started.elapsed());
    }
}

/// A copy of the counters, with the reader's tier statistics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsSnapshot {
    /// Operations served, by name.
    pub ops: Vec<(&'static str, u64)>,
    /// Time from an operation's arrival to its reply, per operation.
    pub op_latency: Vec<(&'static str, HistogramSnapshot)>,
    /// Bytes returned by reads.
    pub bytes_served: u64,
    /// Of those, bytes of zero runs (no chunk).
    pub zero_bytes_served: u64,
    /// Reads that failed.
    pub read_errors: u64,
    /// Chunks readahead asked for.
    pub readahead_chunks: u64,
    /// Files the mount read through itself into the kernel's caches.
    pub warmed_files: u64,
    /// Distinct files opened.
    pub files_opened: u64,
    /// The reader's counters (shared by every mount of the reader).
    pub reader: ReaderStats,
    /// FUSE passthrough.
    pub passthrough: PassthroughSnapshot,
}

impl FsStats {
    /// The counters of a mount of an image of `inodes` inodes.
    pub fn for_inodes(inodes: usize) -> Self {
        FsStats {
            opened: OpenedFiles::new(inodes),
            ..FsStats::default()
        }
    }

    /// Counts an operation; its latency is recorded when the returned guard drops
    /// (after the reply).
    pub fn start(&self, op: Op) -> OpTimer<'_> {
        self.ops[op as usize].fetch_add(1, Relaxed);
        OpTimer {
            stats: self,
            op,
            started: std::time::Instant::now(),
        }
    }

    /// How many of `op` were served so far.
    pub fn count(&self, op: Op) -> u64 {
        self.ops[op as usize].load(Relaxed)
    }

    /// The counters now, with the reader's.
    pub fn snapshot(&self, reader: ReaderStats, passthrough: PassthroughSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            ops: OPS
                .iter()
                .map(|(name, op)| (*name, self.ops[*op as usize].load(Relaxed)))
                .collect(),
            op_latency: OPS
                .iter()
                .map(|(name, op)| (*name, self.latency[*op as usize].snapshot()))
                .collect(),
            bytes_served: self.bytes_served.load(Relaxed),
            zero_bytes_served: self.zero_bytes_served.load(Relaxed),
            read_errors: self.read_errors.load(Relaxed),
            readahead_chunks: self.readahead_chunks.load(Relaxed),
            warmed_files: self.warmed_files.load(Relaxed),
            files_opened: self.opened.distinct(),
            reader,
            passthrough,
        }
    }
}

impl StatsSnapshot {
    /// `key: value` lines, stable for scripts.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (name, n) in &self.ops {
            s.push_str(&format!("op_{name}: {n}\n"));
        }
        // Time spent answering each kind of operation (summed over the FUSE threads):
        // against the workload's wall time it says how much of it waited on the mount.
        for (name, h) in &self.op_latency {
            s.push_str(&format!("op_{name}_seconds: {:.3}\n", h.sum_seconds));
        }
        let r = &self.reader;
        s.push_str(&format!(
            "bytes_served: {}\nzero_bytes_served: {}\nread_errors: {}\nreadahead_chunks: {}\nmemory_hits: {}\ndisk_hits: {}\nfetched_chunks: {}\nfetched_bytes: {}\njoined_fetches: {}\nfetched_around: {}\nprefetched_chunks: {}\nprefetched_bytes: {}\n",
            self.bytes_served, self.zero_bytes_served, self.read_errors, self.readahead_chunks,
            r.memory_hits, r.disk_hits, r.fetched_chunks, r.fetched_bytes, r.joined_fetches, r.fetched_around,
            r.prefetched_chunks, r.prefetched_bytes
        ));
        s.push_str(&format!("dropped_around: {}\n", r.dropped_around));
        s.push_str(&format!("inline_fetches: {}\n", r.inline_fetches));
        s.push_str(&format!("kernel_warmed_files: {}\n", self.warmed_files));
        s.push_str(&format!("files_opened: {}\n", self.files_opened));
        s.push_str(&format!(
            "fetch_around_bytes: {}\nstore_latency_us: {}\nstore_bytes_per_second: {}\ndecode_bytes_per_second: {}\n",
            r.fetch_around_bytes, r.store_latency_us, r.store_bytes_per_second, r.decode_bytes_per_second
        ));
        let p = &self.passthrough;
        s.push_str(&format!(
            "passthrough_active: {}\npassthrough_opens: {}\npassthrough_refused: {}\nwhole_files: {}\nwhole_file_bytes: {}\nwhole_files_written: {}\nwhole_files_verified: {}\nwhole_files_rejected: {}\n",
            u8::from(p.active), p.opens, p.refused, p.files.files, p.files.bytes, p.files.materialised, p.files.verified, p.files.rejected
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::{HistogramSnapshot, OpenedFiles, StatsSnapshot};

    #[test]
    fn the_time_spent_on_each_operation_is_rendered() {
        let latency = |sum_seconds| HistogramSnapshot {
            counts: vec![],
            sum_seconds,
        };
        let snapshot = StatsSnapshot {
            ops: vec![("read", 4), ("open", 2)],
            op_latency: vec![("read", latency(1.5)), ("open", latency(0.0004))],
            ..StatsSnapshot::default()
        };
        let text = snapshot.render();
        for line in [
            "op_read: 4\n",
            "op_read_seconds: 1.500\n",
            "op_open_seconds: 0.000\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }

    #[test]
    fn opened_files_counts_each_inode_once() {
        let opened = OpenedFiles::new(130);
        for ino in [1, 1, 64, 129, 1, 64] {
            opened.mark(ino);
        }
        opened.mark(130); // out of range: not counted
        assert_eq!(opened.distinct(), 3);
        assert_eq!(opened.last(), Some(64));
        assert_eq!(OpenedFiles::new(4).last(), None);
    }
}
