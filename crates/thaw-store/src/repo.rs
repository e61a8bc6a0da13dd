//! A repository: the packs of a store plus its images (manifests) and tags, and the
//! garbage collector that removes packs no image needs.

use crate::error::RepoError;
use crate::packs::{index_key, pack_key, PACKS_PREFIX};
use crate::{BlobStore, PackStore, StoreError};
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use thaw_core::id::is_hex_prefix;
use thaw_core::tag::validate_tag;
use thaw_core::trace::{Trace, TraceRecord};
use thaw_core::{ChunkId, ImageId, Manifest, PackId};

const IMAGES_PREFIX: &str = "images";
const TAGS_PREFIX: &str = "tags";
const TRACES_PREFIX: &str = "traces";
/// The merged prefetch list of an image, rewritten at every push, so that a prewarm
/// costs one request instead of a listing and a read per trace.
const PREFETCH_PREFIX: &str = "prefetch";

fn prefetch_key(image: &ImageId) -> String {
    format!("{PREFETCH_PREFIX}/{image}")
}
/// Traces kept per image: merging more adds little, and bounds the work of a prewarm.
pub const MAX_TRACES_PER_IMAGE: usize = 64;
/// The largest trace accepted (about 200,000 records with long paths).
pub const MAX_TRACE_BYTES: usize = 64 << 20;

/// Decodes a stored trace and checks it belongs to `image`.
fn decode_trace(key: &str, bytes: &[u8], image: &ImageId) -> Result<Trace, RepoError> {
    let trace =
        Trace::decode(&String::from_utf8_lossy(bytes)).map_err(|source| RepoError::BadTrace {
            key: key.to_string(),
            source,
        })?;
    if trace.image != *image {
        return Err(RepoError::TraceImageMismatch {
            image: *image,
            recorded: trace.image,
        });
    }
    Ok(trace)
}

fn image_key(id: &ImageId) -> String {
    format!("{IMAGES_PREFIX}/{id}")
}

/// Tag names may hold characters object stores treat specially (`:`, `/`, `@`), so the
/// key is the name in hex.
fn tag_key(name: &str) -> String {
    format!("{TAGS_PREFIX}/{}", hex::encode(name))
}

/// What `gc` found (and did, when applied).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub images: usize,
    pub referenced_chunks: usize,
    pub packs: usize,
    /// Packs none of whose chunks any image references.
    pub unreferenced_packs: Vec<(PackId, u64)>,
    /// Pack objects without an index (an interrupted upload).
    pub orphan_objects: Vec<(String, u64)>,
    /// Packs kept because they are younger than the minimum age.
    pub too_young: usize,
    /// Bytes in packs that are still needed but hold unreferenced chunks.
    pub unreferenced_bytes_in_live_packs: u64,
    pub deleted: bool,
}

impl GcReport {
    pub fn reclaimable_bytes(&self) -> u64 {
        self.unreferenced_packs.iter().map(|p| p.1).sum::<u64>()
            + self.orphan_objects.iter().map(|o| o.1).sum::<u64>()
    }
}

/// A store's packs, images and tags.
#[derive(Debug, Clone)]
pub struct Repository {
    store: Arc<dyn BlobStore>,
    packs: Arc<PackStore>,
}

impl Repository {
    pub async fn open(store: Arc<dyn BlobStore>) -> Result<Self, RepoError> {
        let packs = PackStore::open(store.clone()).await?;
        Ok(Repository { store, packs })
    }

    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.store
    }

    pub fn packs(&self) -> &Arc<PackStore> {
        &self.packs
    }

    /// Stores a manifest (after checking that every chunk it names is in the store).
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<(ImageId, usize), RepoError> {
        manifest.validate()?;
        if let Some(c) = manifest.chunks.iter().find(|c| !self.packs.contains(&c.id)) {
            return Err(RepoError::UnknownChunk(c.id));
        }
        let bytes = manifest.encode();
        let id = Manifest::id_of(&bytes);
        let len = bytes.len();
        self.store.put(&image_key(&id), Bytes::from(bytes)).await?;
        Ok((id, len))
    }

    /// Loads and verifies a manifest.
    pub async fn get_manifest(&self, id: &ImageId) -> Result<Manifest, RepoError> {
        let bytes = match self.store.get(&image_key(id)).await {
            Err(StoreError::NotFound { .. }) => return Err(RepoError::MissingManifest(*id)),
            r => r?,
        };
        let actual = Manifest::id_of(&bytes);
        if actual != *id {
            return Err(RepoError::ImageIdMismatch { image: *id, actual });
        }
        Manifest::decode(&bytes).map_err(|source| RepoError::BadManifest { image: *id, source })
    }

    pub async fn set_tag(&self, name: &str, id: &ImageId) -> Result<(), RepoError> {
        validate_tag(name)?;
        self.store
            .put(&tag_key(name), Bytes::from(format!("{id}\n")))
            .await?;
        Ok(())
    }

    pub async fn remove_tag(&self, name: &str) -> Result<(), RepoError> {
        validate_tag(name)?;
        Ok(self.store.delete(&tag_key(name)).await?)
    }

    pub async fn get_tag(&self, name: &str) -> Result<Option<ImageId>, RepoError> {
        if validate_tag(name).is_err() {
            return Ok(None);
        }
        match self.store.get(&tag_key(name)).await {
            Ok(b) => {
                let s = String::from_utf8_lossy(&b);
                Ok(Some(s.trim().parse()?))
            }
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every tag and the image it names, sorted by name.
    pub async fn list_tags(&self) -> Result<Vec<(String, ImageId)>, RepoError> {
        let mut out = Vec::new();
        for o in self.store.list(TAGS_PREFIX).await? {
            let Some(hexname) = o.key.strip_prefix("tags/") else {
                continue;
            };
            let Some(name) = hex::decode(hexname)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
            else {
                continue;
            };
            if let Some(id) = self.get_tag(&name).await? {
                out.push((name, id));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every image in the store, with its manifest size.
    pub async fn list_images(&self) -> Result<Vec<(ImageId, u64)>, RepoError> {
        Ok(self
            .store
            .list(IMAGES_PREFIX)
            .await?
            .into_iter()
            .filter_map(|o| Some((o.key.strip_prefix("images/")?.parse().ok()?, o.size)))
            .collect())
    }

    /// Resolves a tag, a full image id or an unambiguous id prefix.
    pub async fn resolve(&self, name: &str) -> Result<ImageId, RepoError> {
        // A whole id costs no request (tags cannot look like one); loading its manifest
        // checks that it exists.
        if name.len() == 64 && is_hex_prefix(name) {
            return Ok(name.parse()?);
        }
        if let Some(id) = self.get_tag(name).await? {
            return Ok(id);
        }
        if !is_hex_prefix(name) {
            return Err(RepoError::NoSuchImage(name.to_string()));
        }
        let matches: Vec<ImageId> = self
            .list_images()
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| id.to_hex().starts_with(name))
            .collect();
        match matches.len() {
            0 => Err(RepoError::NoSuchImage(name.to_string())),
            1 => Ok(matches[0]),
            count => Err(RepoError::AmbiguousImage {
                input: name.to_string(),
                count,
            }),
        }
    }

    /// Stores a start-up trace with its image, after checking that it was recorded on
    /// that image and names only its chunks. Returns the trace's key; pushing the same
    /// trace twice stores it once.
    pub async fn put_trace(&self, trace: &Trace) -> Result<String, RepoError> {
        let image = trace.image;
        let manifest = self.get_manifest(&image).await?;
        let chunks: HashSet<ChunkId> = manifest.chunks.iter().map(|c| c.id).collect();
        if let Some(r) = trace.records.iter().find(|r| !chunks.contains(&r.chunk)) {
            return Err(RepoError::TraceChunkNotInImage {
                image,
                chunk: r.chunk,
                path: String::from_utf8_lossy(&r.path).into_owned(),
            });
        }
        let existing = self.trace_keys(&image).await?;
        let text = trace.encode();
        let key = format!(
            "{TRACES_PREFIX}/{image}/{}",
            &blake3::hash(text.as_bytes()).to_hex()[..32]
        );
        if !existing.contains(&key) && existing.len() >= MAX_TRACES_PER_IMAGE {
            return Err(RepoError::TooManyTraces {
                image,
                count: existing.len(),
                max: MAX_TRACES_PER_IMAGE,
            });
        }
        self.store.put(&key, Bytes::from(text)).await?;
        // Two pushes racing here may each write a merge without the other's trace; the
        // next push (or a prewarm that falls back to merging) repairs it.
        // The listing made above plus the trace in hand, in key order: no second
        // listing and no re-read of what was just written.
        let others: Vec<String> = existing.into_iter().filter(|k| *k != key).collect();
        let mut all = self.read_traces(&others, &image).await?;
        let at = others.partition_point(|k| *k < key);
        all.insert(at, trace.clone());
        let merged = Trace {
            image,
            records: thaw_core::trace::merge(&all),
        };
        self.store
            .put(&prefetch_key(&image), Bytes::from(merged.encode()))
            .await?;
        Ok(key)
    }

    /// The keys of the traces stored with an image, sorted.
    pub async fn trace_keys(&self, image: &ImageId) -> Result<Vec<String>, RepoError> {
        let mut keys: Vec<String> = self
            .store
            .list(&format!("{TRACES_PREFIX}/{image}"))
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Every trace stored with an image.
    pub async fn traces(&self, image: &ImageId) -> Result<Vec<Trace>, RepoError> {
        let keys = self.trace_keys(image).await?;
        self.read_traces(&keys, image).await
    }

    async fn read_traces(&self, keys: &[String], image: &ImageId) -> Result<Vec<Trace>, RepoError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let bytes = self.store.get(key).await?;
            if bytes.len() > MAX_TRACE_BYTES {
                return Err(RepoError::BadTrace {
                    key: key.clone(),
                    source: thaw_core::FormatError::Malformed {
                        what: "trace",
                        reason: format!("{} bytes, more than {MAX_TRACE_BYTES}", bytes.len()),
                    },
                });
            }
            out.push(decode_trace(key, &bytes, image)?);
        }
        Ok(out)
    }

    /// The image's traces merged into one prefetch list (see [`thaw_core::trace::merge`]).
    pub async fn prefetch_list(&self, image: &ImageId) -> Result<Vec<TraceRecord>, RepoError> {
        let key = prefetch_key(image);
        match self.store.get(&key).await {
            Ok(bytes) if bytes.len() <= MAX_TRACE_BYTES => {
                Ok(decode_trace(&key, &bytes, image)?.records)
            }
            // None stored (or absurdly large): merge the traces themselves.
            Ok(_) | Err(StoreError::NotFound { .. }) => {
                Ok(thaw_core::trace::merge(&self.traces(image).await?))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes an image, its traces and every tag that names it. Its chunks stay until
    /// `gc`.
    pub async fn remove_image(&self, id: &ImageId) -> Result<Vec<String>, RepoError> {
        for key in self.trace_keys(id).await? {
            self.store.delete(&key).await?;
        }
        match self.store.delete(&prefetch_key(id)).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let mut removed = Vec::new();
        for (name, tagged) in self.list_tags().await? {
            if tagged == *id {
                self.remove_tag(&name).await?;
                removed.push(name);
            }
        }
        self.store.delete(&image_key(id)).await?;
        Ok(removed)
    }

    /// Loads the pack indexes that appeared since the last load if any of `chunks` is in
    /// none this repository knows: an image built since it opened may sit in new packs.
    pub async fn ensure_packs_for(
        &self,
        mut chunks: impl Iterator<Item = ChunkId>,
    ) -> Result<(), RepoError> {
        if chunks.any(|c| !self.packs.contains(&c)) {
            self.packs.reload().await?;
        }
        Ok(())
    }

    /// Finds packs no image references; deletes them when `apply`. Packs younger than
    /// `min_age` are kept: a build running now may be about to reference them.
    pub async fn gc(&self, apply: bool, min_age: Duration) -> Result<GcReport, RepoError> {
        self.packs.reload().await?;
        let mut report = GcReport::default();
        let mut live: HashSet<ChunkId> = HashSet::new();
        for (id, _) in self.list_images().await? {
            let m = self.get_manifest(&id).await?;
            live.extend(m.chunks.iter().map(|c| c.id));
            report.images += 1;
        }
        report.referenced_chunks = live.len();
        let now = SystemTime::now();
        let young = |t: SystemTime| now.duration_since(t).unwrap_or_default() < min_age;
        let listing = self.store.list(PACKS_PREFIX).await?;
        let indexed: HashSet<PackId> = self.packs.packs().into_iter().map(|(p, _)| p).collect();
        report.packs = indexed.len();
        for (pack, index) in self.packs.packs() {
            let used: u64 = index
                .entries
                .iter()
                .filter(|e| live.contains(&e.id))
                .map(|e| u64::from(e.stored_len))
                .sum();
            let any_used = index.entries.iter().any(|e| live.contains(&e.id));
            if any_used {
                report.unreferenced_bytes_in_live_packs += index.pack_len - used;
                continue;
            }
            let info = listing.iter().find(|o| o.key == pack_key(&pack));
            if info.is_some_and(|o| young(o.last_modified)) {
                report.too_young += 1;
                continue;
            }
            report
                .unreferenced_packs
                .push((pack, info.map_or(index.pack_len, |o| o.size)));
        }
        for o in &listing {
            let Some(stem) = o
                .key
                .strip_prefix("packs/")
                .and_then(|k| k.strip_suffix(".pack"))
            else {
                continue;
            };
            let orphan = stem
                .parse::<PackId>()
                .map_or(true, |p| !indexed.contains(&p));
            if orphan && !young(o.last_modified) {
                report.orphan_objects.push((o.key.clone(), o.size));
            }
        }
        if apply {
            for (pack, _) in &report.unreferenced_packs {
                // Index first: an index must never point at a missing pack.
                self.store.delete(&index_key(pack)).await?;
                self.store.delete(&pack_key(pack)).await?;
                self.packs.forget(pack);
            }
            for (key, _) in &report.orphan_objects {
                self.store.delete(key).await?;
            }
            report.deleted = true;
        }
        Ok(report)
    }
}
