//! Filling a staging slot with a piece's chunks, each from the nearest tier: the memory
//! cache (one copy), the disk cache (read straight into the slot), or the store (one
//! ranged GET per run of neighbours, each chunk decompressed straight into the slot and
//! verified there). A chunk the fast path cannot get right goes through the chunk
//! reader, with its retries, before the load gives up.

use crate::plan::PieceChunk;
use crate::LoadError;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use thaw_core::ChunkId;
use thaw_store::pack::store::{decode_chunk_into, FetchRun, PlanOptions};
use thaw_store::{ChunkReader, PackStore, StoreError};

/// Times the store's bytes are fetched and decoded before the chunk reader is asked.
const FAST_TRIES: usize = 2;

/// Where a load's bytes came from, and the time spent on each (summed over workers).
#[derive(Debug, Default)]
pub(crate) struct Tiers {
    pub memory_bytes: AtomicU64,
    pub disk_bytes: AtomicU64,
    pub store_bytes: AtomicU64,
    /// Bytes filled in place in the destination (no slot, no copy).
    pub in_place_bytes: AtomicU64,
    pub fetch_nanos: AtomicU64,
    pub decode_nanos: AtomicU64,
    pub retried: AtomicU64,
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn nanos_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// One GET of a run, done.
type Fetched = (FetchRun, Result<Bytes, StoreError>);

/// GETs `runs` at once.
async fn fetch_runs(packs: Arc<PackStore>, runs: Vec<FetchRun>) -> Vec<Fetched> {
    let gets = runs.iter().map(|r| packs.get_run(r));
    let got = futures::future::join_all(gets).await;
    runs.into_iter().zip(got).collect()
}

/// The store's bytes for one piece, being fetched ahead; aborted if never used.
#[derive(Debug)]
pub(crate) struct Ahead(Option<tokio::task::JoinHandle<Vec<Fetched>>>);

impl Ahead {
    /// Nothing fetched ahead.
    pub(crate) fn none() -> Self {
        Ahead(None)
    }
    fn take(mut self) -> Option<tokio::task::JoinHandle<Vec<Fetched>>> {
        self.0.take()
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Reads chunks into slots.
pub(crate) struct Filler {
    pub reader: Arc<ChunkReader>,
    pub runtime: tokio::runtime::Handle,
    pub path: String,
    pub tiers: Arc<Tiers>,
    /// Where each tensor goes in the destination.
    pub layout: crate::layout::Layout,
}

impl Filler {
    /// Starts the GETs for the chunks of `chunks` that no cache holds, on the runtime, so
    /// that they arrive while the worker decodes the piece before.
    pub(crate) fn fetch_ahead(&self, chunks: &[PieceChunk]) -> Ahead {
        let ids: Vec<ChunkId> = chunks
            .iter()
            .map(|c| c.id)
            .filter(|id| !self.reader.is_cached(id))
            .collect();
        if ids.is_empty() {
            return Ahead(None);
        }
        let packs = self.reader.packs().clone();
        let plan = packs.plan(&ids, PlanOptions::default(), |_| false);
        Ahead(Some(self.runtime.spawn(fetch_runs(packs, plan.runs))))
    }

    /// Fills `slot` with `chunks` one after another, from the caches or from what `ahead`
    /// fetched; returns the bytes filled.
    pub(crate) fn fill(
        &self,
        chunks: &[PieceChunk],
        slot: &mut [u8],
        ahead: Ahead,
    ) -> Result<usize, LoadError> {
        let mut missing: Vec<(usize, PieceChunk)> = Vec::new();
        let mut at = 0usize;
        for c in chunks {
            let len = c.len as usize;
            let out = slot.get_mut(at..at + len).ok_or_else(|| {
                LoadError::Pipeline(format!("chunk {} overflows its slot", c.index))
            })?;
            if let Some(b) = self.reader.memory_get(&c.id).filter(|b| b.len() == len) {
                out.copy_from_slice(&b);
                add(&self.tiers.memory_bytes, len as u64);
            } else if self.reader.disk().and_then(|d| d.read_into(&c.id, out)) == Some(len) {
                add(&self.tiers.disk_bytes, len as u64);
            } else {
                missing.push((at, *c));
            }
            at += len;
        }
        if missing.is_empty() {
            return Ok(at);
        }
        if let Some(task) = ahead.take() {
            let t = Instant::now();
            let runs = self.runtime.block_on(task).unwrap_or_default();
            add(&self.tiers.fetch_nanos, nanos_since(t));
            missing = self.decode_runs(&runs, &missing, slot);
        }
        if !missing.is_empty() {
            self.fetch_missing(&missing, slot)?;
        }
        Ok(at)
    }

    /// Fetches `missing` (slot position, chunk) from the store into the slot.
    fn fetch_missing(
        &self,
        missing: &[(usize, PieceChunk)],
        slot: &mut [u8],
    ) -> Result<(), LoadError> {
        let mut left: Vec<(usize, PieceChunk)> = missing.to_vec();
        for _ in 0..FAST_TRIES {
            if left.is_empty() {
                return Ok(());
            }
            left = self.fetch_decode(&left, slot);
        }
        // What is still wrong goes through the reader (its own fetch, retries, caches).
        for (at, c) in left {
            add(&self.tiers.retried, 1);
            let bytes = self
                .runtime
                .block_on(self.reader.read(c.id))
                .map_err(|source| LoadError::Chunk {
                    path: self.path.clone(),
                    index: c.index,
                    source,
                })?;
            let out = slot
                .get_mut(at..at + c.len as usize)
                .filter(|o| o.len() == bytes.len())
                .ok_or_else(|| {
                    LoadError::Pipeline(format!("chunk {} has the wrong length", c.index))
                })?;
            out.copy_from_slice(&bytes);
        }
        Ok(())
    }

    /// One try: GETs the runs holding `chunks` and decodes each into its place; returns
    /// those that failed.
    fn fetch_decode(
        &self,
        chunks: &[(usize, PieceChunk)],
        slot: &mut [u8],
    ) -> Vec<(usize, PieceChunk)> {
        let packs = self.reader.packs().clone();
        let ids: Vec<ChunkId> = chunks.iter().map(|(_, c)| c.id).collect();
        let plan = packs.plan(&ids, PlanOptions::default(), |_| false);
        let t = Instant::now();
        let runs = self.runtime.block_on(fetch_runs(packs, plan.runs));
        add(&self.tiers.fetch_nanos, nanos_since(t));
        self.decode_runs(&runs, chunks, slot)
    }

    /// Decodes what `runs` hold of `chunks` into their places; returns the chunks not
    /// there or not right.
    fn decode_runs(
        &self,
        runs: &[Fetched],
        chunks: &[(usize, PieceChunk)],
        slot: &mut [u8],
    ) -> Vec<(usize, PieceChunk)> {
        let mut at: HashMap<ChunkId, Vec<(usize, PieceChunk)>> = HashMap::new();
        for (pos, c) in chunks {
            at.entry(c.id).or_default().push((*pos, *c));
        }
        let t = Instant::now();
        for (run, got) in runs {
            let start = run.range().start;
            for e in &run.entries {
                let Some(places) = at.remove(&e.id) else {
                    continue;
                };
                let stored = got.as_ref().ok().and_then(|b| {
                    let lo = usize::try_from(e.offset - start).ok()?;
                    b.get(lo..lo + e.stored_len as usize)
                });
                if !self.decode_to(&run.pack, e, stored, &places, slot) {
                    // Back in the map: reported as failed below.
                    at.insert(e.id, places);
                }
            }
        }
        add(&self.tiers.decode_nanos, nanos_since(t));
        at.into_values().flatten().collect()
    }

    /// Decodes one stored chunk into its first place, copies it to the others, and keeps
    /// it in the disk cache; whether it all went right.
    fn decode_to(
        &self,
        pack: &thaw_core::PackId,
        e: &thaw_core::pack::PackEntry,
        stored: Option<&[u8]>,
        places: &[(usize, PieceChunk)],
        slot: &mut [u8],
    ) -> bool {
        let (Some(stored), Some(&(first, c))) = (stored, places.first()) else {
            return false;
        };
        let len = c.len as usize;
        let Some(out) = slot.get_mut(first..first + len) else {
            return false;
        };
        match decode_chunk_into(pack, e, stored, out) {
            Ok(n) if n == len => {
                add(&self.tiers.store_bytes, u64::from(e.stored_len));
                if let Some(disk) = self.reader.disk() {
                    disk.insert(&e.id, out);
                }
                for &(pos, _) in &places[1..] {
                    slot.copy_within(first..first + len, pos);
                }
                true
            }
            Ok(_) => false,
            Err(err) => {
                tracing::warn!(chunk = %e.id, error = %err, "a fetched chunk did not verify: fetching it again");
                false
            }
        }
    }
}
