//! Packs: many compressed chunks in one object, plus an index object per pack. Knows
//! where every chunk of the store lives and fetches chunks with coalesced ranged GETs,
//! verifying each one.

use crate::error::ChunkError;
use crate::schedule::{FetchScheduler, Priority};
use crate::BlobStore;
use bytes::Bytes;
use futures::{stream, StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use thaw_core::{ChunkId, Compression, PackEntry, PackId, PackIndex};

/// Objects of a store, by key prefix.
pub const PACKS_PREFIX: &str = "packs";

/// Chunks of one pack whose stored bytes are at most this far apart share one GET.
pub const COALESCE_GAP: u64 = 64 * 1024;
/// One coalesced GET never spans more than this.
pub const MAX_COALESCED: u64 = 64 * 1024 * 1024;

pub fn pack_key(pack: &PackId) -> String {
    format!("{PACKS_PREFIX}/{pack}.pack")
}
pub fn index_key(pack: &PackId) -> String {
    format!("{PACKS_PREFIX}/{pack}.idx")
}

/// Where one chunk lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLocation {
    pub pack: PackId,
    pub entry: PackEntry,
}

/// Chunks of one pack read with one ranged GET: (position in the request, entry).
#[derive(Debug, Clone)]
pub struct FetchRun {
    pub pack: PackId,
    pub entries: Vec<(usize, PackEntry)>,
}

impl FetchRun {
    /// The stored byte range the GET covers.
    pub fn range(&self) -> std::ops::Range<u64> {
        let start = self
            .entries
            .iter()
            .map(|(_, e)| e.offset)
            .min()
            .unwrap_or(0);
        let end = self
            .entries
            .iter()
            .map(|(_, e)| e.end())
            .max()
            .unwrap_or(start);
        start..end
    }

    /// The lowest request position among its chunks.
    fn first_position(&self) -> usize {
        self.entries.iter().map(|(i, _)| *i).min().unwrap_or(0)
    }
}

/// The store's packs and the index of every chunk in them.
#[derive(Debug)]
pub struct PackStore {
    store: Arc<dyn BlobStore>,
    chunks: RwLock<HashMap<ChunkId, ChunkLocation>>,
    packs: RwLock<BTreeMap<PackId, Arc<PackIndex>>>,
    scheduler: FetchScheduler,
}

impl PackStore {
    /// Opens the pack layer of `store`, loading every pack index.
    pub async fn open(store: Arc<dyn BlobStore>) -> Result<Arc<Self>, ChunkError> {
        let me = Arc::new(PackStore {
            store,
            chunks: RwLock::default(),
            packs: RwLock::default(),
            scheduler: FetchScheduler::default(),
        });
        me.reload().await?;
        Ok(me)
    }

    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.store
    }

    /// The scheduler every chunk GET goes through.
    pub fn scheduler(&self) -> &FetchScheduler {
        &self.scheduler
    }

    /// Loads pack indexes that appeared since the last load.
    pub async fn reload(&self) -> Result<(), ChunkError> {
        let listing = self.store.list(PACKS_PREFIX).await?;
        let known: Vec<PackId> = self
            .packs
            .read()
            .expect("packs lock")
            .keys()
            .copied()
            .collect();
        let new: Vec<PackId> = listing
            .iter()
            .filter_map(|o| {
                o.key
                    .strip_prefix("packs/")?
                    .strip_suffix(".idx")?
                    .parse()
                    .ok()
            })
            .filter(|p| known.binary_search(p).is_err())
            .collect();
        let loaded: Vec<(PackId, PackIndex)> = stream::iter(new)
            .map(|pack| async move {
                let key = index_key(&pack);
                let bytes = self.store.get(&key).await?;
                let index = PackIndex::decode(&bytes)
                    .map_err(|source| ChunkError::BadPackIndex { key, source })?;
                Ok::<_, ChunkError>((pack, index))
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        for (pack, index) in loaded {
            self.insert(pack, Arc::new(index));
        }
        Ok(())
    }

    fn insert(&self, pack: PackId, index: Arc<PackIndex>) {
        let mut chunks = self.chunks.write().expect("chunks lock");
        for e in &index.entries {
            chunks
                .entry(e.id)
                .or_insert(ChunkLocation { pack, entry: *e });
        }
        self.packs.write().expect("packs lock").insert(pack, index);
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.chunks.read().expect("chunks lock").contains_key(id)
    }

    pub fn location(&self, id: &ChunkId) -> Option<ChunkLocation> {
        self.chunks.read().expect("chunks lock").get(id).copied()
    }

    /// The chunks stored right after `id` in its pack, up to `budget` stored bytes:
    /// candidates to fetch in the same ranged GET. Packs keep chunks in the order a build
    /// met them (path order), so these are usually the neighbouring files.
    pub fn following(&self, id: &ChunkId, budget: u64) -> Vec<ChunkId> {
        let Some(loc) = self.location(id) else {
            return Vec::new();
        };
        let Some(index) = self
            .packs
            .read()
            .expect("packs lock")
            .get(&loc.pack)
            .cloned()
        else {
            return Vec::new();
        };
        let start = index
            .entries
            .partition_point(|e| e.offset <= loc.entry.offset);
        let mut used = 0u64;
        index.entries[start..]
            .iter()
            .take_while(|e| {
                used += u64::from(e.stored_len);
                used <= budget
            })
            .map(|e| e.id)
            .collect()
    }

    /// Every pack and its index.
    pub fn packs(&self) -> Vec<(PackId, Arc<PackIndex>)> {
        self.packs
            .read()
            .expect("packs lock")
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// Forgets a pack (after garbage collection deleted it).
    pub fn forget(&self, pack: &PackId) {
        if let Some(index) = self.packs.write().expect("packs lock").remove(pack) {
            let mut chunks = self.chunks.write().expect("chunks lock");
            for e in &index.entries {
                if chunks.get(&e.id).is_some_and(|l| l.pack == *pack) {
                    chunks.remove(&e.id);
                }
            }
        }
    }

    /// Uploads a finished pack: the pack object first, then its index, so an index in
    /// the store always points at a complete pack.
    pub async fn publish(&self, data: Bytes, index: PackIndex) -> Result<PackId, ChunkError> {
        index.validate()?;
        let pack = PackId::of(&data);
        self.store.put(&pack_key(&pack), data).await?;
        self.store
            .put(&index_key(&pack), Bytes::from(index.encode()))
            .await?;
        self.insert(pack, Arc::new(index));
        Ok(pack)
    }

    /// Fetches chunks on demand, verified, in the order asked.
    pub async fn fetch(&self, ids: &[ChunkId]) -> Vec<Result<Bytes, ChunkError>> {
        self.fetch_with(ids, &Priority::on_demand()).await
    }

    /// Groups chunks into ranged GETs: chunks of one pack that lie close together share
    /// one. Runs come in the order of their first chunk in `ids`, so a prefetch list keeps
    /// its order. Chunks the store does not hold come back as errors.
    pub fn plan(&self, ids: &[ChunkId]) -> (Vec<FetchRun>, Vec<(usize, ChunkError)>) {
        let mut unknown = Vec::new();
        let mut by_pack: HashMap<PackId, Vec<(usize, PackEntry)>> = HashMap::new();
        for (i, id) in ids.iter().enumerate() {
            match self.location(id) {
                Some(loc) => by_pack.entry(loc.pack).or_default().push((i, loc.entry)),
                None => unknown.push((i, ChunkError::UnknownChunk(*id))),
            }
        }
        let mut runs: Vec<FetchRun> = Vec::new();
        for (pack, mut entries) in by_pack {
            entries.sort_by_key(|(_, e)| e.offset);
            let mut run: Vec<(usize, PackEntry)> = Vec::new();
            for (i, e) in entries {
                if let (Some((_, first)), Some((_, last))) = (run.first(), run.last()) {
                    let gap = e.offset.saturating_sub(last.end());
                    if gap > COALESCE_GAP || e.end() - first.offset > MAX_COALESCED {
                        runs.push(FetchRun {
                            pack,
                            entries: std::mem::take(&mut run),
                        });
                    }
                }
                run.push((i, e));
            }
            if !run.is_empty() {
                runs.push(FetchRun { pack, entries: run });
            }
        }
        runs.sort_by_key(FetchRun::first_position);
        (runs, unknown)
    }

    /// Fetches chunks at a priority, verified, in the order asked. GETs run concurrently,
    /// each when the scheduler grants it a slot.
    pub async fn fetch_with(
        &self,
        ids: &[ChunkId],
        priority: &Arc<Priority>,
    ) -> Vec<Result<Bytes, ChunkError>> {
        let mut out: Vec<Option<Result<Bytes, ChunkError>>> =
            (0..ids.len()).map(|_| None).collect();
        let (runs, unknown) = self.plan(ids);
        for (i, e) in unknown {
            out[i] = Some(Err(e));
        }
        let results: Vec<Vec<(usize, Result<Bytes, ChunkError>)>> = stream::iter(runs)
            .map(|run| self.fetch_run(run, priority))
            .buffer_unordered(8)
            .collect()
            .await;
        for (i, r) in results.into_iter().flatten() {
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|r| r.expect("every chunk has a result"))
            .collect()
    }

    async fn fetch_run(
        &self,
        run: FetchRun,
        priority: &Priority,
    ) -> Vec<(usize, Result<Bytes, ChunkError>)> {
        let range = run.range();
        let (pack, run, start) = (run.pack, run.entries, range.start);
        let permit = self
            .scheduler
            .acquire(priority, range.end - range.start)
            .await;
        let got = self.store.get_range(&pack_key(&pack), range).await;
        drop(permit);
        let bytes = match got {
            Ok(b) => b,
            Err(e) => {
                let msg = e.to_string();
                return run
                    .into_iter()
                    .map(|(i, _)| {
                        let err = crate::StoreError::Transient {
                            op: "fetch chunk",
                            key: pack_key(&pack),
                            source: msg.clone().into(),
                        };
                        (i, Err(ChunkError::Store(err)))
                    })
                    .collect();
            }
        };
        // Decompression and hashing are CPU work: keep them off the async workers.
        let decoded = tokio::task::spawn_blocking(move || {
            run.into_iter()
                .map(|(i, e)| {
                    let lo = (e.offset - start) as usize;
                    let stored = bytes.slice(lo..lo + e.stored_len as usize);
                    (i, decode_chunk(&pack, &e, stored))
                })
                .collect::<Vec<_>>()
        })
        .await;
        decoded.unwrap_or_else(|e| panic!("chunk decoding task panicked: {e}"))
    }
}

/// Decompresses (if needed) and verifies one stored chunk.
pub fn decode_chunk(pack: &PackId, e: &PackEntry, stored: Bytes) -> Result<Bytes, ChunkError> {
    let integrity = |reason: String| ChunkError::Integrity {
        chunk: e.id,
        pack: *pack,
        reason,
    };
    let raw = match e.compression {
        Compression::None => stored,
        Compression::Zstd => {
            // The capacity is the index's raw length, validated to be at most 16 MiB.
            let v = zstd::bulk::decompress(&stored, e.raw_len as usize)
                .map_err(|err| integrity(format!("zstd: {err}")))?;
            Bytes::from(v)
        }
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
