//! The load pipeline: the header is read first; the data region is cut into pieces
//! ([`crate::plan`]); decode workers (threads, as many as the cores allow) each claim the
//! next piece, fill one of their own staging slots with it ([`crate::fill`]) and copy the
//! slot to the piece's offset in the destination while they fill the next. There is no
//! ordered copy thread: pieces land wherever they belong, in any order. The first failure
//! stops every worker from claiming more; each waits for its copies in flight before its
//! slots are freed, and the destination is freed with the sink.

use crate::fill::{Ahead, Filler, Tiers};
use crate::layout::Layout;
use crate::plan::{plan, zero_chunks, Work};
use crate::sink::{Lane, Sink};
use crate::{LoadError, WeightsHeader};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use thaw_core::manifest::FileExtent;
use thaw_core::{InodeKind, Manifest};
use thaw_store::ChunkReader;

/// The smallest and largest staging slot.
pub const SLOT_BYTES: std::ops::RangeInclusive<usize> = (1 << 20)..=(64 << 20);

/// How to load.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Decode workers; 0: all cores but one (at least two).
    pub workers: usize,
    /// Staging slots per worker (two: one fills while the other copies).
    pub slots: usize,
    /// Bytes per slot (raised to hold the file's largest chunk; at most 64 MiB).
    pub slot_bytes: usize,
    /// Each tensor at a multiple of this many bytes in the destination (0 or 1: the data
    /// region as it is in the file).
    pub align: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            workers: 0,
            slots: 2,
            slot_bytes: 16 << 20,
            align: 0,
        }
    }
}

impl LoadOptions {
    /// The workers this load runs.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        // All cores but one, for the runtime's I/O and the copies; never fewer than two,
        // so that one decodes while the other waits for its bytes.
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        cores.saturating_sub(1).max(2)
    }
}

/// What a load did, stage by stage.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The file's header (its tensors).
    pub header: WeightsHeader,
    /// Bytes of the data region loaded.
    pub bytes: u64,
    /// Where each tensor (in the header's order) starts in the destination.
    pub offsets: Vec<u64>,
    /// The destination's length (with alignment padding).
    pub destination_len: u64,
    /// Seconds from the start of the load to the last byte in the destination.
    pub seconds: f64,
    /// Seconds to read and parse the header (before any data moved).
    pub header_seconds: f64,
    /// Seconds allocating the destination (on the host: with its pages, which on a fresh
    /// machine can cost as much as the copy).
    pub allocate_seconds: f64,
    /// Workers run, and the slot size they used.
    pub workers: usize,
    /// Bytes of each slot.
    pub slot_bytes: usize,
    /// Bytes copied from the memory cache.
    pub memory_bytes: u64,
    /// Bytes read from the disk cache.
    pub disk_bytes: u64,
    /// Stored (compressed) bytes fetched from the store.
    pub store_bytes: u64,
    /// Bytes decoded or read straight into the destination, with no staging slot and no
    /// copy (host memory, pieces that land in one unbroken range).
    pub in_place_bytes: u64,
    /// Bytes set as zero runs on the destination.
    pub zero_bytes: u64,
    /// Seconds waiting for the store, summed over workers.
    pub fetch_seconds: f64,
    /// Seconds decompressing and verifying, summed over workers.
    pub decode_seconds: f64,
    /// Chunks the fast path could not get right and the chunk reader fetched again.
    pub retried: u64,
}

/// Loads the safetensors file at `path` in the image into `sink`. On failure the sink
/// is dropped, after every copy has finished: nothing stays allocated.
pub async fn load<S: Sink + 'static>(
    reader: Arc<ChunkReader>,
    manifest: &Manifest,
    path: &str,
    mut sink: S,
    options: LoadOptions,
) -> Result<(S, LoadReport), LoadError> {
    let start = Instant::now();
    let (size, extents) = find_file(manifest, path)?;
    let header = read_header(&reader, &extents, size, path).await?;
    let header_seconds = start.elapsed().as_secs_f64();
    let slot_bytes = slot_size(&extents, options.slot_bytes);
    let work = plan(
        &extents,
        header.data_offset,
        slot_bytes,
        &zero_chunks(&extents, |id| {
            reader.packs().location(id).map(|l| l.entry.stored_len)
        }),
    );
    let zero_bytes = work
        .iter()
        .filter(|w| matches!(w, Work::Zeros { .. }))
        .map(Work::bytes)
        .sum();
    let layout = if options.align > 1 {
        Layout::aligned(&header, options.align)
    } else {
        Layout::packed(&header)
    };
    let allocating = Instant::now();
    sink.allocate(layout.len)?;
    let allocate_seconds = allocating.elapsed().as_secs_f64();
    let tiers = Arc::new(Tiers::default());
    let filler = Filler {
        reader,
        runtime: tokio::runtime::Handle::current(),
        path: path.to_owned(),
        tiers: tiers.clone(),
        layout,
    };
    let workers = options.worker_count().min(work.len()).max(1);
    let slots = options.slots.max(1);
    let (mut sink, filler, outcome) = tokio::task::spawn_blocking(move || {
        let outcome = run_workers(&sink, &filler, &work, workers, slots, slot_bytes);
        (sink, filler, outcome)
    })
    .await
    .map_err(|e| LoadError::Pipeline(e.to_string()))?;
    outcome?;
    sink.finish()?;
    let secs = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed) as f64 / 1e9;
    let report = LoadReport {
        bytes: header.data_len,
        offsets: filler.layout.tensor_offsets(&header),
        destination_len: filler.layout.len,
        seconds: start.elapsed().as_secs_f64(),
        header_seconds,
        allocate_seconds,
        workers,
        slot_bytes,
        memory_bytes: tiers.memory_bytes.load(Ordering::Relaxed),
        disk_bytes: tiers.disk_bytes.load(Ordering::Relaxed),
        store_bytes: tiers.store_bytes.load(Ordering::Relaxed),
        in_place_bytes: tiers.in_place_bytes.load(Ordering::Relaxed),
        zero_bytes,
        fetch_seconds: secs(&tiers.fetch_nanos),
        decode_seconds: secs(&tiers.decode_nanos),
        retried: tiers.retried.load(Ordering::Relaxed),
        header,
    };
    Ok((sink, report))
}

/// A slot holds the largest chunk of the file, within [`SLOT_BYTES`].
fn slot_size(extents: &[FileExtent], asked: usize) -> usize {
    let largest = extents
        .iter()
        .filter(|e| e.chunk.is_some())
        .map(|e| usize::try_from(e.len).unwrap_or(usize::MAX))
        .max()
        .unwrap_or(0);
    asked
        .max(largest)
        .clamp(*SLOT_BYTES.start(), *SLOT_BYTES.end())
}

/// Runs `workers` threads over the work; the first error, if any.
fn run_workers<S: Sink>(
    sink: &S,
    filler: &Filler,
    work: &[Work],
    workers: usize,
    slots: usize,
    slot_bytes: usize,
) -> Result<(), LoadError> {
    let next = AtomicUsize::new(0);
    let cancel = AtomicBool::new(false);
    let results: Vec<Result<(), LoadError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let r = worker(sink, filler, work, &next, &cancel, slots, slot_bytes);
                    if r.is_err() {
                        cancel.store(true, Ordering::SeqCst);
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(LoadError::Pipeline("a decode worker panicked".into())))
            })
            .collect()
    });
    results.into_iter().collect()
}

/// One worker: its own lane; pieces until none is left or the load is cancelled; then
/// it waits for its copies, whatever happened.
fn worker<S: Sink>(
    sink: &S,
    filler: &Filler,
    work: &[Work],
    next: &AtomicUsize,
    cancel: &AtomicBool,
    slots: usize,
    slot_bytes: usize,
) -> Result<(), LoadError> {
    let mut lane = sink.lane(slots, slot_bytes)?;
    let driven = drive(&mut lane, filler, work, next, cancel);
    let waited = lane.wait();
    driven.and(waited)
}

fn drive<L: Lane>(
    lane: &mut L,
    filler: &Filler,
    work: &[Work],
    next: &AtomicUsize,
    cancel: &AtomicBool,
) -> Result<(), LoadError> {
    let claim = || {
        (!cancel.load(Ordering::SeqCst))
            .then(|| work.get(next.fetch_add(1, Ordering::SeqCst)))
            .flatten()
    };
    let ahead_of = |piece: Option<&Work>| match piece {
        Some(Work::Chunks { chunks, .. }) => filler.fetch_ahead(chunks),
        _ => Ahead::none(),
    };
    let mut slot = 0usize;
    let mut piece = claim();
    let mut ahead = ahead_of(piece);
    while let Some(current) = piece {
        // The next piece's GETs run while this one is decoded and copied.
        piece = claim();
        let fetched = std::mem::replace(&mut ahead, ahead_of(piece));
        match current {
            Work::Zeros { offset, len } => {
                for (_, n, dst) in filler.layout.map(*offset, *len) {
                    lane.zero(dst, n)?;
                }
            }
            Work::Chunks {
                offset,
                skip,
                chunks,
            } => {
                if let Some(out) = direct_range(lane, filler, current) {
                    let filled = filler.fill(chunks, out, fetched)?;
                    crate::fill::add(&filler.tiers.in_place_bytes, filled as u64);
                    continue;
                }
                let filled = filler.fill(chunks, lane.slot(slot)?, fetched)?;
                let data = filled.saturating_sub(*skip) as u64;
                for (at, n, dst) in filler.layout.map(*offset, data) {
                    let from = *skip + usize::try_from(at).unwrap_or(usize::MAX);
                    let to = from + usize::try_from(n).unwrap_or(usize::MAX);
                    lane.submit(slot, from, to, dst)?;
                }
                slot = (slot + 1) % lane.slots();
            }
        }
    }
    Ok(())
}

/// Where a piece can be filled in place: it starts in the data region (no header bytes
/// in its first chunk), lands in one unbroken destination range (no alignment padding
/// between its tensors), and the lane writes its destination directly.
fn direct_range<'a, L: Lane>(
    lane: &'a mut L,
    filler: &Filler,
    piece: &Work,
) -> Option<&'a mut [u8]> {
    let Work::Chunks {
        offset,
        skip: 0,
        chunks,
    } = piece
    else {
        return None;
    };
    let len: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
    let ranges = filler.layout.map(*offset, len);
    let &(_, _, start) = ranges.first()?;
    let unbroken = ranges
        .iter()
        .all(|&(at, _, dst)| dst.checked_sub(start) == Some(at));
    let covered: u64 = ranges.iter().map(|&(_, n, _)| n).sum();
    if unbroken && covered == len {
        lane.direct(start, usize::try_from(len).ok()?)
    } else {
        None
    }
}

/// The regular file at `path`: its size and extents.
pub(crate) fn find_file(
    manifest: &Manifest,
    path: &str,
) -> Result<(u64, Vec<FileExtent>), LoadError> {
    let mut ino = 0u32;
    for c in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        ino = manifest
            .lookup(ino, c.as_bytes())
            .ok_or_else(|| LoadError::NotAFile(path.to_string()))?;
    }
    match manifest.inodes.get(ino as usize).map(|i| &i.kind) {
        Some(InodeKind::File { size, .. }) => Ok((*size, manifest.file_extents(ino))),
        _ => Err(LoadError::NotAFile(path.to_string())),
    }
}

/// The whole file at `path`, if it holds at most `max` bytes.
pub(crate) async fn read_file(
    reader: &ChunkReader,
    manifest: &Manifest,
    path: &str,
    max: u64,
) -> Result<Vec<u8>, LoadError> {
    let (size, extents) = find_file(manifest, path)?;
    if size > max {
        return Err(LoadError::BadHeader {
            path: path.to_owned(),
            reason: format!("{size} bytes; at most {max} are read"),
        });
    }
    read_prefix(reader, &extents, size, path).await
}

/// Reads and parses the header: its length from the first 8 bytes, then the rest.
async fn read_header(
    reader: &ChunkReader,
    extents: &[FileExtent],
    size: u64,
    path: &str,
) -> Result<WeightsHeader, LoadError> {
    let prefix = read_prefix(reader, extents, 8, path).await?;
    let header_len = WeightsHeader::header_len(&prefix, path)?;
    if header_len > size {
        return Err(LoadError::BadHeader {
            path: path.to_string(),
            reason: format!("a header of {header_len} bytes in a file of {size}"),
        });
    }
    let head = read_prefix(reader, extents, header_len, path).await?;
    WeightsHeader::parse(&head, size, path)
}

/// The first `len` bytes of the file (fewer if it is shorter).
async fn read_prefix(
    reader: &ChunkReader,
    extents: &[FileExtent],
    len: u64,
    path: &str,
) -> Result<Vec<u8>, LoadError> {
    let mut out = Vec::new();
    for (index, e) in extents
        .iter()
        .enumerate()
        .take_while(|(_, e)| e.offset < len)
    {
        match e.chunk {
            Some(id) => {
                let b = reader.read(id).await.map_err(|source| LoadError::Chunk {
                    path: path.to_string(),
                    index,
                    source,
                })?;
                out.extend_from_slice(&b);
            }
            None => {
                let zeros = e.len.min(len.saturating_sub(e.offset));
                out.resize(out.len() + usize::try_from(zeros).unwrap_or(0), 0);
            }
        }
    }
    out.truncate(usize::try_from(len).unwrap_or(usize::MAX));
    Ok(out)
}
