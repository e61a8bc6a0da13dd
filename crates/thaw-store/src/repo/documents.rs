//! The OCI manifest and config of a layered image, kept beside its thaw manifest so the
//! image can be handed to containerd again from the store alone.

use super::Repository;
use crate::error::{RepoError, StoreError};
use crate::pack::keys::documents_key;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thaw_core::ImageId;

/// The largest documents object accepted: real manifests and configs are kilobytes.
pub const MAX_DOCUMENTS_BYTES: usize = 4 << 20;

/// An image's OCI manifest and config, byte for byte (their digests are over these
/// bytes). The store does not interpret them; `thaw-image` checks them when it reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDocuments {
    /// The manifest's media type (OCI or Docker schema 2).
    pub manifest_media_type: String,
    /// The manifest document.
    pub manifest: String,
    /// The config document.
    pub config: String,
}

impl Repository {
    /// Stores `image`'s OCI documents (replacing any).
    pub async fn put_documents(
        &self,
        image: &ImageId,
        documents: &ImageDocuments,
    ) -> Result<(), RepoError> {
        let bytes = serde_json::to_vec(documents).map_err(|e| RepoError::BadDocuments {
            image: *image,
            reason: e.to_string(),
        })?;
        if bytes.len() > MAX_DOCUMENTS_BYTES {
            return Err(RepoError::BadDocuments {
                image: *image,
                reason: format!("{} bytes; at most {MAX_DOCUMENTS_BYTES}", bytes.len()),
            });
        }
        self.store
            .put(&documents_key(image), Bytes::from(bytes))
            .await?;
        Ok(())
    }

    /// `image`'s OCI documents, if it has any.
    pub async fn get_documents(
        &self,
        image: &ImageId,
    ) -> Result<Option<ImageDocuments>, RepoError> {
        let bytes = match self.store.get(&documents_key(image)).await {
            Ok(b) => b,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let bad = |reason: String| RepoError::BadDocuments {
            image: *image,
            reason,
        };
        if bytes.len() > MAX_DOCUMENTS_BYTES {
            return Err(bad(format!(
                "{} bytes; at most {MAX_DOCUMENTS_BYTES}",
                bytes.len()
            )));
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| bad(e.to_string()))
    }

    /// Removes `image`'s OCI documents, if any.
    pub(crate) async fn remove_documents(&self, image: &ImageId) -> Result<(), RepoError> {
        match self.store.delete(&documents_key(image)).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::blob::BlobStore;
    use std::sync::Arc;

    async fn repo() -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn BlobStore> =
            Arc::new(crate::ObjectStoreBackend::local(dir.path()).unwrap());
        (dir, Repository::open(store).await.unwrap())
    }

    #[tokio::test]
    async fn documents_are_kept_read_back_and_damage_is_an_error() {
        let (_dir, repo) = repo().await;
        let image = ImageId([7; 32]);
        assert_eq!(repo.get_documents(&image).await.unwrap(), None);
        let docs = ImageDocuments {
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            manifest: "{\"schemaVersion\":2}".into(),
            config: "{}".into(),
        };
        repo.put_documents(&image, &docs).await.unwrap();
        assert_eq!(repo.get_documents(&image).await.unwrap(), Some(docs));

        repo.store()
            .put(
                &documents_key(&image),
                Bytes::from_static(b"{\"manifest\": 3"),
            )
            .await
            .unwrap();
        let err = repo.get_documents(&image).await.unwrap_err();
        assert!(matches!(err, RepoError::BadDocuments { .. }), "{err}");
        repo.remove_documents(&image).await.unwrap();
        repo.remove_documents(&image).await.unwrap();
        assert_eq!(repo.get_documents(&image).await.unwrap(), None);
    }
}
