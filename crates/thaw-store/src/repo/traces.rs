//! Start-up traces stored with their image, and the merged prefetch list a prewarm reads
//! with one GET.

use super::Repository;
use crate::error::{RepoError, StoreError};
use crate::pack::keys::{prefetch_key, trace_key, traces_dir};
use bytes::Bytes;
use std::collections::HashSet;
use thaw_core::trace::{Trace, TraceRecord};
use thaw_core::{ChunkId, ImageId};

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

impl Repository {
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
        let key = trace_key(&image, &blake3::hash(text.as_bytes()).to_hex()[..32]);
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
            .list(&traces_dir(image))
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
}
