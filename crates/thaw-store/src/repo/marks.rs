//! The store's side of the protocol that lets builds and gc share a store (docs/format.md,
//! "Concurrent writers and gc"): deletion marks, the store's clock, and a build's commit,
//! which checks after writing its manifest that gc has taken none of its packs.

use super::Repository;
use crate::error::{RepoError, StoreError};
use crate::pack::keys::{
    image_key, index_key, mark_key, pack_key, pack_of_mark_key, CLOCK_KEY, MARKS_PREFIX,
};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use std::collections::{BTreeSet, HashMap};
use std::time::SystemTime;
use thaw_core::{ImageId, Manifest, PackId};

/// HEADs a commit check runs at once.
const CHECKS_IN_FLIGHT: usize = 16;

/// Proof that a build began with [`Repository::begin_build`] (so it reuses no pack gc
/// has marked), asked for by [`Repository::commit_manifest`].
#[derive(Debug)]
pub struct BuildTicket {
    _private: (),
}

impl Repository {
    /// gc's deletion marks: each marked pack and when it was marked (the store's time).
    pub async fn deletion_marks(&self) -> Result<HashMap<PackId, SystemTime>, RepoError> {
        Ok(self
            .store
            .list(MARKS_PREFIX)
            .await?
            .into_iter()
            .filter_map(|o| Some((pack_of_mark_key(&o.key)?, o.last_modified)))
            .collect())
    }

    /// The store's time now: gc writes its clock object and reads the time back, so mark
    /// ages never compare two machines' clocks.
    pub(super) async fn store_now(&self) -> Result<SystemTime, RepoError> {
        self.store
            .put(CLOCK_KEY, Bytes::from_static(b"gc clock\n"))
            .await?;
        Ok(self.store.head(CLOCK_KEY).await?.last_modified)
    }

    /// Marks a pack for deletion; an existing mark keeps its (earlier) time.
    pub(super) async fn mark(&self, pack: &PackId) -> Result<(), RepoError> {
        let note = Bytes::from_static(b"marked for deletion by thaw gc\n");
        self.store.put_if_absent(&mark_key(pack), note).await?;
        Ok(())
    }

    /// Removes a pack's deletion mark (the pack is referenced again, or gone).
    pub(super) async fn unmark(&self, pack: &PackId) -> Result<(), RepoError> {
        Ok(self.store.delete(&mark_key(pack)).await?)
    }

    /// Starts a build: packs gc has marked are dropped from this repository's view, so the
    /// build stores their chunks anew instead of reusing what gc is about to delete.
    pub async fn begin_build(&self) -> Result<BuildTicket, RepoError> {
        let marks = self.deletion_marks().await?;
        self.packs.retire(marks.keys());
        Ok(BuildTicket { _private: () })
    }

    /// Stores a build's manifest, then checks that gc has neither marked nor deleted any
    /// pack it needs. gc deletes only packs whose mark existed before it read the image
    /// list, and deletes the index before the pack and the mark last; so a manifest
    /// written after that read finds the mark or a missing index here. On a conflict the
    /// manifest is withdrawn (unless it existed before this build) and nothing is left
    /// pointing at missing chunks.
    pub async fn commit_manifest(
        &self,
        _ticket: &BuildTicket,
        manifest: &Manifest,
    ) -> Result<(ImageId, usize), RepoError> {
        let bytes = self.encode_checked(manifest)?;
        let id = Manifest::id_of(&bytes);
        let key = image_key(&id);
        let existed = match self.store.head(&key).await {
            Ok(_) => true,
            Err(StoreError::NotFound { .. }) => false,
            Err(e) => return Err(e.into()),
        };
        let len = bytes.len();
        self.store.put(&key, Bytes::from(bytes)).await?;
        let taken = match self.packs_taken_by_gc(manifest).await {
            Ok(t) => t,
            Err(e) => {
                // Unchecked is as bad as taken: withdraw it if we can (the retry layer has
                // already tried the check; this delete is the last word).
                if !existed {
                    if let Err(d) = self.store.delete(&key).await {
                        tracing::error!(image = %id, error = %d, "could not withdraw an unchecked manifest");
                    }
                }
                return Err(e);
            }
        };
        if taken.is_empty() {
            return Ok((id, len));
        }
        if !existed {
            self.store.delete(&key).await?;
        }
        Err(RepoError::GcConflict { packs: taken })
    }

    /// The packs of `manifest`'s chunks that are marked for deletion or whose index is gone.
    async fn packs_taken_by_gc(&self, manifest: &Manifest) -> Result<Vec<PackId>, RepoError> {
        let needed: BTreeSet<PackId> = manifest
            .chunks
            .iter()
            .filter_map(|c| self.packs.location(&c.id).map(|l| l.pack))
            .collect();
        // Marks first, then the index and the pack: gc removes both before the mark, and
        // a pack this build wrote again after gc's delete is whole (it came first).
        let marks = self.deletion_marks().await?;
        let mut taken: Vec<PackId> = needed
            .iter()
            .filter(|p| marks.contains_key(p))
            .copied()
            .collect();
        let gone: Vec<PackId> =
            futures::stream::iter(needed.iter().filter(|p| !marks.contains_key(p)))
                .map(|p| async move {
                    for key in [index_key(p), pack_key(p)] {
                        match self.store.head(&key).await {
                            Ok(_) => {}
                            Err(StoreError::NotFound { .. }) => return Ok(Some(*p)),
                            Err(e) => return Err(RepoError::from(e)),
                        }
                    }
                    Ok(None)
                })
                .buffer_unordered(CHECKS_IN_FLIGHT)
                .try_filter_map(|p| async move { Ok(p) })
                .try_collect()
                .await?;
        taken.extend(gone);
        taken.sort();
        Ok(taken)
    }
}
