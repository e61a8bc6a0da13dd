//! Image manifests: stored by their id (the hash of their bytes), verified on every read.

use super::Repository;
use crate::error::{RepoError, StoreError};
use crate::pack::keys::{image_key, prefetch_key, IMAGES_PREFIX};
use bytes::Bytes;
use thaw_core::{ImageId, Manifest};

impl Repository {
    /// Stores a manifest (after checking that every chunk it names is in the store),
    /// without the check against gc that [`Repository::commit_manifest`] makes: for
    /// manifests whose chunks no gc can be deleting (tests, imports of a locked store).
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<(ImageId, usize), RepoError> {
        let bytes = self.encode_checked(manifest)?;
        let id = Manifest::id_of(&bytes);
        let len = bytes.len();
        self.store.put(&image_key(&id), Bytes::from(bytes)).await?;
        Ok((id, len))
    }

    /// A valid manifest's bytes, if every chunk it names is in a known pack.
    pub(super) fn encode_checked(&self, manifest: &Manifest) -> Result<Vec<u8>, RepoError> {
        manifest.validate()?;
        if let Some(c) = manifest.chunks.iter().find(|c| !self.packs.contains(&c.id)) {
            return Err(RepoError::UnknownChunk(c.id));
        }
        Ok(manifest.encode())
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

    /// Removes an image, its traces, its OCI documents and every tag that names it. Its chunks stay until
    /// `gc`.
    pub async fn remove_image(&self, id: &ImageId) -> Result<Vec<String>, RepoError> {
        for key in self.trace_keys(id).await? {
            self.store.delete(&key).await?;
        }
        match self.store.delete(&prefetch_key(id)).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.remove_documents(id).await?;
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
}
