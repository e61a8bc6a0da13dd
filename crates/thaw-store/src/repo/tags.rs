//! Tags: names for images, each an object holding an image id.

use super::Repository;
use crate::error::{RepoError, StoreError};
use crate::pack::keys::{tag_key, TAGS_PREFIX};
use bytes::Bytes;
use thaw_core::tag::validate_tag;
use thaw_core::ImageId;

impl Repository {
    /// Points tag `name` at an image (creating or moving it).
    pub async fn set_tag(&self, name: &str, id: &ImageId) -> Result<(), RepoError> {
        validate_tag(name)?;
        self.store
            .put(&tag_key(name), Bytes::from(format!("{id}\n")))
            .await?;
        Ok(())
    }

    /// Removes a tag (the image stays).
    pub async fn remove_tag(&self, name: &str) -> Result<(), RepoError> {
        validate_tag(name)?;
        Ok(self.store.delete(&tag_key(name)).await?)
    }

    /// The image a tag names, if the tag exists.
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
}
