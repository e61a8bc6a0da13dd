//! FUSE passthrough: an open of a file held whole in the node's whole-file cache is
//! answered with that local file, and the kernel then reads it directly (no `read`
//! request reaches thaw). Files become whole in the background once all their chunks are
//! cached and their last plain open is released; an entry an earlier process left is
//! checked then, before its first use.
//!
//! Rules the kernel imposes, kept here (see docs/benchmarks.md for what was measured):
//! - one backing id per inode while any open of it is live (a second gives EIO);
//! - passthrough and plain opens of one inode cannot be live at once, so the choice is
//!   per inode, made when it has no open, and kept until its last open is released;
//! - passthrough reads bypass thaw, so only files written whole from verified chunks, or
//!   found on disk and verified again, are passed through, and never while a start-up
//!   trace is recorded (it would miss them).
//!
//! Because of the second rule, the opens of every file passthrough could serve are
//! counted (plain ones too) once passthrough is negotiated, and a held mount writes them
//! through to its open table ([`crate::opens`]) for a successor.

use crate::fs::FsShared;
use crate::opens::{OpenSlot, OpenTable};
use crate::stats::{FsStats, Op, PassthroughSnapshot};
use fuser::{BackingId, ReplyOpen};
use parking_lot::Mutex;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use thaw_core::manifest::FileExtent;
use thaw_core::InodeKind;
use thaw_store::read::cache::{FileKey, FileState};
use thaw_store::ChunkReader;
use tokio::sync::mpsc;

/// Files smaller than this are always served through `read`: one or two requests each,
/// which the copy to the whole-file cache would not repay.
pub const DEFAULT_PASSTHROUGH_MIN: u64 = 128 << 10;

/// Whole-file jobs waiting at most; more are dropped (the next release asks again).
const QUEUE: usize = 256;

/// A whole-file job starts once no `read` has reached the mount for this long: the copy
/// serves later opens, so it must not take CPU and disk from the reads of this one (a
/// workload reading every file of a 5.5 GB image took 24–26 s with the copies written
/// beside it, 15–18 s with none; docs/benchmarks-notes.md).
const QUIET: Duration = Duration::from_millis(100);

/// A job waits for quiet at most this long, so a mount that is never quiet still gets
/// its whole files, one job per wait.
const MOST_DEFERRED: Duration = Duration::from_secs(60);

/// The live opens of one inode and, if they are passthrough opens, their backing id.
#[derive(Debug)]
struct InodeOpens {
    count: u32,
    backing: Option<Arc<BackingId>>,
}

/// What a background job does to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobKind {
    /// Write it whole from the chunk caches.
    Write,
    /// Check an entry an earlier process left.
    Verify,
}

#[derive(Debug)]
struct Job {
    kind: JobKind,
    key: FileKey,
    size: u64,
    extents: Vec<FileExtent>,
}

/// A mount's passthrough state.
#[derive(Debug)]
pub(crate) struct Passthrough {
    /// Set at init when the kernel accepted passthrough.
    negotiated: AtomicBool,
    /// Cleared after the kernel refused a backing file as no backing file could work.
    usable: AtomicBool,
    opens: Mutex<HashMap<u32, InodeOpens>>,
    /// Bytes served through `read` so far to the released opens of files passthrough
    /// could serve that are not whole yet (the page cache means a file read whole in
    /// two opens may be served in parts of each).
    served: Mutex<HashMap<u32, u64>>,
    /// A held mount's record of `opens`, for a successor.
    table: OnceLock<OpenTable>,
    jobs: Option<mpsc::Sender<Job>>,
    /// Opens answered with a backing file.
    pub(crate) opens_passed: AtomicU64,
    /// Backing files the kernel refused (the open was then served through `read`).
    pub(crate) refused: AtomicU64,
    min_size: u64,
}

impl Passthrough {
    /// Passthrough for a mount reading through `reader`: off (`wanted` false, or no
    /// whole-file cache) or ready to be negotiated at init, with its job worker on `rt`
    /// (which watches the mount's `stats` to wait for its reads to pause).
    pub(crate) fn new(
        wanted: bool,
        min_size: u64,
        reader: &Arc<ChunkReader>,
        stats: &Arc<FsStats>,
        rt: &tokio::runtime::Handle,
    ) -> Self {
        let jobs = (wanted && reader.files().is_some()).then(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            rt.spawn(run_jobs(rx, reader.clone(), stats.clone()));
            tx
        });
        Passthrough {
            negotiated: AtomicBool::new(false),
            usable: AtomicBool::new(true),
            opens: Mutex::default(),
            served: Mutex::default(),
            table: OnceLock::new(),
            jobs,
            opens_passed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            min_size,
        }
    }

    /// Whether to ask the kernel for passthrough at init.
    pub(crate) fn wanted(&self) -> bool {
        self.jobs.is_some()
    }

    /// Records that the kernel accepted passthrough.
    pub(crate) fn set_negotiated(&self) {
        self.negotiated.store(true, Relaxed);
    }

    /// Whether the kernel accepted passthrough at the connection's init.
    pub(crate) fn negotiated(&self) -> bool {
        self.negotiated.load(Relaxed)
    }

    /// Whether passthrough is live on this mount.
    pub(crate) fn active(&self) -> bool {
        self.negotiated.load(Relaxed) && self.usable.load(Relaxed)
    }

    /// Records this mount's opens in `table` from now on (a held mount).
    pub(crate) fn attach(&self, table: OpenTable) {
        let _ = self.table.set(table);
    }

    /// Takes over the opens a predecessor recorded in `table` (`live`), wrapping their
    /// backing ids with `wrap`, and records in it from now on.
    pub(crate) fn resume(
        &self,
        table: OpenTable,
        live: Vec<OpenSlot>,
        wrap: impl Fn(u32) -> BackingId,
    ) {
        let mut opens = self.opens.lock();
        for slot in live {
            let backing = (slot.backing != 0).then(|| Arc::new(wrap(slot.backing)));
            let count = slot.count;
            opens.insert(slot.ino, InodeOpens { count, backing });
        }
        self.attach(table);
    }

    /// Adds `n` bytes served to the released opens of `ino`; returns their total.
    fn add_served(&self, ino: u32, n: u64) -> u64 {
        let mut all = self.served.lock();
        if n == 0 {
            return all.get(&ino).copied().unwrap_or(0);
        }
        let total = all.entry(ino).or_default();
        *total = total.saturating_add(n);
        *total
    }

    fn record(&self, ino: u32, live: &InodeOpens) {
        if let Some(table) = self.table.get() {
            let backing = live.backing.as_ref().map_or(0, |b| b.raw());
            table.store(ino, live.count, backing);
        }
    }
}

/// Waits until the count `reads` gives has not moved for `quiet`, or `most` has passed.
/// Returns whether it found quiet.
async fn wait_for_quiet(reads: impl Fn() -> u64, quiet: Duration, most: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + most;
    loop {
        let before = reads();
        tokio::time::sleep(quiet).await;
        if reads() == before {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
    }
}

/// Runs whole-file jobs one at a time on the blocking pool, each once the mount's reads
/// have paused, until the mount goes.
async fn run_jobs(mut rx: mpsc::Receiver<Job>, reader: Arc<ChunkReader>, stats: Arc<FsStats>) {
    while let Some(job) = rx.recv().await {
        if !wait_for_quiet(|| stats.count(Op::Read), QUIET, MOST_DEFERRED).await {
            tracing::debug!(file = %job.key, "whole-file job runs beside reads that never paused");
        }
        let reader = reader.clone();
        let done = tokio::task::spawn_blocking(move || {
            let result = match job.kind {
                JobKind::Write => reader.materialise(job.key, job.size, &job.extents),
                JobKind::Verify => reader.verify_whole(job.key, job.size, &job.extents),
            };
            (job.kind, job.key, result)
        })
        .await;
        match done {
            Ok((kind, key, Err(e))) => {
                tracing::debug!(?kind, file = %key, error = %e, "whole-file job failed")
            }
            Ok((kind, key, Ok(()))) => tracing::debug!(?kind, file = %key, "whole-file job done"),
            Err(e) => tracing::warn!(error = %e, "whole-file job panicked"),
        }
    }
}

impl FsShared {
    /// What passthrough did on this mount, with the whole-file cache's counters.
    pub fn passthrough_snapshot(&self) -> PassthroughSnapshot {
        let p = &self.passthrough;
        PassthroughSnapshot {
            active: p.active(),
            opens: p.opens_passed.load(Relaxed),
            refused: p.refused.load(Relaxed),
            files: self.reader.files().map(|f| f.stats()).unwrap_or_default(),
        }
    }

    /// The size of inode `ino` if its opens may be passed through.
    fn passthrough_size(&self, ino: u32) -> Option<u64> {
        if !self.passthrough.active() || self.trace.is_some() {
            return None;
        }
        self.mode_tracked(ino)
    }

    /// The size of inode `ino` if the kernel ties its opens to an I/O mode: passthrough
    /// was negotiated and it is a file passthrough could serve (active now or not).
    fn mode_tracked(&self, ino: u32) -> Option<u64> {
        let p = &self.passthrough;
        if !p.negotiated() {
            return None;
        }
        match &self.manifest.inodes[ino as usize].kind {
            InodeKind::File { size, .. } if *size >= p.min_size.max(1) => Some(*size),
            _ => None,
        }
    }

    /// Counts an open of `ino` (recorded before the reply) and returns the backing id to
    /// answer it with, if it is to be passed through: the inode's live one, or a new one
    /// when it has no open and is whole in the cache.
    pub(crate) fn open_passthrough(&self, ino: u32, reply: &ReplyOpen) -> Option<Arc<BackingId>> {
        self.mode_tracked(ino)?;
        let mut opens = self.passthrough.opens.lock();
        let live = match opens.entry(ino) {
            Entry::Occupied(e) => {
                let live = e.into_mut();
                live.count += 1;
                live
            }
            Entry::Vacant(e) => e.insert(InodeOpens {
                count: 1,
                backing: self.new_backing(ino, reply),
            }),
        };
        self.passthrough.record(ino, live);
        live.backing.clone()
    }

    /// A backing id for the first open of `ino`, if it may be passed through and is whole.
    fn new_backing(&self, ino: u32, reply: &ReplyOpen) -> Option<Arc<BackingId>> {
        let file = self.backing_file(ino, self.passthrough_size(ino)?)?;
        match reply.open_backing(&file) {
            Ok(id) => {
                self.passthrough.opens_passed.fetch_add(1, Relaxed);
                Some(Arc::new(id))
            }
            Err(e) => {
                self.refused_backing(&e);
                None
            }
        }
    }

    /// Counts a release of an open of `ino` that was served `served` bytes (after its
    /// reply); after its last plain open, see [`Self::queue_whole_file`].
    pub(crate) fn release_passthrough(&self, ino: u32, served: u64) {
        let last_plain = {
            let mut opens = self.passthrough.opens.lock();
            let Some(live) = opens.get_mut(&ino) else {
                return;
            };
            live.count = live.count.saturating_sub(1);
            self.passthrough.record(ino, live);
            // Dropping a backing id closes it in the kernel: after the record, so that a
            // successor never wraps a closed id.
            live.count == 0 && opens.remove(&ino).is_some_and(|o| o.backing.is_none())
        };
        let Some(size) = self.passthrough_size(ino) else {
            return;
        };
        let served = self.passthrough.add_served(ino, served);
        if last_plain {
            self.queue_whole_file(ino, served >= size);
        }
    }

    /// The whole file of `ino`, opened, if the cache holds it trusted.
    fn backing_file(&self, ino: u32, size: u64) -> Option<std::fs::File> {
        let files = self.reader.files()?;
        let key = FileKey::of(self.table.extents(ino));
        files.open_ready(&key, size)
    }

    /// After the last plain open of `ino`: queues writing it whole if it can be (all its
    /// chunks cached, or `read_whole` from a local store read in place: see
    /// [`ChunkReader::can_make_whole`]), or checking the entry an earlier process left.
    /// Not while it is open, so the job never competes with the reads it would replace.
    fn queue_whole_file(&self, ino: u32, read_whole: bool) {
        let (Some(jobs), Some(files)) = (&self.passthrough.jobs, self.reader.files()) else {
            return;
        };
        let extents = self.table.extents(ino);
        let key = FileKey::of(extents);
        let size = extents.last().map_or(0, |e| e.offset + e.len);
        let kind = match files.state(&key) {
            FileState::Absent
                if files.fits(size) && self.reader.can_make_whole(extents, read_whole) =>
            {
                Some(JobKind::Write)
            }
            FileState::Unverified => Some(JobKind::Verify),
            _ => None,
        };
        if let Some(kind) = kind {
            let job = Job {
                kind,
                key,
                size,
                extents: extents.to_vec(),
            };
            // A full queue drops the job: the file's next release asks again.
            if jobs.try_send(job).is_ok() {
                self.passthrough.served.lock().remove(&ino);
            }
        }
    }

    /// A backing file was refused. Errors that mean the kernel or the mount cannot pass
    /// anything through (no capability, no support, backing files on a stacked
    /// filesystem) turn passthrough off for the mount; the open is served through `read`.
    fn refused_backing(&self, e: &std::io::Error) {
        let p = &self.passthrough;
        p.refused.fetch_add(1, Relaxed);
        let hopeless = matches!(
            e.raw_os_error(),
            Some(libc::EPERM | libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL | libc::ELOOP)
        );
        if hopeless && p.usable.swap(false, Relaxed) {
            tracing::warn!(error = %e, "FUSE passthrough refused by the kernel; serving every file through reads");
        } else {
            tracing::debug!(error = %e, "FUSE passthrough refused for one file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads counted every 50 ms for a second: the wait ends only after they stop.
    #[tokio::test(start_paused = true)]
    async fn a_job_waits_until_reads_pause() {
        let reads = Arc::new(AtomicU64::new(0));
        let reader = reads.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                reader.fetch_add(1, Relaxed);
            }
        });
        let start = tokio::time::Instant::now();
        let quiet = wait_for_quiet(|| reads.load(Relaxed), QUIET, MOST_DEFERRED).await;
        assert!(quiet);
        assert_eq!(
            reads.load(Relaxed),
            20,
            "the wait ended while reads went on"
        );
        assert!(start.elapsed() >= Duration::from_secs(1) + QUIET);
    }

    /// Reads that never pause: the job runs after the longest deferral.
    #[tokio::test(start_paused = true)]
    async fn a_job_waits_at_most_its_deferral() {
        let reads = Arc::new(AtomicU64::new(0));
        let reader = reads.clone();
        let busy = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                reader.fetch_add(1, Relaxed);
            }
        });
        let start = tokio::time::Instant::now();
        let quiet = wait_for_quiet(|| reads.load(Relaxed), QUIET, MOST_DEFERRED).await;
        busy.abort();
        assert!(!quiet);
        let waited = start.elapsed();
        assert!(waited >= MOST_DEFERRED && waited < MOST_DEFERRED + 2 * QUIET);
    }
}
