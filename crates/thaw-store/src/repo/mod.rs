//! A repository: the packs of a store plus its images (manifests), tags and start-up
//! traces, and the garbage collector that removes packs no image needs. One file per
//! concern: [`images`], [`tags`], [`traces`], [`documents`], [`gc`].

mod documents;
mod gc;
mod images;
mod marks;
mod tags;
mod traces;

pub use documents::{ImageDocuments, MAX_DOCUMENTS_BYTES};
pub use gc::GcReport;
pub use marks::BuildTicket;
pub use traces::{MAX_TRACES_PER_IMAGE, MAX_TRACE_BYTES};

use crate::blob::BlobStore;
use crate::error::RepoError;
use crate::pack::store::PackStore;
use std::sync::Arc;
use thaw_core::id::is_hex_prefix;
use thaw_core::{ChunkId, ImageId};

/// A store's packs, images and tags.
#[derive(Debug, Clone)]
pub struct Repository {
    store: Arc<dyn BlobStore>,
    packs: Arc<PackStore>,
}

impl Repository {
    /// Opens the repository of `store`, loading every pack index.
    pub async fn open(store: Arc<dyn BlobStore>) -> Result<Self, RepoError> {
        let packs = PackStore::open(store.clone()).await?;
        Ok(Repository { store, packs })
    }

    /// The blob store under it.
    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.store
    }

    /// Its packs.
    pub fn packs(&self) -> &Arc<PackStore> {
        &self.packs
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
}
