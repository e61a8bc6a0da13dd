//! Retries transient errors with exponential backoff, inside a per-request deadline.

use crate::blob::{BlobStore, ObjectInfo};
use crate::error::StoreError;
use async_trait::async_trait;
use bytes::Bytes;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// How hard to try.
#[derive(Debug, Clone, Copy)]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The first wait after a failure (doubled each time, with jitter).
    pub initial_backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
    /// One attempt that takes longer than this is abandoned and counts as transient.
    pub attempt_timeout: Duration,
    /// The whole request, retries included, fails after this.
    pub deadline: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(30),
            deadline: Duration::from_secs(60),
        }
    }
}

/// A [`BlobStore`] that retries transient failures.
#[derive(Debug)]
pub struct RetryStore {
    inner: Arc<dyn BlobStore>,
    config: RetryConfig,
}

impl RetryStore {
    /// Retries `inner`'s transient failures as `config` says.
    pub fn new(inner: Arc<dyn BlobStore>, config: RetryConfig) -> Self {
        RetryStore { inner, config }
    }

    async fn run<T, F, Fut>(&self, op: &'static str, key: &str, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let c = self.config;
        let start = tokio::time::Instant::now();
        let mut attempts = 0u32;
        let mut backoff = c.initial_backoff;
        loop {
            attempts += 1;
            let remaining = c.deadline.saturating_sub(start.elapsed());
            let limit = remaining.min(c.attempt_timeout);
            let last = match tokio::time::timeout(limit, f()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if !e.is_transient() => return Err(e),
                Ok(Err(e)) => {
                    tracing::debug!(op, key, attempt = attempts, error = %e, "transient store error");
                    e.to_string()
                }
                Err(_) => format!("attempt timed out after {limit:?}"),
            };
            // Full jitter keeps many readers from retrying in lockstep.
            let sleep = backoff.mul_f64(rand::random::<f64>());
            let give_up = attempts >= c.max_attempts || start.elapsed() + sleep >= c.deadline;
            if give_up {
                return Err(StoreError::Deadline {
                    op,
                    key: key.to_string(),
                    after: start.elapsed(),
                    attempts,
                    last,
                });
            }
            tokio::time::sleep(sleep).await;
            backoff = (backoff * 2).min(c.max_backoff);
        }
    }
}

#[async_trait]
impl BlobStore for RetryStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.run("put", key, || self.inner.put(key, data.clone()))
            .await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        self.run("put_if_absent", key, || {
            self.inner.put_if_absent(key, data.clone())
        })
        .await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.run("get", key, || self.inner.get(key)).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.run("get_range", key, || {
            self.inner.get_range(key, range.clone())
        })
        .await
    }
    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        self.run("head", key, || self.inner.head(key)).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.run("list", prefix, || self.inner.list(prefix)).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.run("delete", key, || self.inner.delete(key)).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn local_dir(&self) -> Option<std::path::PathBuf> {
        self.inner.local_dir()
    }
}
