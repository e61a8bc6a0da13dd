//! Weights resident on the node: chosen safetensors files (or sharded checkpoints, by
//! their `model.safetensors.index.json`) loaded once, decompressed and verified, into
//! sealed memfds, each tensor at a 256-byte boundary; bounded in bytes, least recently
//! used out first. A warm scale-up takes them from here without touching the store or
//! the disk, and serving processes map them (see [`crate::handoff`]).

use crate::memfd::SharedMemory;
use crate::pipeline::{find_file, read_file};
use crate::{load, Allocations, HostSink, LoadError, LoadOptions};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use thaw_core::{ImageId, Manifest};
use thaw_store::ChunkReader;

/// Where tensors start in resident memory.
pub const RESIDENT_ALIGN: u64 = 256;
/// The largest index file of a sharded checkpoint read.
const MAX_INDEX_BYTES: u64 = 16 << 20;

/// One tensor as handed over: where its bytes are in its file's memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedTensor {
    /// Its name.
    pub name: String,
    /// Its dtype, as safetensors writes it.
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Where it starts in the memfd (a multiple of 256).
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// One safetensors file in shared memory.
#[derive(Debug)]
pub struct ResidentFile {
    /// The file in the image.
    pub path: String,
    /// The file's own JSON header, as it was.
    pub header: String,
    /// Its tensors.
    pub tensors: Vec<HandedTensor>,
    /// The sealed memory.
    pub memory: SharedMemory,
}

/// A model: one file, or every shard of a sharded checkpoint.
#[derive(Debug)]
pub struct ResidentModel {
    /// The image.
    pub image: ImageId,
    /// The path asked for (a file, or an index).
    pub path: String,
    /// Its files, in shard order.
    pub files: Vec<ResidentFile>,
}

impl ResidentModel {
    /// Bytes of memory it holds.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.memory.len() as u64).sum()
    }
}

/// How full the tier is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ResidentUsage {
    /// Bytes held.
    pub bytes: u64,
    /// The bound.
    pub capacity: u64,
    /// Models held.
    pub models: u64,
    /// Requests served from memory.
    pub hits: u64,
    /// Requests that loaded.
    pub loads: u64,
    /// Models let go to make room.
    pub evictions: u64,
}

type Key = (ImageId, String);

/// The bounded set of resident models.
#[derive(Debug)]
pub struct ResidentTier {
    capacity: u64,
    models: Mutex<lru::LruCache<Key, Arc<ResidentModel>>>,
    /// One load at a time: two requests for one model load it once, and memory never
    /// holds two loads in progress beyond the bound.
    loading: tokio::sync::Mutex<()>,
    hits: AtomicU64,
    loads: AtomicU64,
    evictions: AtomicU64,
}

impl ResidentTier {
    /// A tier of at most `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        ResidentTier {
            capacity,
            models: Mutex::new(lru::LruCache::unbounded()),
            loading: tokio::sync::Mutex::new(()),
            hits: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// How full it is.
    pub fn usage(&self) -> ResidentUsage {
        let models = self.models.lock();
        ResidentUsage {
            bytes: models.iter().map(|(_, m)| m.bytes()).sum(),
            capacity: self.capacity,
            models: models.len() as u64,
            hits: self.hits.load(Ordering::Relaxed),
            loads: self.loads.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    /// The model at `path` of `image`, loaded if it is not resident.
    pub async fn get_or_load(
        &self,
        reader: Arc<ChunkReader>,
        manifest: &Manifest,
        image: ImageId,
        path: &str,
    ) -> Result<Arc<ResidentModel>, LoadError> {
        let key = (image, normalise(path));
        if let Some(m) = self.hit(&key) {
            return Ok(m);
        }
        let _one = self.loading.lock().await;
        if let Some(m) = self.hit(&key) {
            return Ok(m);
        }
        let files = model_files(&reader, manifest, &key.1).await?;
        let estimate = estimate_bytes(manifest, &files)?;
        if estimate > self.capacity {
            return Err(LoadError::Resident(format!(
                "{path}: about {estimate} bytes, more than the resident tier's {}",
                self.capacity
            )));
        }
        self.make_room(estimate);
        let mut loaded = Vec::with_capacity(files.len());
        for f in &files {
            loaded.push(load_file(reader.clone(), manifest, f).await?);
        }
        let model = Arc::new(ResidentModel {
            image,
            path: key.1.clone(),
            files: loaded,
        });
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.models.lock().put(key, model.clone());
        self.make_room(0);
        Ok(model)
    }

    fn hit(&self, key: &Key) -> Option<Arc<ResidentModel>> {
        let m = self.models.lock().get(key).cloned()?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(m)
    }

    /// Lets the least recently used models go until `extra` more bytes fit. Processes
    /// that mapped one keep their mapping; only the tier forgets it.
    fn make_room(&self, extra: u64) {
        let mut models = self.models.lock();
        loop {
            let held: u64 = models.iter().map(|(_, m)| m.bytes()).sum();
            if held + extra <= self.capacity {
                return;
            }
            if models.pop_lru().is_none() {
                return;
            }
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A path in an image as the tier keys it (`./a//b` is `a/b`).
pub fn normalise(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// The files of the model at `path`: itself, or the shards its index names (which must
/// lie in the index's directory).
async fn model_files(
    reader: &Arc<ChunkReader>,
    manifest: &Manifest,
    path: &str,
) -> Result<Vec<String>, LoadError> {
    if !path.ends_with(".index.json") {
        return Ok(vec![path.to_owned()]);
    }
    let bad = |reason: String| LoadError::BadHeader {
        path: path.to_owned(),
        reason,
    };
    let text = read_file(reader, manifest, path, MAX_INDEX_BYTES).await?;
    #[derive(Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let index: Index =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not a checkpoint index: {e}")))?;
    let shards: BTreeSet<&String> = index.weight_map.values().collect();
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    shards
        .into_iter()
        .map(|s| {
            if s.is_empty() || s.contains('/') || s == ".." {
                return Err(bad(format!("shard {s:?} is not a file next to the index")));
            }
            Ok(if dir.is_empty() {
                s.clone()
            } else {
                format!("{dir}/{s}")
            })
        })
        .collect()
}

/// The files' sizes plus the alignment padding they may need.
fn estimate_bytes(manifest: &Manifest, files: &[String]) -> Result<u64, LoadError> {
    let mut total = 0u64;
    for f in files {
        let (size, _) = find_file(manifest, f)?;
        total = total.saturating_add(size);
    }
    Ok(total)
}

async fn load_file(
    reader: Arc<ChunkReader>,
    manifest: &Manifest,
    path: &str,
) -> Result<ResidentFile, LoadError> {
    let sink = HostSink::shared(Allocations::default(), path);
    let options = LoadOptions {
        align: RESIDENT_ALIGN,
        ..LoadOptions::default()
    };
    let (sink, report) = load(reader, manifest, path, sink, options).await?;
    let memory = sink
        .into_shared()
        .ok_or_else(|| LoadError::Pipeline("the load kept its memory".into()))?
        .seal()
        .map_err(|e| LoadError::Resident(format!("{path}: sealing: {e}")))?;
    let tensors = report
        .header
        .tensors
        .iter()
        .zip(&report.offsets)
        .map(|(t, &offset)| HandedTensor {
            name: t.name.clone(),
            dtype: t.dtype.clone(),
            shape: t.shape.clone(),
            offset,
            len: t.end - t.start,
        })
        .collect();
    Ok(ResidentFile {
        path: path.to_owned(),
        header: report.header.json.clone(),
        tensors,
        memory,
    })
}
