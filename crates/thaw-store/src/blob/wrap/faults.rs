//! Injects failures: a random fraction of requests fail, come back with one bit flipped,
//! or wait; or the whole store is down. Tests use it directly; `thaw --inject-faults`
//! (the soak) puts it under a daemon.

use crate::blob::{BlobStore, ObjectInfo};
use crate::error::StoreError;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// What to inject.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaultConfig {
    /// Fraction of requests that fail with a transient error, 0.0 to 1.0.
    pub fail_rate: f64,
    /// Fraction of reads (`get`, `get_range`) whose bytes come back with one bit flipped.
    pub corrupt_rate: f64,
    /// Each request first waits a random time up to this.
    pub max_latency: Duration,
    /// Seed for reproducible runs.
    pub seed: u64,
}

impl FaultConfig {
    /// Parses `fail=F,corrupt=F,latency-ms=N,seed=N` (any subset, any order).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut config = FaultConfig::default();
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not KEY=VALUE"))?;
            let rate = || match value.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(format!("{key}: {value:?} is not a fraction from 0 to 1")),
            };
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{key}: {value:?} is not a whole number"))
            };
            match key {
                "fail" => config.fail_rate = rate()?,
                "corrupt" => config.corrupt_rate = rate()?,
                "latency-ms" => config.max_latency = Duration::from_millis(number()?),
                "seed" => config.seed = number()?,
                _ => {
                    return Err(format!(
                        "unknown fault {key:?} (fail, corrupt, latency-ms, seed)"
                    ))
                }
            }
        }
        Ok(config)
    }
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
    corrupted: AtomicU64,
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
            corrupted: AtomicU64::new(0),
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

    /// How many reads came back corrupted so far.
    pub fn corrupted(&self) -> u64 {
        self.corrupted.load(Relaxed)
    }

    /// Waits the request's share of latency, then fails it or lets it through.
    async fn enter(&self, op: &'static str, key: &str) -> Result<(), StoreError> {
        let max = self.config.max_latency;
        if !max.is_zero() {
            let wait = max.mul_f64(self.rng.lock().random::<f64>());
            tokio::time::sleep(wait).await;
        }
        self.check(op, key)
    }

    /// `bytes`, or now and then the same with one bit flipped.
    fn maybe_corrupt(&self, bytes: Bytes) -> Bytes {
        if bytes.is_empty() || self.config.corrupt_rate <= 0.0 {
            return bytes;
        }
        let mut rng = self.rng.lock();
        if rng.random::<f64>() >= self.config.corrupt_rate {
            return bytes;
        }
        let at = rng.random_range(0..bytes.len());
        let bit = rng.random_range(0..8u32);
        drop(rng);
        self.corrupted.fetch_add(1, Relaxed);
        // Logged so a soak can count what it injected into a daemon.
        tracing::warn!(byte = at, bit, "injected corruption");
        let mut copy = bytes.to_vec();
        copy[at] ^= 1 << bit;
        Bytes::from(copy)
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
            tracing::warn!(op, key, "injected fault");
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
        self.enter("put", key).await?;
        self.inner.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        self.enter("put_if_absent", key).await?;
        self.inner.put_if_absent(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.enter("get", key).await?;
        Ok(self.maybe_corrupt(self.inner.get(key).await?))
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.enter("get_range", key).await?;
        Ok(self.maybe_corrupt(self.inner.get_range(key, range).await?))
    }
    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        self.enter("head", key).await?;
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.enter("list", prefix).await?;
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.enter("delete", key).await?;
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        format!("{} (faults {:?})", self.inner.describe(), self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let c = FaultConfig::parse("fail=0.02,corrupt=0.5,latency-ms=7,seed=9").unwrap();
        assert_eq!(
            c,
            FaultConfig {
                fail_rate: 0.02,
                corrupt_rate: 0.5,
                max_latency: Duration::from_millis(7),
                seed: 9
            }
        );
        assert_eq!(FaultConfig::parse("").unwrap(), FaultConfig::default());
        assert!(FaultConfig::parse("fail=2")
            .unwrap_err()
            .contains("fraction"));
        assert!(FaultConfig::parse("slow=1")
            .unwrap_err()
            .contains("unknown fault"));
        assert!(FaultConfig::parse("seed")
            .unwrap_err()
            .contains("KEY=VALUE"));
    }

    #[tokio::test]
    async fn corrupted_reads_differ_by_one_bit_and_are_counted() {
        let inner: Arc<dyn BlobStore> = Arc::new(crate::ObjectStoreBackend::memory());
        inner.put("k", Bytes::from(vec![0u8; 64])).await.unwrap();
        let config = FaultConfig {
            corrupt_rate: 1.0,
            seed: 3,
            ..FaultConfig::default()
        };
        let store = FaultyStore::new(inner, config);
        let got = store.get("k").await.unwrap();
        let ones: u32 = got.iter().map(|b| b.count_ones()).sum();
        assert_eq!(ones, 1);
        assert_eq!(store.corrupted(), 1);
        assert_eq!(store.injected(), 0);
    }
}
