//! Counts requests and bytes per operation (metrics, and tests that count fetches).

use crate::blob::{BlobStore, ObjectInfo};
use crate::error::StoreError;
use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Live counters, shared between the wrapper and whoever reads them.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// `get` and `get_range` requests.
    pub gets: AtomicU64,
    /// Bytes they returned.
    pub get_bytes: AtomicU64,
    /// `put` requests.
    pub puts: AtomicU64,
    /// Bytes they wrote.
    pub put_bytes: AtomicU64,
    /// `head` requests.
    pub heads: AtomicU64,
    /// `list` requests.
    pub lists: AtomicU64,
    /// `delete` requests.
    pub deletes: AtomicU64,
    /// Requests that failed.
    pub errors: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreCountersSnapshot {
    /// `get` and `get_range` requests.
    pub gets: u64,
    /// Bytes they returned.
    pub get_bytes: u64,
    /// `put` requests.
    pub puts: u64,
    /// Bytes they wrote.
    pub put_bytes: u64,
    /// `head` requests.
    pub heads: u64,
    /// `list` requests.
    pub lists: u64,
    /// `delete` requests.
    pub deletes: u64,
    /// Requests that failed.
    pub errors: u64,
}

impl StoreCounters {
    /// The counters now.
    pub fn snapshot(&self) -> StoreCountersSnapshot {
        StoreCountersSnapshot {
            gets: self.gets.load(Relaxed),
            get_bytes: self.get_bytes.load(Relaxed),
            puts: self.puts.load(Relaxed),
            put_bytes: self.put_bytes.load(Relaxed),
            heads: self.heads.load(Relaxed),
            lists: self.lists.load(Relaxed),
            deletes: self.deletes.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
    }
}

/// A [`BlobStore`] that counts what passes through it.
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn BlobStore>,
    counters: Arc<StoreCounters>,
}

impl CountingStore {
    /// Counts the requests made to `inner`.
    pub fn new(inner: Arc<dyn BlobStore>) -> Self {
        CountingStore {
            inner,
            counters: Arc::default(),
        }
    }
    /// The live counters (shared; read them any time).
    pub fn counters(&self) -> Arc<StoreCounters> {
        self.counters.clone()
    }
    fn count<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if r.is_err() {
            self.counters.errors.fetch_add(1, Relaxed);
        }
        r
    }
}

#[async_trait]
impl BlobStore for CountingStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.counters.puts.fetch_add(1, Relaxed);
        self.counters
            .put_bytes
            .fetch_add(data.len() as u64, Relaxed);
        let r = self.inner.put(key, data).await;
        self.count(r)
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        self.counters.puts.fetch_add(1, Relaxed);
        self.counters
            .put_bytes
            .fetch_add(data.len() as u64, Relaxed);
        let r = self.inner.put_if_absent(key, data).await;
        self.count(r)
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.counters.gets.fetch_add(1, Relaxed);
        let r = self.inner.get(key).await;
        if let Ok(b) = &r {
            self.counters.get_bytes.fetch_add(b.len() as u64, Relaxed);
        }
        self.count(r)
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.counters.gets.fetch_add(1, Relaxed);
        let r = self.inner.get_range(key, range).await;
        if let Ok(b) = &r {
            self.counters.get_bytes.fetch_add(b.len() as u64, Relaxed);
        }
        self.count(r)
    }
    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        self.counters.heads.fetch_add(1, Relaxed);
        let r = self.inner.head(key).await;
        self.count(r)
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.counters.lists.fetch_add(1, Relaxed);
        let r = self.inner.list(prefix).await;
        self.count(r)
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.counters.deletes.fetch_add(1, Relaxed);
        let r = self.inner.delete(key).await;
        self.count(r)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn local_dir(&self) -> Option<std::path::PathBuf> {
        self.inner.local_dir()
    }
}
