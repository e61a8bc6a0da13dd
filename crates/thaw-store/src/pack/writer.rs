//! Writes new chunks into packs: dedup against the store, compress on worker threads,
//! pack in order, and upload packs in the background while the caller keeps reading.

use crate::error::RepoError;
use crate::pack::store::PackStore;
use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, Sender};
// std's futex mutex rather than parking_lot here: the packing threads contend on these
// locks, and parking_lot's spin-then-yield made a build from a cold page cache about 15%
// slower on 2 cores (scripts/bench_ab.sh, 5 alternating rounds). A poisoned lock is taken
// over: the state is counters and a map, consistent between statements.
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use thaw_core::{ChunkId, Compression, PackEntry, PackIndex};

/// How chunks are compressed and packed.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// zstd level for chunks that compress (others are stored as they are).
    pub zstd_level: i32,
    /// A pack is uploaded once it reaches this many bytes.
    pub target_pack_size: usize,
    /// Compression threads.
    pub threads: usize,
    /// Keep the compressed form only if it saves at least this fraction.
    pub min_saving: f64,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            zstd_level: 3,
            target_pack_size: 32 * 1024 * 1024,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            min_saving: 0.05,
        }
    }
}

/// What a writer did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriterStats {
    /// Chunks added that the store did not hold.
    pub chunks_new: u64,
    /// Chunks added that the store (or this writer) already held.
    pub chunks_dedup: u64,
    /// Uncompressed bytes of the new chunks.
    pub raw_bytes_new: u64,
    /// Bytes the new chunks take in packs.
    pub stored_bytes: u64,
    /// Packs uploaded.
    pub packs: u64,
    /// Packs written into the buffer of a pack published before (see `give_back`).
    pub buffers_reused: u64,
}

#[derive(Debug, Default)]
struct Counters {
    chunks_new: AtomicU64,
    chunks_dedup: AtomicU64,
    raw_bytes_new: AtomicU64,
    stored_bytes: AtomicU64,
    packs: AtomicU64,
    buffers_reused: AtomicU64,
}

struct Job {
    seq: u64,
    id: ChunkId,
    data: Bytes,
    /// Close the current pack before this chunk.
    new_pack: bool,
}

/// Chunks go to the compression threads in batches of about this many bytes. One
/// message per chunk made the channels the bottleneck on 2 cores: about 28,000
/// `sched_yield` calls of spinning senders and receivers for a 200 MB tree.
const BATCH_BYTES: usize = 1024 * 1024;

struct Compressed {
    seq: u64,
    new_pack: bool,
    id: ChunkId,
    raw_len: u32,
    stored: Vec<u8>,
    compression: Compression,
}

struct State {
    seen: HashSet<ChunkId>,
    next_seq: u64,
    /// New chunks of the first-access order, held back to be packed together at the end.
    held: Vec<(usize, ChunkId, Bytes)>,
    /// Chunks numbered but not yet sent, in `seq` order, and their bytes.
    batch: Vec<Job>,
    batch_bytes: usize,
}

/// Adds chunks to a store. `add` blocks (call it from a blocking thread); `finish`
/// waits for every pack to be uploaded.
pub struct PackWriter {
    packs: Arc<PackStore>,
    state: Mutex<State>,
    jobs: Option<Sender<Vec<Job>>>,
    workers: Vec<JoinHandle<()>>,
    packer: Option<JoinHandle<Result<(), RepoError>>>,
    uploader: Option<tokio::task::JoinHandle<Result<(), RepoError>>>,
    failure: Arc<Mutex<Option<String>>>,
    counters: Arc<Counters>,
    /// Rank of each chunk in a start-up trace's first-access order.
    first_access: std::collections::HashMap<ChunkId, usize>,
}

impl std::fmt::Debug for PackWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackWriter")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl PackWriter {
    /// Starts the compression threads, the packer and the uploader. Must be called
    /// inside a tokio runtime.
    pub fn new(packs: Arc<PackStore>, config: WriterConfig) -> Self {
        let threads = config.threads.max(1);
        let (job_tx, job_rx) = bounded::<Vec<Job>>(threads * 2);
        let (done_tx, done_rx) = bounded::<Vec<Compressed>>(threads * 2);
        let workers = (0..threads)
            .map(|_| {
                let (rx, tx) = (job_rx.clone(), done_tx.clone());
                std::thread::spawn(move || compress_worker(rx, tx, config))
            })
            .collect();
        drop(done_tx);
        let (up_tx, mut up_rx) = tokio::sync::mpsc::channel::<(Bytes, PackIndex)>(2);
        let (spare_tx, spare_rx) = bounded::<Vec<u8>>(1);
        let counters = Arc::new(Counters::default());
        let failure: Arc<Mutex<Option<String>>> = Arc::default();
        let uploader = {
            let (packs, counters, failure) = (packs.clone(), counters.clone(), failure.clone());
            tokio::spawn(async move {
                while let Some((data, index)) = up_rx.recv().await {
                    let kept = data.clone();
                    if let Err(e) = packs.publish(data, index).await {
                        *failure
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) =
                            Some(e.to_string());
                        return Err(e);
                    }
                    counters.packs.fetch_add(1, Relaxed);
                    give_back(kept, &spare_tx);
                }
                Ok(())
            })
        };
        let packer = {
            let counters = counters.clone();
            let packing = Packing {
                up: up_tx,
                spare: spare_rx,
                target: config.target_pack_size,
                counters,
            };
            std::thread::spawn(move || packer_loop(done_rx, packing))
        };
        PackWriter {
            packs,
            state: Mutex::new(State {
                seen: HashSet::new(),
                next_seq: 0,
                held: Vec::new(),
                batch: Vec::new(),
                batch_bytes: 0,
            }),
            jobs: Some(job_tx),
            workers,
            packer: Some(packer),
            uploader: Some(uploader),
            failure,
            counters,
            first_access: Default::default(),
        }
    }

    /// Packs the new chunks that appear in `order` (a start-up trace's chunks in
    /// first-access order) together, in that order, in packs of their own after all
    /// others: the start-up working set is then contiguous and few ranged GETs fetch it.
    /// They are held in memory until `finish`, so the list should be a working set, not
    /// a whole image.
    pub fn with_first_access(mut self, order: &[ChunkId]) -> Self {
        for (rank, id) in order.iter().enumerate() {
            self.first_access.entry(*id).or_insert(rank);
        }
        self
    }

    /// Adds a chunk; returns whether it was new to the store. Blocks while the
    /// compression queue is full.
    pub fn add(&self, id: ChunkId, data: Bytes) -> Result<bool, RepoError> {
        if let Some(msg) = self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        {
            return Err(RepoError::Writer(format!(
                "an earlier upload failed: {msg}"
            )));
        }
        let full = {
            let mut st = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if self.packs.contains(&id) || !st.seen.insert(id) {
                self.counters.chunks_dedup.fetch_add(1, Relaxed);
                return Ok(false);
            }
            self.counters.chunks_new.fetch_add(1, Relaxed);
            self.counters
                .raw_bytes_new
                .fetch_add(data.len() as u64, Relaxed);
            if let Some(rank) = self.first_access.get(&id) {
                st.held.push((*rank, id, data));
                return Ok(true);
            }
            let seq = st.next_seq;
            st.next_seq += 1;
            st.batch_bytes += data.len();
            st.batch.push(Job {
                seq,
                id,
                data,
                new_pack: false,
            });
            take_batch(&mut st, BATCH_BYTES)
        };
        // Sent outside the lock: sending blocks while the compression queue is full.
        if let Some(batch) = full {
            self.send(batch)?;
        }
        Ok(true)
    }

    fn send(&self, batch: Vec<Job>) -> Result<(), RepoError> {
        let stopped = || RepoError::Writer("the packing pipeline stopped".into());
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(batch).map_err(|_| stopped())
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> WriterStats {
        let c = &self.counters;
        WriterStats {
            chunks_new: c.chunks_new.load(Relaxed),
            chunks_dedup: c.chunks_dedup.load(Relaxed),
            raw_bytes_new: c.raw_bytes_new.load(Relaxed),
            stored_bytes: c.stored_bytes.load(Relaxed),
            packs: c.packs.load(Relaxed),
            buffers_reused: c.buffers_reused.load(Relaxed),
        }
    }

    /// Flushes the last pack and waits for every upload.
    pub async fn finish(mut self) -> Result<WriterStats, RepoError> {
        let gone = |what: &str| RepoError::Writer(format!("the {what} is gone"));
        let rest = {
            let mut st = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            take_batch(&mut st, 0)
        };
        if let Some(batch) = rest {
            self.send(batch)?;
        }
        let jobs = self.jobs.take().ok_or_else(|| gone("packing queue"))?;
        let (mut held, first_seq) = {
            let mut st = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let held = std::mem::take(&mut st.held);
            let first = st.next_seq;
            st.next_seq += held.len() as u64;
            (held, first)
        };
        // The held first-access chunks go last, in trace order, from a new pack on.
        // Sending blocks while the compression queue is full, so not on this thread.
        held.sort_by_key(|(rank, _, _)| *rank);
        let held = tokio::task::spawn_blocking(move || {
            let stopped = || RepoError::Writer("the packing pipeline stopped".into());
            let (mut batch, mut bytes) = (Vec::new(), 0);
            for (k, (_, id, data)) in held.into_iter().enumerate() {
                bytes += data.len();
                batch.push(Job {
                    seq: first_seq + k as u64,
                    id,
                    data,
                    new_pack: k == 0,
                });
                if bytes >= BATCH_BYTES {
                    jobs.send(std::mem::take(&mut batch))
                        .map_err(|_| stopped())?;
                    bytes = 0;
                }
            }
            if !batch.is_empty() {
                jobs.send(batch).map_err(|_| stopped())?;
            }
            Ok::<(), RepoError>(())
        })
        .await
        .map_err(|e| RepoError::Writer(e.to_string()))?;
        let workers = std::mem::take(&mut self.workers);
        let packer = self.packer.take().ok_or_else(|| gone("packer"))?;
        let packed = tokio::task::spawn_blocking(move || {
            for w in workers {
                w.join()
                    .map_err(|_| RepoError::Writer("a compression thread panicked".into()))?;
            }
            packer
                .join()
                .map_err(|_| RepoError::Writer("the packer thread panicked".into()))?
        })
        .await
        .map_err(|e| RepoError::Writer(e.to_string()))?;
        let uploaded = self
            .uploader
            .take()
            .ok_or_else(|| gone("uploader"))?
            .await
            .map_err(|e| RepoError::Writer(e.to_string()))?;
        uploaded?;
        packed?;
        held?;
        Ok(self.stats())
    }
}

/// Takes the batch if it holds at least `min_bytes` and is not empty.
fn take_batch(st: &mut State, min_bytes: usize) -> Option<Vec<Job>> {
    if st.batch.is_empty() || st.batch_bytes < min_bytes {
        return None;
    }
    st.batch_bytes = 0;
    Some(std::mem::take(&mut st.batch))
}

fn compress_worker(rx: Receiver<Vec<Job>>, tx: Sender<Vec<Compressed>>, config: WriterConfig) {
    let mut zc = zstd::bulk::Compressor::new(config.zstd_level).ok();
    for batch in rx {
        let done = batch
            .into_iter()
            .map(|job| compress(zc.as_mut(), job, config.min_saving))
            .collect();
        if tx.send(done).is_err() {
            return;
        }
    }
}

/// Compresses one chunk, keeping the compressed form only if it saves `min_saving`.
fn compress(zc: Option<&mut zstd::bulk::Compressor<'_>>, job: Job, min_saving: f64) -> Compressed {
    let raw_len = job.data.len() as u32;
    let limit = (job.data.len() as f64 * (1.0 - min_saving)) as usize;
    let compressed = zc
        .and_then(|z| z.compress(&job.data).ok())
        .filter(|c| c.len() <= limit);
    let (stored, compression) = match compressed {
        Some(c) => (c, Compression::Zstd),
        None => (job.data.to_vec(), Compression::None),
    };
    Compressed {
        seq: job.seq,
        new_pack: job.new_pack,
        id: job.id,
        raw_len,
        stored,
        compression,
    }
}

/// Hands a published pack's buffer back to the packer when nothing else holds it (a
/// local or remote store has written it out; a memory store keeps it). Refilling a
/// buffer whose pages are already mapped spares the page faults of a fresh 36 MiB
/// allocation for every pack after the first two (the third of the Debian rootfs's three;
/// nearly all of a multi-GB image's).
fn give_back(published: Bytes, spare: &Sender<Vec<u8>>) {
    if let Ok(buf) = published.try_into_mut() {
        let mut buf = Vec::from(buf);
        buf.clear();
        // A full queue means the packer has spares enough: this one is freed.
        let _ = spare.try_send(buf);
    }
}

/// Where the packer sends full packs and gets emptied buffers back from.
struct Packing {
    up: tokio::sync::mpsc::Sender<(Bytes, PackIndex)>,
    spare: Receiver<Vec<u8>>,
    target: usize,
    counters: Arc<Counters>,
}

impl Packing {
    /// A pack buffer: a published one given back, or a new one.
    fn buffer(&self) -> Vec<u8> {
        let capacity = self.target + 4 * 1024 * 1024;
        match self.spare.try_recv() {
            Ok(buf) if buf.capacity() >= capacity => {
                self.counters.buffers_reused.fetch_add(1, Relaxed);
                buf
            }
            _ => Vec::with_capacity(capacity),
        }
    }

    /// Sends the pack being filled, if any, to the uploader.
    fn send(&self, pack: &mut Option<(Vec<u8>, Vec<PackEntry>)>) -> Result<(), RepoError> {
        let Some((buf, entries)) = pack.take() else {
            return Ok(());
        };
        let index = PackIndex {
            pack_len: buf.len() as u64,
            entries,
        };
        self.up
            .blocking_send((Bytes::from(buf), index))
            .map_err(|_| RepoError::Writer("the uploader stopped".into()))
    }
}

fn packer_loop(rx: Receiver<Vec<Compressed>>, packing: Packing) -> Result<(), RepoError> {
    let mut pending: BTreeMap<u64, Compressed> = BTreeMap::new();
    let mut next = 0u64;
    // The pack being filled; its buffer is taken only when its first chunk comes, which
    // gives the uploader time to hand the last one back.
    let mut pack: Option<(Vec<u8>, Vec<PackEntry>)> = None;
    for done in rx {
        pending.extend(done.into_iter().map(|c| (c.seq, c)));
        // Chunks are packed in the order they were added, so a file's chunks sit
        // together and are read back with few requests.
        while let Some(c) = pending.remove(&next) {
            next += 1;
            if c.new_pack {
                packing.send(&mut pack)?;
            }
            let (buf, entries) = pack.get_or_insert_with(|| (packing.buffer(), Vec::new()));
            packing
                .counters
                .stored_bytes
                .fetch_add(c.stored.len() as u64, Relaxed);
            entries.push(PackEntry {
                id: c.id,
                offset: buf.len() as u64,
                stored_len: c.stored.len() as u32,
                raw_len: c.raw_len,
                compression: c.compression,
            });
            buf.extend_from_slice(&c.stored);
            if buf.len() >= packing.target {
                packing.send(&mut pack)?;
            }
        }
    }
    packing.send(&mut pack)
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
