//! The kernel's side of a bulk fetch: once a workload is opening a large part of the
//! image's files (a package check, a full import), the mount stops asking for `open`
//! requests and reads every file through itself, a few at a time, so that the workload
//! finds names and bytes in the kernel's caches instead of paying a FUSE round trip for
//! each lookup, open, read and release.

use crate::fs::FsShared;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use thaw_core::manifest::InodeKind;
use thaw_core::ChunkId;
use thaw_store::PrefetchProgress;
use tokio_util::sync::CancellationToken;

/// Files read at once: enough requests in flight to hide a round trip each, few enough
/// to leave the workload most of the FUSE threads.
pub const WARM_THREADS: usize = 4;

/// The share of the image's files a workload must have opened (with at least
/// [`super::BulkTrigger::WALK_OPENS`]) before the mount warms the kernel's caches: a
/// package check opens nearly every file early on, a model server's start-up a few
/// percent of a large image.
pub const WARM_OPENED_SHARE: u64 = 10;

/// How often the trigger is checked.
const WARM_CHECK: std::time::Duration = std::time::Duration::from_millis(25);

/// How many distinct files opened mark a workload that reads most of an image of `files`
/// regular files.
pub fn opens_to_warm(files: u64) -> u64 {
    (files / WARM_OPENED_SHARE).max(super::BulkTrigger::WALK_OPENS)
}

/// Waits until the workload has opened [`opens_to_warm`] distinct files, then warms the kernel's
/// caches from `root` (the FUSE layer's own directory); `join_bulk`: a bulk fetch runs,
/// and each file is read once its chunks are cached (otherwise its reads fetch on
/// demand). Not while a trace is recorded (the trace would record the warming's reads,
/// and miss the workload's that the kernel then serves itself).
pub(super) async fn when_opened(
    shared: Arc<FsShared>,
    root: PathBuf,
    stop: CancellationToken,
    join_bulk: bool,
) {
    if shared.trace.is_some() {
        return;
    }
    let files = shared
        .manifest
        .inodes
        .iter()
        .filter(|i| matches!(i.kind, InodeKind::File { .. }))
        .count() as u64;
    let wanted = opens_to_warm(files);
    let mut tick = tokio::time::interval(WARM_CHECK);
    while shared.stats.opened.distinct() < wanted {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
    }
    // Opens answered with a backing file mean this node's whole-file cache serves the
    // image: those opens must keep coming. Otherwise no open needs an answer any more.
    if shared.passthrough.opens_passed.load(Relaxed) == 0 {
        shared.stop_open_requests();
    }
    tracing::info!(image = %shared.image, "a workload is opening most of the image: reading it into the kernel's caches");
    let _ = tokio::task::spawn_blocking(move || warm(&root, &shared, &stop, join_bulk)).await;
}

/// Walks the image's directories in the manifest's order (each listing gives the kernel
/// every entry's name and attributes), and has [`WARM_THREADS`] readers read each
/// regular file (once its chunks are cached, with `join_bulk`).
fn warm(root: &Path, shared: &FsShared, stop: &CancellationToken, join_bulk: bool) {
    let Ok(dev) = std::fs::metadata(root).map(|m| m.dev()) else {
        return;
    };
    let (tx, rx) = sync_channel::<(PathBuf, u32)>(1024);
    let rx = Mutex::new(rx);
    std::thread::scope(|scope| {
        for _ in 0..WARM_THREADS {
            scope.spawn(|| read_files(&rx, dev, shared, stop, join_bulk));
        }
        walk(root, dev, shared, &tx, stop);
        drop(tx);
    });
}

/// Lists every directory and sends every regular file (each inode once) to the readers,
/// in the manifest's order from the file the workload opened last (see
/// [`from_the_workload`]). Skips what is no longer this mount (a directory something else
/// is mounted on).
fn walk(
    root: &Path,
    dev: u64,
    shared: &FsShared,
    tx: &SyncSender<(PathBuf, u32)>,
    stop: &CancellationToken,
) {
    let mut seen = vec![false; shared.manifest.inodes.len()];
    let mut entries = Vec::new();
    shared.manifest.walk(|path, ino| {
        let kind = &shared.manifest.inodes[ino as usize].kind;
        let wanted = matches!(kind, InodeKind::Directory { .. })
            || matches!(kind, InodeKind::File { size, .. } if *size > 0);
        if wanted && !std::mem::replace(&mut seen[ino as usize], true) {
            let mut p = root.to_path_buf();
            p.extend(path.iter().map(|c| std::ffi::OsStr::from_bytes(c)));
            entries.push((p, ino));
        }
    });
    from_the_workload(&mut entries, shared.stats.opened.last());
    for (path, ino) in entries {
        if stop.is_cancelled() {
            return;
        }
        if matches!(
            shared.manifest.inodes[ino as usize].kind,
            InodeKind::Directory { .. }
        ) {
            let same = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.dev() == dev);
            if same {
                if let Ok(listing) = std::fs::read_dir(&path) {
                    listing.for_each(drop);
                }
            }
        } else if tx.send((path, ino)).is_err() {
            return;
        }
    }
}

/// Starts the walk at `last`, the file the workload opened last, and takes the entries
/// before it at the end: a workload walking the image (a `find`, an import of every
/// package) goes in the same order, so the warming reads what it reads next instead of
/// what it has read already. Reading every file of the 5.7 GB machine-learning image,
/// this VM showed no difference in time (docs/benchmarks.md).
fn from_the_workload(entries: &mut [(PathBuf, u32)], last: Option<u32>) {
    let start = last.and_then(|ino| entries.iter().position(|(_, i)| *i == ino));
    entries.rotate_left(start.unwrap_or(0));
}

/// Reads files as they come through the mount; with `join_bulk`, first makes sure their
/// chunks are cached (at prefetch priority, joining the bulk fetch). Without one, a file's
/// chunks are not fetched ahead: from a local store, a file larger than memory would be
/// written to the disk cache first. After a stop, drains the queue without reading so the
/// walk ends too.
fn read_files(
    rx: &Mutex<Receiver<(PathBuf, u32)>>,
    dev: u64,
    shared: &FsShared,
    stop: &CancellationToken,
    join_bulk: bool,
) {
    let mut sink = Sink::new();
    loop {
        let next = rx.lock().map(|r| r.recv());
        let Ok(Ok((path, ino))) = next else {
            return;
        };
        if stop.is_cancelled() || (join_bulk && !cached(shared, ino, stop)) {
            continue;
        }
        if read_through(&path, dev, &mut sink, stop) {
            shared.stats.warmed_files.fetch_add(1, Relaxed);
        }
    }
}

/// Waits until every chunk of `ino` is cached, joining the bulk fetch; false if stopped.
fn cached(shared: &FsShared, ino: u32, stop: &CancellationToken) -> bool {
    let ids: Vec<ChunkId> = shared
        .table
        .extents(ino)
        .iter()
        .filter_map(|e| e.chunk)
        .collect();
    let progress = PrefetchProgress::default();
    shared
        .rt
        .block_on(shared.reader.prefetch(&ids, &progress, stop))
}

/// Bytes moved per call while warming: small enough to notice a stop soon.
const WARM_STEP: usize = 1 << 20;

/// Where a warming reader's bytes go. Only the kernel's page cache is wanted, so the file
/// is spliced to `/dev/null` (`sendfile(2)`: the kernel fills the pages and copies
/// nothing): reading the 5.7 GB machine-learning image into a buffer cost a copy of
/// every byte, a fifth of the mount's CPU time while a workload read the image whole.
/// Where splicing is refused, bytes are read into a buffer instead.
struct Sink {
    null: Option<std::fs::File>,
    buf: Vec<u8>,
}

impl Sink {
    fn new() -> Self {
        Sink {
            null: std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .ok(),
            buf: Vec::new(),
        }
    }

    /// Moves the next bytes of `file` into the page cache: how many (0 at its end).
    fn next(&mut self, file: &mut std::fs::File) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        if let Some(null) = &self.null {
            // SAFETY: both descriptors are open for the call; a null offset pointer makes
            // sendfile use and advance the file's own offset.
            let n = unsafe {
                libc::sendfile(
                    null.as_raw_fd(),
                    file.as_raw_fd(),
                    std::ptr::null_mut(),
                    WARM_STEP,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = std::io::Error::last_os_error();
            if !matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
                return Err(err);
            }
            self.null = None;
        }
        self.buf.resize(WARM_STEP, 0);
        file.read(&mut self.buf)
    }
}

/// Reads `path` to its end (or to a stop); whether it was read whole. Only a regular
/// file of this mount (`dev`) is read: a path that something mounted over leads
/// elsewhere is left alone, and never blocks (`O_NONBLOCK`: a FIFO there).
fn read_through(path: &Path, dev: u64, sink: &mut Sink, stop: &CancellationToken) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path);
    let Ok(mut file) = opened else {
        return false;
    };
    if !file.metadata().is_ok_and(|m| m.is_file() && m.dev() == dev) {
        return false;
    }
    loop {
        match sink.next(&mut file) {
            Ok(0) => return true,
            Ok(_) if !stop.is_cancelled() => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{from_the_workload, Sink, WARM_STEP};
    use std::path::PathBuf;

    /// Drains `file` through `sink`: the byte count and how many calls moved bytes.
    fn drain(sink: &mut Sink, file: &mut std::fs::File) -> (usize, usize) {
        let (mut total, mut calls) = (0, 0);
        loop {
            match sink.next(file).expect("next") {
                0 => return (total, calls),
                n => (total, calls) = (total + n, calls + 1),
            }
        }
    }

    #[test]
    fn a_sink_splices_every_byte_of_a_file_without_a_buffer() {
        let mut tmp = tempfile::tempfile().expect("tempfile");
        let len = 3 * WARM_STEP + 5;
        std::io::Write::write_all(&mut tmp, &vec![7u8; len]).expect("write");
        std::io::Seek::rewind(&mut tmp).expect("rewind");
        let mut sink = Sink::new();
        assert_eq!(drain(&mut sink, &mut tmp), (len, 4));
        assert!(sink.null.is_some(), "sendfile was refused");
        assert!(sink.buf.is_empty(), "bytes were read into a buffer");
    }

    #[test]
    fn without_dev_null_a_sink_reads_into_its_buffer() {
        let mut tmp = tempfile::tempfile().expect("tempfile");
        std::io::Write::write_all(&mut tmp, &[1u8; 1000]).expect("write");
        std::io::Seek::rewind(&mut tmp).expect("rewind");
        let mut sink = Sink {
            null: None,
            buf: Vec::new(),
        };
        assert_eq!(drain(&mut sink, &mut tmp), (1000, 1));
        assert_eq!(sink.buf.len(), WARM_STEP);
    }

    #[test]
    fn the_warming_starts_where_the_workload_is() {
        let entries = |inos: &[u32]| -> Vec<(PathBuf, u32)> {
            inos.iter()
                .map(|i| (PathBuf::from(i.to_string()), *i))
                .collect()
        };
        let inos = |e: &[(PathBuf, u32)]| e.iter().map(|(_, i)| *i).collect::<Vec<_>>();
        let mut e = entries(&[1, 2, 5, 3, 4]);
        from_the_workload(&mut e, Some(3));
        assert_eq!(inos(&e), [3, 4, 1, 2, 5]);
        // Nothing opened, or a file not in the list: the manifest's order.
        let mut e = entries(&[1, 2, 5]);
        from_the_workload(&mut e, None);
        assert_eq!(inos(&e), [1, 2, 5]);
        from_the_workload(&mut e, Some(9));
        assert_eq!(inos(&e), [1, 2, 5]);
    }
}
