//! A local copy of what a process reads from the store before it can serve an image: the
//! pack indexes, the manifests, and the listing of the packs, so that a process that opens
//! the repository again (a second `thaw mount` of an image named by id, a restarted
//! daemon) makes no store request before serving. Pack indexes and manifests never change
//! once written (their keys are fixed by their contents; a manifest copy is checked
//! against its image id). The listing does change: the copy answers only the first
//! listing of the packs this process makes; every later one goes to the store and
//! refreshes the copy, and a process that finds an image's chunk in no known pack lists
//! again (`Repository::ensure_packs_for`). Each copy is written as the disk cache writes
//! its entries (checksummed, renamed into place); a damaged one is removed and fetched
//! again. Everything else passes through.

use crate::blob::{BlobStore, ObjectInfo};
use crate::error::StoreError;
use crate::pack::keys::{image_of_key, pack_of_index_key, PACKS_PREFIX};
use crate::read::cache::{check_entry, write_atomically};
use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

/// A [`BlobStore`] that keeps the pack indexes it reads in a local directory.
#[derive(Debug)]
pub struct MetaCacheStore {
    inner: Arc<dyn BlobStore>,
    dir: PathBuf,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Whether the first listing of the packs was made (from the copy or the store).
    listed: AtomicBool,
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
            listed: AtomicBool::new(false),
        })
    }

    /// (copies read, indexes fetched from the store) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }

    /// Where the copy of `key` lives, if it is a pack index or a manifest (the name is
    /// the parsed id, so no key can name a path outside the directory).
    fn path_of(&self, key: &str) -> Option<PathBuf> {
        if let Some(pack) = pack_of_index_key(key) {
            return Some(self.dir.join(format!("{pack}.idx")));
        }
        image_of_key(key).map(|image| self.dir.join(format!("{image}.manifest")))
    }

    /// The copy at `path`, if intact (and, for a manifest, if it hashes to its id).
    async fn read_copy(path: PathBuf, key: &str) -> Option<Bytes> {
        let image = image_of_key(key);
        let read = tokio::task::spawn_blocking(move || {
            let entry = std::fs::read(&path).ok()?;
            let copy = check_entry(Bytes::from(entry))
                .filter(|c| image.is_none_or(|id| thaw_core::Manifest::id_of(c) == id));
            if copy.is_none() {
                tracing::warn!(path = %path.display(), "a damaged copy of store metadata: fetching it again");
                let _ = std::fs::remove_file(&path);
            }
            copy
        });
        read.await.ok().flatten()
    }

    /// The listing's copy, named by the store it lists (one cache directory can serve
    /// several stores).
    fn listing_path(&self) -> PathBuf {
        let store = blake3::hash(self.inner.describe().as_bytes()).to_hex();
        self.dir.join(format!("packs-{}.list", &store[..16]))
    }

    /// The listing of the packs from its copy: `NANOS SIZE KEY` lines.
    async fn read_listing(&self) -> Option<Vec<ObjectInfo>> {
        let copy = Self::read_copy(self.listing_path(), "").await?;
        let text = std::str::from_utf8(&copy).ok()?;
        text.lines()
            .map(|line| {
                let mut parts = line.splitn(3, ' ');
                let nanos: u64 = parts.next()?.parse().ok()?;
                let size = parts.next()?.parse().ok()?;
                let key = parts.next()?.to_string();
                let last_modified = UNIX_EPOCH + std::time::Duration::from_nanos(nanos);
                Some(ObjectInfo {
                    key,
                    size,
                    last_modified,
                })
            })
            .collect()
    }

    async fn write_listing(&self, listing: &[ObjectInfo]) {
        let mut text = String::new();
        for o in listing.iter().filter(|o| !o.key.contains('\n')) {
            let nanos = o
                .last_modified
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            text.push_str(&format!("{nanos} {} {}\n", o.size, o.key));
        }
        Self::write_copy(self.listing_path(), Bytes::from(text)).await;
    }

    async fn write_copy(path: PathBuf, data: Bytes) {
        let written = tokio::task::spawn_blocking(move || write_atomically(&path, &data));
        if let Ok(Err(e)) = written.await {
            // Best effort: the next open fetches it again.
            tracing::warn!(error = %e, "could not keep a copy of store metadata");
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
        if let Some(copy) = Self::read_copy(path.clone(), key).await {
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
        if prefix != PACKS_PREFIX {
            return self.inner.list(prefix).await;
        }
        if !self.listed.swap(true, Relaxed) {
            if let Some(listing) = self.read_listing().await {
                self.hits.fetch_add(1, Relaxed);
                return Ok(listing);
            }
        }
        let listing = self.inner.list(prefix).await?;
        self.write_listing(&listing).await;
        Ok(listing)
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

    fn local_dir(&self) -> Option<std::path::PathBuf> {
        self.inner.local_dir()
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

    #[tokio::test]
    async fn manifests_and_the_first_pack_listing_come_from_copies() {
        let tmp = tempfile::tempdir().unwrap();
        let backend: Arc<dyn BlobStore> =
            Arc::new(ObjectStoreBackend::local(&tmp.path().join("store")).unwrap());
        let manifest = Bytes::from_static(b"manifest bytes");
        let image = thaw_core::Manifest::id_of(&manifest);
        let image_key = crate::pack::keys::image_key(&image);
        backend.put(&image_key, manifest.clone()).await.unwrap();
        let first_pack = format!("packs/{}.idx", "ab".repeat(32));
        backend
            .put(&first_pack, Bytes::from_static(b"i"))
            .await
            .unwrap();
        let open = || {
            let counting = Arc::new(CountingStore::new(backend.clone()));
            let meta = MetaCacheStore::new(counting.clone(), &tmp.path().join("meta")).unwrap();
            (counting, meta)
        };
        let keys = |l: Vec<ObjectInfo>| l.into_iter().map(|o| o.key).collect::<Vec<_>>();
        let (_, first) = open();
        assert_eq!(first.get(&image_key).await.unwrap(), manifest);
        assert_eq!(
            keys(first.list("packs").await.unwrap()),
            vec![first_pack.clone()]
        );

        // A new process: no request for either.
        let (counting, second) = open();
        assert_eq!(second.get(&image_key).await.unwrap(), manifest);
        let listed = second.list("packs").await.unwrap();
        assert_eq!(keys(listed), vec![first_pack.clone()]);
        let c = counting.counters().snapshot();
        assert_eq!((c.gets, c.lists), (0, 0), "served from the copies");
        // A pack written since: only a later listing sees it, and it goes to the store.
        let new_pack = format!("packs/{}.idx", "cd".repeat(32));
        backend
            .put(&new_pack, Bytes::from_static(b"j"))
            .await
            .unwrap();
        assert_eq!(second.list("packs").await.unwrap().len(), 2);
        assert_eq!(counting.counters().snapshot().lists, 1);

        // A manifest copy that does not hash to its id is dropped and fetched again.
        let copy = tmp.path().join("meta").join(format!("{image}.manifest"));
        write_atomically(&copy, b"other bytes").unwrap();
        let (counting, third) = open();
        assert_eq!(third.get(&image_key).await.unwrap(), manifest);
        assert_eq!(counting.counters().snapshot().gets, 1);
        // The listing copy names its store: another store's first listing is its own.
        let other: Arc<dyn BlobStore> =
            Arc::new(ObjectStoreBackend::local(&tmp.path().join("other")).unwrap());
        let meta = MetaCacheStore::new(other, &tmp.path().join("meta")).unwrap();
        assert!(meta.list("packs").await.unwrap().is_empty());
    }
}
