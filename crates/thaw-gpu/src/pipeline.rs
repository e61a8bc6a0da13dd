//! The load pipeline: chunks are read (fetched, decompressed and verified by the reader)
//! several at a time on the async runtime, copied in file order into a ring of staging
//! buffers on a blocking thread, and each full buffer is handed to the sink, which copies
//! it to its destination while the next one fills.

use crate::{LoadError, WeightsHeader};
use bytes::Bytes;
use futures::{stream, StreamExt};
use std::sync::Arc;
use std::time::Instant;
use thaw_core::manifest::FileExtent;
use thaw_core::{InodeKind, Manifest};
use thaw_store::ChunkReader;

/// Where loaded bytes go: a destination of `len` bytes written through staging buffers.
pub trait Sink: Send {
    /// How many staging buffers there are.
    fn staging_count(&self) -> usize;
    /// The size of each staging buffer.
    fn staging_bytes(&self) -> usize;
    /// Allocates the destination.
    fn allocate(&mut self, len: u64) -> Result<(), LoadError>;
    /// Waits until staging buffer `i` may be written again, and returns it.
    fn staging(&mut self, i: usize) -> Result<&mut [u8], LoadError>;
    /// Starts copying the first `len` bytes of staging buffer `i` to `offset` in the
    /// destination; may return before the copy is done.
    fn submit(&mut self, i: usize, len: usize, offset: u64) -> Result<(), LoadError>;
    /// Waits for every copy.
    fn finish(&mut self) -> Result<(), LoadError>;
}

/// Host memory as the destination: what tests and machines without a GPU use.
#[derive(Debug)]
pub struct HostSink {
    staging: Vec<Vec<u8>>,
    /// The destination: the data region, once loaded.
    pub data: Vec<u8>,
}

impl HostSink {
    /// A ring of `buffers` staging buffers of `buffer_bytes` each.
    pub fn new(buffers: usize, buffer_bytes: usize) -> Self {
        HostSink {
            staging: (0..buffers.max(1))
                .map(|_| vec![0; buffer_bytes.max(1)])
                .collect(),
            data: Vec::new(),
        }
    }
}

impl Sink for HostSink {
    fn staging_count(&self) -> usize {
        self.staging.len()
    }
    fn staging_bytes(&self) -> usize {
        self.staging[0].len()
    }
    fn allocate(&mut self, len: u64) -> Result<(), LoadError> {
        self.data = vec![0; len as usize];
        Ok(())
    }
    fn staging(&mut self, i: usize) -> Result<&mut [u8], LoadError> {
        Ok(&mut self.staging[i])
    }
    fn submit(&mut self, i: usize, len: usize, offset: u64) -> Result<(), LoadError> {
        let o = offset as usize;
        self.data[o..o + len].copy_from_slice(&self.staging[i][..len]);
        Ok(())
    }
    fn finish(&mut self) -> Result<(), LoadError> {
        Ok(())
    }
}

/// How to load.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Chunks read at once, ahead of the copy.
    pub chunks_in_flight: usize,
    /// Hash the data region on the way (BLAKE3), to check the destination afterwards.
    pub hash: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            chunks_in_flight: 16,
            hash: false,
        }
    }
}

/// What a load did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The file's header (its tensors).
    pub header: WeightsHeader,
    /// Bytes written to the destination (the data region).
    pub bytes: u64,
    /// Seconds from the start of the load to the last byte in the destination.
    pub seconds: f64,
    /// BLAKE3 of the data region, when asked for.
    pub blake3: Option<String>,
}

/// Zero runs are produced in pieces of this size, so a sparse file costs no large buffer.
const ZERO_PIECE: u64 = 4 << 20;

/// One piece of the file, in order: (offset in the file, bytes).
type Piece = Result<(u64, Bytes), LoadError>;

/// Chunks read in one batch (one coalesced request where they share a pack).
const BATCH_CHUNKS: usize = 8;

/// Work for the reading side: a batch of chunk extents, or a run of zeros.
enum Job {
    Chunks(Vec<(usize, FileExtent)>),
    Zeros(u64, u64),
}

/// Loads the safetensors file at `path` in the image into `sink`.
pub async fn load<S: Sink + 'static>(
    reader: Arc<ChunkReader>,
    manifest: &Manifest,
    path: &str,
    mut sink: S,
    options: LoadOptions,
) -> Result<(S, LoadReport), LoadError> {
    let start = Instant::now();
    let (size, extents) = find_file(manifest, path)?;
    let prefix = read_prefix(&reader, &extents, size, 8, path).await?;
    let header_len = WeightsHeader::header_len(&prefix, path)?;
    let head = read_prefix(&reader, &extents, size, header_len, path).await?;
    let header = WeightsHeader::parse(&head, size, path)?;
    sink.allocate(header.data_len)?;

    // Pieces of the data region, in file order, read `chunks_in_flight` at a time.
    let data_offset = header.data_offset;
    let in_flight = options.chunks_in_flight.max(1);
    let (tx, rx) = tokio::sync::mpsc::channel::<Piece>(in_flight);
    let jobs = jobs_for(extents, data_offset);
    let producer = tokio::spawn(produce(reader, path.to_string(), jobs, in_flight, tx));
    // The copy loop blocks (on staging buffers being free), so it runs on its own thread.
    let hash = options.hash;
    let copied = tokio::task::spawn_blocking(move || copy_loop(sink, rx, data_offset, hash))
        .await
        .map_err(|e| LoadError::Pipeline(e.to_string()))?;
    producer.abort();
    let (sink, bytes, blake3) = copied?;
    if bytes != header.data_len {
        return Err(LoadError::Pipeline(format!(
            "{bytes} bytes copied, {} expected",
            header.data_len
        )));
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok((
        sink,
        LoadReport {
            header,
            bytes,
            seconds,
            blake3,
        },
    ))
}

/// The regular file at `path`: its size and extents.
fn find_file(manifest: &Manifest, path: &str) -> Result<(u64, Vec<FileExtent>), LoadError> {
    let mut ino = 0u32;
    for c in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        ino = manifest
            .lookup(ino, c.as_bytes())
            .ok_or_else(|| LoadError::NotAFile(path.to_string()))?;
    }
    match &manifest.inodes[ino as usize].kind {
        InodeKind::File { size, .. } => Ok((*size, manifest.file_extents(ino))),
        _ => Err(LoadError::NotAFile(path.to_string())),
    }
}

/// The first `len` bytes of the file.
async fn read_prefix(
    reader: &ChunkReader,
    extents: &[FileExtent],
    size: u64,
    len: u64,
    path: &str,
) -> Result<Vec<u8>, LoadError> {
    let mut out = Vec::with_capacity(len.min(size) as usize);
    for e in extents.iter().take_while(|e| e.offset < len) {
        match e.chunk {
            Some(id) => {
                let b = reader.read(id).await.map_err(|source| LoadError::Chunk {
                    path: path.to_string(),
                    index: 0,
                    source,
                })?;
                out.extend_from_slice(&b);
            }
            None => out.resize(out.len() + e.len as usize, 0),
        }
    }
    out.truncate(len as usize);
    Ok(out)
}

/// The data region's work: consecutive chunks in batches, which the reader fetches with
/// coalesced ranged GETs; zero runs as bounded pieces of zeros.
fn jobs_for(extents: Vec<FileExtent>, data_offset: u64) -> Vec<Job> {
    let mut jobs: Vec<Job> = Vec::new();
    for (index, e) in extents.into_iter().enumerate() {
        if e.offset + e.len <= data_offset {
            continue;
        }
        match e.chunk {
            Some(_) => match jobs.last_mut() {
                Some(Job::Chunks(batch)) if batch.len() < BATCH_CHUNKS => batch.push((index, e)),
                _ => jobs.push(Job::Chunks(vec![(index, e)])),
            },
            None => {
                let mut off = e.offset;
                while off < e.offset + e.len {
                    let len = ZERO_PIECE.min(e.offset + e.len - off);
                    jobs.push(Job::Zeros(off, len));
                    off += len;
                }
            }
        }
    }
    jobs
}

/// Reads the jobs, `in_flight` chunks at a time, and sends their pieces in file order;
/// stops at the first error (sent on) or when the receiver is gone.
async fn produce(
    reader: Arc<ChunkReader>,
    path: String,
    jobs: Vec<Job>,
    in_flight: usize,
    tx: tokio::sync::mpsc::Sender<Piece>,
) {
    let mut batches = stream::iter(jobs)
        .map(|job| {
            let (reader, path) = (reader.clone(), path.clone());
            async move {
                match job {
                    Job::Chunks(batch) => {
                        let ids: Vec<_> = batch.iter().filter_map(|(_, e)| e.chunk).collect();
                        let data =
                            reader
                                .read_many(&ids)
                                .await
                                .map_err(|source| LoadError::Chunk {
                                    path,
                                    index: batch.first().map_or(0, |b| b.0),
                                    source,
                                })?;
                        Ok(batch.iter().map(|(_, e)| e.offset).zip(data).collect())
                    }
                    Job::Zeros(off, len) => Ok(vec![(off, Bytes::from(vec![0u8; len as usize]))]),
                }
            }
        })
        .buffered(in_flight.div_ceil(BATCH_CHUNKS));
    while let Some(batch) = batches.next().await {
        let pieces: Vec<Piece> = match batch {
            Ok(v) => v.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        for p in pieces {
            let stop = p.is_err();
            if tx.send(p).await.is_err() || stop {
                return;
            }
        }
    }
}

/// Copies the pieces into the sink's staging ring, submitting each full buffer; returns
/// the sink, the bytes written and, if asked, the BLAKE3 of the data region.
fn copy_loop<S: Sink>(
    mut sink: S,
    mut rx: tokio::sync::mpsc::Receiver<Piece>,
    data_offset: u64,
    hash: bool,
) -> Result<(S, u64, Option<String>), LoadError> {
    let mut hasher = hash.then(blake3::Hasher::new);
    let (count, cap) = (sink.staging_count(), sink.staging_bytes());
    let (mut buf, mut fill, mut written) = (0usize, 0usize, 0u64);
    while let Some(piece) = rx.blocking_recv() {
        let (offset, bytes) = piece?;
        // The part of this piece inside the data region.
        let skip = data_offset.saturating_sub(offset) as usize;
        let mut rest = &bytes[skip.min(bytes.len())..];
        if let Some(h) = hasher.as_mut() {
            h.update(rest);
        }
        while !rest.is_empty() {
            let staging = sink.staging(buf)?;
            let n = rest.len().min(cap - fill);
            staging[fill..fill + n].copy_from_slice(&rest[..n]);
            fill += n;
            rest = &rest[n..];
            if fill == cap {
                sink.submit(buf, fill, written)?;
                written += fill as u64;
                (buf, fill) = ((buf + 1) % count, 0);
            }
        }
    }
    if fill > 0 {
        sink.submit(buf, fill, written)?;
        written += fill as u64;
    }
    sink.finish()?;
    Ok((
        sink,
        written,
        hasher.map(|h| h.finalize().to_hex().to_string()),
    ))
}
