//! Injects failures: a random fraction of requests fail, or the whole store is down.

use crate::blob::{BlobStore, ObjectInfo};
use crate::error::StoreError;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// What to inject.
#[derive(Debug, Clone, Copy)]
pub struct FaultConfig {
    /// Fraction of requests that fail with a transient error, 0.0 to 1.0.
    pub fail_rate: f64,
    /// Seed for reproducible runs.
    pub seed: u64,
}

/// A [`BlobStore`] that fails on purpose (tests only).
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn BlobStore>,
    config: FaultConfig,
    rng: Mutex<StdRng>,
    down: AtomicBool,
    panicking: AtomicBool,
    injected: AtomicU64,
}

impl FaultyStore {
    /// Wraps `inner`, failing requests as `config` says.
    pub fn new(inner: Arc<dyn BlobStore>, config: FaultConfig) -> Self {
        FaultyStore {
            inner,
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
            config,
            down: AtomicBool::new(false),
            panicking: AtomicBool::new(false),
            injected: AtomicU64::new(0),
        }
    }

    /// While down, every request fails.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Relaxed);
    }

    /// While set, every request panics: what a bug in a backend would do. Tests use it to
    /// check that a panicking fetch leaves nothing behind.
    pub fn set_panicking(&self, panicking: bool) {
        self.panicking.store(panicking, Relaxed);
    }

    /// How many failures were injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Relaxed)
    }

    fn check(&self, op: &'static str, key: &str) -> Result<(), StoreError> {
        if self.panicking.load(Relaxed) {
            self.injected.fetch_add(1, Relaxed);
            panic!("injected panic: {op} {key}");
        }
        let fail =
            self.down.load(Relaxed) || self.rng.lock().random::<f64>() < self.config.fail_rate;
        if fail {
            self.injected.fetch_add(1, Relaxed);
            return Err(StoreError::Injected {
                op,
                key: key.to_string(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl BlobStore for FaultyStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.check("put", key)?;
        self.inner.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        self.check("put_if_absent", key)?;
        self.inner.put_if_absent(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.check("get", key)?;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.check("get_range", key)?;
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        self.check("head", key)?;
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.check("list", prefix)?;
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.check("delete", key)?;
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        format!("{} (faults {:?})", self.inner.describe(), self.config)
    }
}
