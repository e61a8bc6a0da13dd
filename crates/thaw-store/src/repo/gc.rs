//! Garbage collection: packs no image references, and pack objects without an index.

use super::Repository;
use crate::error::RepoError;
use crate::pack::keys::{index_key, pack_key, PACKS_PREFIX};
use std::collections::HashSet;
use std::time::{Duration, SystemTime};
use thaw_core::{ChunkId, PackId};

/// What `gc` found (and did, when applied).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Images found.
    pub images: usize,
    /// Distinct chunks they reference.
    pub referenced_chunks: usize,
    /// Packs with an index.
    pub packs: usize,
    /// Packs none of whose chunks any image references.
    pub unreferenced_packs: Vec<(PackId, u64)>,
    /// Pack objects without an index (an interrupted upload).
    pub orphan_objects: Vec<(String, u64)>,
    /// Packs kept because they are younger than the minimum age.
    pub too_young: usize,
    /// Bytes in packs that are still needed but hold unreferenced chunks.
    pub unreferenced_bytes_in_live_packs: u64,
    /// Whether the packs were deleted (`--apply`).
    pub deleted: bool,
}

impl GcReport {
    /// Bytes the deletion frees (or would free).
    pub fn reclaimable_bytes(&self) -> u64 {
        self.unreferenced_packs.iter().map(|p| p.1).sum::<u64>()
            + self.orphan_objects.iter().map(|o| o.1).sum::<u64>()
    }
}

impl Repository {
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
                .strip_prefix(PACKS_PREFIX)
                .and_then(|k| k.strip_prefix('/'))
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
