//! A local copy of the store's pack indexes, so that a process that opens the repository
//! again (a second `thaw mount`, a restarted daemon) reads them from its own disk instead
//! of one GET each from the store. Pack indexes never change once written (a pack's id
//! is fixed by its contents), and the store's listing still decides which packs exist, so
//! a copy can only be read for a pack the store lists. Each copy is written as the disk
//! cache writes its entries (checksummed, renamed into place); a damaged one is removed
//! and fetched again. Everything else passes through.

use crate::blob::{BlobStore, ObjectInfo};
use crate::error::StoreError;
use crate::pack::keys::pack_of_index_key;
use crate::read::cache::{check_entry, write_atomically};
use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// A [`BlobStore`] that keeps the pack indexes it reads in a local directory.
#[derive(Debug)]
pub struct MetaCacheStore {
    inner: Arc<dyn BlobStore>,
    dir: PathBuf,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl MetaCacheStore {
    /// Keeps copies in `dir` (made, mode 0700, if missing).
    pub fn new(inner: Arc<dyn BlobStore>, dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(MetaCacheStore {
            inner,
            dir: dir.to_path_buf(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// (copies read, indexes fetched from the store) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }

    /// Where the copy of `key` lives, if it is a pack index (the name is the pack's id,
    /// parsed, so no key can name a path outside the directory).
    fn path_of(&self, key: &str) -> Option<PathBuf> {
        pack_of_index_key(key).map(|pack| self.dir.join(format!("{pack}.idx")))
    }

    async fn read_copy(path: PathBuf) -> Option<Bytes> {
        let read = tokio::task::spawn_blocking(move || {
            let entry = std::fs::read(&path).ok()?;
            let copy = check_entry(Bytes::from(entry));
            if copy.is_none() {
                tracing::warn!(path = %path.display(), "a damaged copy of a pack index: fetching it again");
                let _ = std::fs::remove_file(&path);
            }
            copy
        });
        read.await.ok().flatten()
    }

    async fn write_copy(path: PathBuf, data: Bytes) {
        let written = tokio::task::spawn_blocking(move || write_atomically(&path, &data));
        if let Ok(Err(e)) = written.await {
            // Best effort: the next open fetches it again.
            tracing::warn!(error = %e, "could not keep a copy of a pack index");
        }
    }
}

#[async_trait]
impl BlobStore for MetaCacheStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.inner.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        self.inner.put_if_absent(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let Some(path) = self.path_of(key) else {
            return self.inner.get(key).await;
        };
        if let Some(copy) = Self::read_copy(path.clone()).await {
            self.hits.fetch_add(1, Relaxed);
            return Ok(copy);
        }
        let data = self.inner.get(key).await?;
        self.misses.fetch_add(1, Relaxed);
        Self::write_copy(path, data.clone()).await;
        Ok(data)
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        if let Some(path) = self.path_of(key) {
            let _ = std::fs::remove_file(path);
        }
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::blob::wrap::CountingStore;
    use crate::ObjectStoreBackend;

    #[tokio::test]
    async fn indexes_are_read_from_the_copy_and_a_damaged_copy_is_fetched_again() {
        let tmp = tempfile::tempdir().unwrap();
        let backend: Arc<dyn BlobStore> =
            Arc::new(ObjectStoreBackend::local(&tmp.path().join("store")).unwrap());
        let key = format!("packs/{}.idx", "ab".repeat(32));
        backend
            .put(&key, Bytes::from_static(b"index"))
            .await
            .unwrap();
        backend
            .put("images/x", Bytes::from_static(b"m"))
            .await
            .unwrap();
        let open = || {
            let counting = Arc::new(CountingStore::new(backend.clone()));
            let meta = MetaCacheStore::new(counting.clone(), &tmp.path().join("meta")).unwrap();
            (counting, meta)
        };
        let (counting, first) = open();
        assert_eq!(first.get(&key).await.unwrap(), "index");
        assert_eq!(first.counts(), (0, 1));
        let (counting2, second) = open();
        assert_eq!(second.get(&key).await.unwrap(), "index");
        assert_eq!(second.counts(), (1, 0));
        assert_eq!(
            counting2.counters().snapshot().gets,
            0,
            "no GET the second time"
        );
        // Other keys always go to the store.
        assert_eq!(second.get("images/x").await.unwrap(), "m");
        assert_eq!(counting2.counters().snapshot().gets, 1);
        // A damaged copy is dropped and fetched again.
        let copy = tmp
            .path()
            .join("meta")
            .join(format!("{}.idx", "ab".repeat(32)));
        std::fs::write(&copy, b"garbage that is long enough").unwrap();
        let (_, third) = open();
        assert_eq!(third.get(&key).await.unwrap(), "index");
        assert_eq!(third.counts(), (0, 1));
        // Deleting the index deletes the copy too.
        third.delete(&key).await.unwrap();
        assert!(!copy.exists());
        assert!(matches!(
            third.get(&key).await,
            Err(StoreError::NotFound { .. })
        ));
        drop(counting);
        // Everything else behaves as the store does.
        crate::blob::conformance::run(&second).await;
    }
}
