//! A wrapper that kills the process just before its (n+1)-th request: the crash tests
//! stop a build or a gc after each of its store requests in turn, as `kill -9` would, with
//! nothing flushed or cleaned up.

use crate::blob::{BlobStore, ObjectInfo};
use crate::error::StoreError;
use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

/// Aborts the process instead of sending request number `after + 1`.
#[derive(Debug)]
pub struct CrashStore {
    inner: Arc<dyn BlobStore>,
    after: u64,
    sent: AtomicU64,
}

impl CrashStore {
    /// Lets `after` requests through, then aborts the process on the next.
    pub fn new(inner: Arc<dyn BlobStore>, after: u64) -> Self {
        CrashStore {
            inner,
            after,
            sent: AtomicU64::new(0),
        }
    }

    fn gate(&self, op: &str, key: &str) {
        if self.sent.fetch_add(1, SeqCst) >= self.after {
            // stderr is unbuffered: the test sees which request the process died at.
            eprintln!(
                "crash test: aborting before request {} ({op} {key})",
                self.after + 1
            );
            std::process::abort();
        }
    }
}

#[async_trait]
impl BlobStore for CrashStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.gate("put", key);
        self.inner.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        self.gate("put_if_absent", key);
        self.inner.put_if_absent(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.gate("get", key);
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.gate("get_range", key);
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        self.gate("head", key);
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.gate("list", prefix);
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.gate("delete", key);
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        format!(
            "{} (crashes after {} requests)",
            self.inner.describe(),
            self.after
        )
    }
}
