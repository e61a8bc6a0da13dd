//! Packs: many compressed chunks in one object, plus an index object per pack. Knows
//! where every chunk of the store lives and fetches chunks with coalesced ranged GETs,
//! verifying each one.

use crate::blob::BlobStore;
use crate::error::{ReadError, RepoError, StoreError};
use crate::pack::keys::{index_key, pack_key, pack_of_index_key, PACKS_PREFIX};
use bytes::Bytes;
use futures::{stream, StreamExt, TryStreamExt};
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use thaw_core::{ChunkId, Compression, PackEntry, PackId, PackIndex};

/// Chunks of one pack whose stored bytes are at most this far apart share one GET.
pub const COALESCE_GAP: u64 = 64 * 1024;
/// Bytes of the salt that gives a rebuilt pack an id of its own.
const PACK_SALT_LEN: usize = 16;
/// One coalesced GET never spans more than this.
pub const MAX_COALESCED: u64 = 64 * 1024 * 1024;

/// Where one chunk lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLocation {
    /// The pack holding it.
    pub pack: PackId,
    /// Its entry in that pack's index.
    pub entry: PackEntry,
}

/// Chunks of one pack read with one ranged GET, in offset order.
#[derive(Debug, Clone)]
pub struct FetchRun {
    /// The pack the chunks are in.
    pub pack: PackId,
    /// Their entries, by offset.
    pub entries: Vec<PackEntry>,
}

impl FetchRun {
    /// The stored byte range the GET covers.
    pub fn range(&self) -> std::ops::Range<u64> {
        let start = self.entries.first().map_or(0, |e| e.offset);
        let end = self.entries.last().map_or(start, PackEntry::end);
        start..end
    }

    /// Keeps only the chunks `keep` accepts (another fetch took the others). The run stays
    /// one GET: its range shrinks to what is left.
    pub fn retain(&mut self, keep: impl Fn(&ChunkId) -> bool) {
        self.entries.retain(|e| keep(&e.id));
    }
}

/// How [`PackStore::plan`] groups chunks into GETs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    /// After each chunk asked for, also take the chunks stored right after it in its pack,
    /// up to this many stored bytes (0: only what is asked). Pays off when a request's
    /// latency costs more than the extra bytes, as with a remote object store.
    pub fetch_around: u64,
    /// The most stored bytes one GET asks for (a single chunk may be larger).
    pub max_run: u64,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            fetch_around: 0,
            max_run: MAX_COALESCED,
        }
    }
}

/// The GETs that fetch a list of chunks.
#[derive(Debug, Default)]
pub struct Plan {
    /// Ranged GETs, in the order of their first chunk asked for.
    pub runs: Vec<FetchRun>,
    /// Chunks no pack of the store holds.
    pub unknown: Vec<ChunkId>,
    /// Chunks added by fetch-around (not asked for).
    pub around: Vec<ChunkId>,
}

/// Where a set of chunks is stored: `thaw inspect`'s storage figures.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StorageSummary {
    /// Distinct packs holding the chunks.
    pub packs: u64,
    /// Their stored (possibly compressed) bytes.
    pub stored_bytes: u64,
    /// Chunks stored compressed.
    pub compressed_chunks: u64,
    /// Chunks no pack holds.
    pub missing_chunks: u64,
}

/// The store's packs and the index of every chunk in them.
#[derive(Debug)]
pub struct PackStore {
    store: Arc<dyn BlobStore>,
    chunks: RwLock<HashMap<ChunkId, ChunkLocation>>,
    packs: RwLock<BTreeMap<PackId, Arc<PackIndex>>>,
    /// Packs gc is deleting, forgotten so nothing new reuses them; a pack written now
    /// must not get one of their ids.
    retired: RwLock<HashSet<PackId>>,
}

impl PackStore {
    /// Opens the pack layer of `store`, loading every pack index.
    pub async fn open(store: Arc<dyn BlobStore>) -> Result<Arc<Self>, RepoError> {
        let me = Arc::new(PackStore {
            store,
            chunks: RwLock::default(),
            packs: RwLock::default(),
            retired: RwLock::default(),
        });
        me.reload().await?;
        Ok(me)
    }

    /// The blob store the packs live in.
    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.store
    }

    /// Loads pack indexes that appeared since the last load. An index that gc deletes
    /// between the listing and its GET is skipped: its pack is going too.
    pub async fn reload(&self) -> Result<(), RepoError> {
        let listing = self.store.list(PACKS_PREFIX).await?;
        let known: Vec<PackId> = self.packs.read().keys().copied().collect();
        let new: Vec<PackId> = listing
            .iter()
            .filter_map(|o| pack_of_index_key(&o.key))
            .filter(|p| known.binary_search(p).is_err())
            .collect();
        let loaded: Vec<Option<(PackId, PackIndex)>> = stream::iter(new)
            .map(|pack| async move {
                let key = index_key(&pack);
                let bytes = match self.store.get(&key).await {
                    Ok(b) => b,
                    Err(StoreError::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let index = PackIndex::decode(&bytes)
                    .map_err(|source| RepoError::BadPackIndex { key, source })?;
                Ok::<_, RepoError>(Some((pack, index)))
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        for (pack, index) in loaded.into_iter().flatten() {
            self.insert(pack, Arc::new(index));
        }
        Ok(())
    }

    fn insert(&self, pack: PackId, index: Arc<PackIndex>) {
        let mut chunks = self.chunks.write();
        for e in &index.entries {
            chunks
                .entry(e.id)
                .or_insert(ChunkLocation { pack, entry: *e });
        }
        self.packs.write().insert(pack, index);
    }

    /// Whether any known pack holds `id`.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.chunks.read().contains_key(id)
    }

    /// Where `id` is stored, if any known pack holds it.
    pub fn location(&self, id: &ChunkId) -> Option<ChunkLocation> {
        self.chunks.read().get(id).copied()
    }

    /// Where `ids` are stored: packs, stored bytes, compressed and missing chunks.
    pub fn storage(&self, ids: impl IntoIterator<Item = ChunkId>) -> StorageSummary {
        let chunks = self.chunks.read();
        let mut packs = HashSet::new();
        let mut s = StorageSummary::default();
        for id in ids {
            let Some(loc) = chunks.get(&id) else {
                s.missing_chunks += 1;
                continue;
            };
            packs.insert(loc.pack);
            s.stored_bytes += u64::from(loc.entry.stored_len);
            if loc.entry.compression == Compression::Zstd {
                s.compressed_chunks += 1;
            }
        }
        s.packs = packs.len() as u64;
        s
    }

    /// Every pack and its index.
    pub fn packs(&self) -> Vec<(PackId, Arc<PackIndex>)> {
        self.packs
            .read()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// Forgets a pack (after garbage collection deleted it).
    pub fn forget(&self, pack: &PackId) {
        if let Some(index) = self.packs.write().remove(pack) {
            let mut chunks = self.chunks.write();
            for e in &index.entries {
                if chunks.get(&e.id).is_some_and(|l| l.pack == *pack) {
                    chunks.remove(&e.id);
                }
            }
        }
    }

    /// Forgets packs gc has marked for deletion and keeps new packs from taking their ids.
    pub fn retire<'a>(&self, packs: impl IntoIterator<Item = &'a PackId>) {
        let mut retired = self.retired.write();
        for pack in packs {
            self.forget(pack);
            retired.insert(*pack);
        }
    }

    /// Uploads a finished pack: the pack object first, then its index, so an index in
    /// the store always points at a complete pack. A pack whose bytes match a retired
    /// pack's (the same chunks built again while gc deletes the old copy) gets a random
    /// salt after its last chunk, and so an id of its own: it must not be deleted with
    /// the old one.
    pub async fn publish(&self, data: Bytes, mut index: PackIndex) -> Result<PackId, RepoError> {
        index.validate()?;
        let mut data = data;
        let mut pack = PackId::of(&data);
        if self.retired.read().contains(&pack) {
            let mut salted = Vec::with_capacity(data.len() + PACK_SALT_LEN);
            salted.extend_from_slice(&data);
            salted.extend_from_slice(&rand::random::<[u8; PACK_SALT_LEN]>());
            index.pack_len = salted.len() as u64;
            data = Bytes::from(salted);
            pack = PackId::of(&data);
        }
        self.store.put(&pack_key(&pack), data).await?;
        self.store
            .put(&index_key(&pack), Bytes::from(index.encode()))
            .await?;
        self.insert(pack, Arc::new(index));
        Ok(pack)
    }

    /// Groups chunks into ranged GETs, each planned once: chunks of one pack that lie close
    /// together share one, and fetch-around adds the chunks stored right after each asked
    /// one unless `skip` says they are cached or being fetched already. Runs come in the
    /// order of their first chunk in `ids`, so a prefetch list keeps its order.
    pub fn plan(
        &self,
        ids: &[ChunkId],
        options: PlanOptions,
        skip: impl Fn(&ChunkId) -> bool,
    ) -> Plan {
        let mut plan = Plan::default();
        let mut taken: HashSet<ChunkId> = HashSet::new();
        // Per pack: entries with the position of the chunk asked that brought them in.
        let mut by_pack: HashMap<PackId, Vec<(usize, PackEntry)>> = HashMap::new();
        let chunks = self.chunks.read();
        let packs = self.packs.read();
        for (i, id) in ids.iter().enumerate() {
            let Some(loc) = chunks.get(id).copied() else {
                plan.unknown.push(*id);
                continue;
            };
            if !taken.insert(*id) {
                continue;
            }
            let slot = by_pack.entry(loc.pack).or_default();
            slot.push((i, loc.entry));
            let Some(index) = packs.get(&loc.pack).filter(|_| options.fetch_around > 0) else {
                continue;
            };
            for e in following(index, &loc.entry, options.fetch_around) {
                if !skip(&e.id) && taken.insert(e.id) {
                    plan.around.push(e.id);
                    slot.push((i, *e));
                }
            }
        }
        let mut runs: Vec<(usize, FetchRun)> = by_pack
            .into_iter()
            .flat_map(|(pack, entries)| coalesce(pack, entries, options.max_run))
            .collect();
        runs.sort_by_key(|(first, r)| (*first, r.range().start));
        plan.runs = runs.into_iter().map(|(_, r)| r).collect();
        plan
    }

    /// Fetches one run with a ranged GET; decode it with [`decode_run`].
    pub async fn get_run(&self, run: &FetchRun) -> Result<Bytes, StoreError> {
        self.store
            .get_range(&pack_key(&run.pack), run.range())
            .await
    }
}

/// The entries stored right after `entry` in its pack, up to `budget` stored bytes. Packs
/// keep chunks in the order a build met them (path order), so these are usually the
/// neighbouring files.
fn following<'a>(
    index: &'a PackIndex,
    entry: &PackEntry,
    budget: u64,
) -> impl Iterator<Item = &'a PackEntry> {
    let start = index.entries.partition_point(|e| e.offset <= entry.offset);
    let mut used = 0u64;
    index.entries[start..].iter().take_while(move |e| {
        used += u64::from(e.stored_len);
        used <= budget
    })
}

/// Cuts one pack's entries into runs: neighbours at most [`COALESCE_GAP`] apart share a
/// run of at most `max_run` stored bytes. Each run comes with the lowest position asked
/// among its chunks.
fn coalesce(
    pack: PackId,
    mut entries: Vec<(usize, PackEntry)>,
    max_run: u64,
) -> Vec<(usize, FetchRun)> {
    entries.sort_by_key(|(_, e)| e.offset);
    let mut runs = Vec::new();
    let mut run: Vec<PackEntry> = Vec::new();
    let mut first = usize::MAX;
    for (i, e) in entries {
        if let (Some(lo), Some(last)) = (run.first(), run.last()) {
            let gap = e.offset.saturating_sub(last.end());
            if gap > COALESCE_GAP || e.end() - lo.offset > max_run {
                let entries = std::mem::take(&mut run);
                runs.push((first, FetchRun { pack, entries }));
                first = usize::MAX;
            }
        }
        first = first.min(i);
        run.push(e);
    }
    if !run.is_empty() {
        runs.push((first, FetchRun { pack, entries: run }));
    }
    runs
}

/// Decodes the bytes of one run's GET: each chunk decompressed and verified.
pub fn decode_run(run: &FetchRun, bytes: &Bytes) -> Vec<(ChunkId, Result<Bytes, ReadError>)> {
    decode_run_where(run, bytes, |_| true)
}

/// [`decode_run`] for the chunks of the run that `keep` accepts only (the others are
/// neither decompressed nor verified, nor returned).
pub fn decode_run_where(
    run: &FetchRun,
    bytes: &Bytes,
    keep: impl Fn(&ChunkId) -> bool,
) -> Vec<(ChunkId, Result<Bytes, ReadError>)> {
    let start = run.range().start;
    let want = run.range().end - start;
    run.entries
        .iter()
        .filter(|e| keep(&e.id))
        .map(|e| {
            let lo = (e.offset - start) as usize;
            let hi = lo + e.stored_len as usize;
            let got = if (bytes.len() as u64) < want {
                Err(ReadError::Integrity {
                    chunk: e.id,
                    pack: run.pack,
                    reason: format!("the GET returned {} bytes of {want}", bytes.len()),
                })
            } else {
                decode_chunk(&run.pack, e, bytes.slice(lo..hi))
            };
            (e.id, got)
        })
        .collect()
}

/// Decompresses (if needed) one stored chunk straight into `out` and verifies it there
/// (no intermediate buffer); returns its length. `out` must hold the chunk's raw length.
pub fn decode_chunk_into(
    pack: &PackId,
    e: &PackEntry,
    stored: &[u8],
    out: &mut [u8],
) -> Result<usize, ReadError> {
    let integrity = |reason: String| ReadError::Integrity {
        chunk: e.id,
        pack: *pack,
        reason,
    };
    let raw_len = e.raw_len as usize;
    let room = out.len();
    let out = out
        .get_mut(..raw_len)
        .ok_or_else(|| integrity(format!("{raw_len} bytes do not fit a buffer of {room}")))?;
    let n = match e.compression {
        Compression::None if stored.len() == raw_len => {
            out.copy_from_slice(stored);
            raw_len
        }
        Compression::None => stored.len(),
        Compression::Zstd => zstd::bulk::decompress_to_buffer(stored, out)
            .map_err(|err| integrity(format!("zstd: {err}")))?,
    };
    if n != raw_len {
        return Err(integrity(format!("length {n} instead of {raw_len}")));
    }
    let actual = ChunkId::of(out);
    if actual != e.id {
        return Err(integrity(format!("content hashes to {actual}")));
    }
    Ok(raw_len)
}

/// Decompresses (if needed) and verifies one stored chunk.
pub fn decode_chunk(pack: &PackId, e: &PackEntry, stored: Bytes) -> Result<Bytes, ReadError> {
    let integrity = |reason: String| ReadError::Integrity {
        chunk: e.id,
        pack: *pack,
        reason,
    };
    // The index decoder refuses longer chunks; checked here too, because the length
    // sizes an allocation (found by fuzzing the decoder on its own).
    if e.raw_len > thaw_core::MAX_CHUNK_LEN {
        return Err(integrity(format!(
            "raw length {} is above the largest chunk, {}",
            e.raw_len,
            thaw_core::MAX_CHUNK_LEN
        )));
    }
    let raw = match e.compression {
        Compression::None => stored,
        Compression::Zstd => zstd_decompress(&stored, e.raw_len as usize)
            .map_err(|err| integrity(format!("zstd: {err}")))?,
    };
    if raw.len() != e.raw_len as usize {
        return Err(integrity(format!(
            "length {} instead of {}",
            raw.len(),
            e.raw_len
        )));
    }
    let actual = ChunkId::of(&raw);
    if actual != e.id {
        return Err(integrity(format!("content hashes to {actual}")));
    }
    Ok(raw)
}

thread_local! {
    /// This thread's zstd decompression context, made at its first chunk: making one
    /// for every chunk took about 3% of the read path's CPU time in a profile of a cold
    /// `dpkg --verify` (docs/benchmarks.md).
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompresses one zstd frame of `raw_len` bytes with this thread's context into a
/// reused buffer (a context that failed is dropped: the next frame gets a new one).
fn zstd_decompress(stored: &[u8], raw_len: usize) -> std::io::Result<Bytes> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let d = match slot {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        let out = crate::buffers::decompress_pooled(d, stored, raw_len);
        if out.is_err() {
            *slot = None;
        }
        out
    })
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
