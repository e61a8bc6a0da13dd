//! Garbage collection in two phases (kopia's scheme): a pass marks each pack no image
//! references and older than the safety period; a later pass deletes a pack whose mark has outlived the safety period and
//! which still nothing references, and revives (unmarks) one that an image references
//! again. The protocol, and why builds never end with a broken image, is in
//! docs/format.md ("Concurrent writers and gc").

use super::Repository;
use crate::error::RepoError;
use crate::pack::keys::{index_key, pack_key, PACKS_PREFIX};
use crate::ObjectInfo;
use std::collections::{BTreeMap, HashMap, HashSet};
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
    /// Unreferenced packs whose mark is older than the safety period: deleted (applied).
    pub deletable: Vec<(PackId, u64)>,
    /// Unreferenced packs without a mark: marked now (applied), deleted by a pass after
    /// the safety period.
    pub newly_marked: Vec<(PackId, u64)>,
    /// Unreferenced packs marked within the safety period.
    pub waiting: Vec<(PackId, u64)>,
    /// Unreferenced packs younger than the safety period, not marked yet: a build that is
    /// still running may be about to reference them.
    pub young: usize,
    /// Marked packs an image references again: their marks are removed.
    pub revived: Vec<PackId>,
    /// How many of the unreferenced packs are pack objects without an index (a build that
    /// stopped between the two uploads).
    pub orphans: usize,
    /// Marks of packs that no longer exist (a pass stopped after deleting the pack).
    pub stale_marks: usize,
    /// Bytes in packs that are still needed but hold unreferenced chunks.
    pub unreferenced_bytes_in_live_packs: u64,
    /// Whether the changes were made (`--apply`).
    pub applied: bool,
}

impl GcReport {
    /// Bytes this pass deletes (or would delete).
    pub fn freed_bytes(&self) -> u64 {
        self.deletable.iter().map(|p| p.1).sum()
    }

    /// Bytes in unreferenced packs, deleted now or by a later pass.
    pub fn reclaimable_bytes(&self) -> u64 {
        let later: u64 = self
            .newly_marked
            .iter()
            .chain(&self.waiting)
            .map(|p| p.1)
            .sum();
        self.freed_bytes() + later
    }
}

/// A pack nothing references: an indexed pack or an orphan pack object.
#[derive(Debug)]
struct Unreferenced {
    pack: PackId,
    bytes: u64,
    /// When its pack object was written, if it exists.
    written: Option<SystemTime>,
}

impl Repository {
    /// One gc pass (see the module docs). Without `apply` it reports what it would do and
    /// writes nothing. A dry run ages marks by this machine's clock; an applied pass by
    /// the store's.
    pub async fn gc(&self, apply: bool, safety: Duration) -> Result<GcReport, RepoError> {
        // The order matters: clock, marks, packs, then images. A mark this pass may act on
        // existed before it read the image list.
        let now = if apply {
            self.store_now().await?
        } else {
            SystemTime::now()
        };
        let marks = self.deletion_marks().await?;
        self.packs.reload().await?;
        let mut report = GcReport::default();
        let live = self.live_chunks(&mut report).await?;
        let listing = self.store.list(PACKS_PREFIX).await?;
        let unreferenced = self.unreferenced(&live, &listing, &marks, &mut report);
        let older = |t: SystemTime| now.duration_since(t).unwrap_or_default() >= safety;
        for u in unreferenced {
            let entry = (u.pack, u.bytes);
            match marks.get(&u.pack) {
                None if u.written.is_some_and(|t| !older(t)) => report.young += 1,
                None => report.newly_marked.push(entry),
                Some(t) if older(*t) => report.deletable.push(entry),
                Some(_) => report.waiting.push(entry),
            }
        }
        let existing = existing_packs(&listing);
        let stale: Vec<PackId> = marks
            .keys()
            .filter(|p| !existing.contains(p))
            .copied()
            .collect();
        report.stale_marks = stale.len();
        if apply {
            self.apply(&report, &stale).await?;
            report.applied = true;
        }
        Ok(report)
    }

    /// Every chunk an image references. An image removed while gc reads is skipped; any
    /// other failure stops the pass (never delete on a partial view).
    async fn live_chunks(&self, report: &mut GcReport) -> Result<HashSet<ChunkId>, RepoError> {
        let mut live = HashSet::new();
        for (id, _) in self.list_images().await? {
            match self.get_manifest(&id).await {
                Ok(m) => live.extend(m.chunks.iter().map(|c| c.id)),
                Err(RepoError::MissingManifest(_)) => continue,
                Err(e) => return Err(e),
            }
            report.images += 1;
        }
        report.referenced_chunks = live.len();
        Ok(live)
    }

    /// Sorts the packs into live ones (reviving marked ones) and unreferenced ones, orphan
    /// pack objects included.
    fn unreferenced(
        &self,
        live: &HashSet<ChunkId>,
        listing: &[ObjectInfo],
        marks: &HashMap<PackId, SystemTime>,
        report: &mut GcReport,
    ) -> Vec<Unreferenced> {
        let objects: BTreeMap<PackId, (u64, SystemTime)> = listing
            .iter()
            .filter_map(|o| Some((pack_of_pack_key(&o.key)?, (o.size, o.last_modified))))
            .collect();
        let indexes = existing_indexes(listing);
        let mut out = Vec::new();
        let mut indexed = HashSet::new();
        for (pack, index) in self.packs.packs() {
            if !indexes.contains(&pack) {
                // Deleted by another pass since this process loaded it.
                self.packs.forget(&pack);
                continue;
            }
            indexed.insert(pack);
            let used: u64 = index
                .entries
                .iter()
                .filter(|e| live.contains(&e.id))
                .map(|e| u64::from(e.stored_len))
                .sum();
            if index.entries.iter().any(|e| live.contains(&e.id)) {
                report.unreferenced_bytes_in_live_packs += index.pack_len.saturating_sub(used);
                if marks.contains_key(&pack) {
                    report.revived.push(pack);
                }
                continue;
            }
            let object = objects.get(&pack);
            out.push(Unreferenced {
                pack,
                bytes: object.map_or(index.pack_len, |o| o.0),
                written: object.map(|o| o.1),
            });
        }
        report.packs = indexed.len();
        for (pack, (bytes, written)) in objects.into_iter().filter(|(p, _)| !indexed.contains(p)) {
            report.orphans += 1;
            out.push(Unreferenced {
                pack,
                bytes,
                written: Some(written),
            });
        }
        out
    }

    /// Makes the pass's changes. A deleted pack goes index first, then the pack, then its
    /// mark: an index never points at a missing pack, and a build that checks marks and
    /// then indexes sees one or the other until both are gone.
    async fn apply(&self, report: &GcReport, stale: &[PackId]) -> Result<(), RepoError> {
        for (pack, _) in &report.deletable {
            self.store.delete(&index_key(pack)).await?;
            self.store.delete(&pack_key(pack)).await?;
            self.unmark(pack).await?;
            self.packs.forget(pack);
        }
        for (pack, _) in &report.newly_marked {
            self.mark(pack).await?;
        }
        for pack in report.revived.iter().chain(stale) {
            self.unmark(pack).await?;
        }
        Ok(())
    }
}

/// The pack a pack object's key names.
fn pack_of_pack_key(key: &str) -> Option<PackId> {
    key.strip_prefix("packs/")?
        .strip_suffix(".pack")?
        .parse()
        .ok()
}

/// Packs whose index is in the listing.
fn existing_indexes(listing: &[ObjectInfo]) -> HashSet<PackId> {
    listing
        .iter()
        .filter_map(|o| crate::pack::keys::pack_of_index_key(&o.key))
        .collect()
}

/// Packs with an index or a pack object in the listing.
fn existing_packs(listing: &[ObjectInfo]) -> HashSet<PackId> {
    let mut all = existing_indexes(listing);
    all.extend(listing.iter().filter_map(|o| pack_of_pack_key(&o.key)));
    all
}
