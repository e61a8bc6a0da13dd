//! Models a remote object store: a fixed latency per request and a shared bandwidth limit.

use crate::blob::{BlobStore, ObjectInfo};
use crate::error::StoreError;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The modelled link.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleConfig {
    /// Added to every request (first byte latency).
    pub latency: Duration,
    /// Bytes per second shared by all requests; `None` for unlimited.
    pub bandwidth: Option<u64>,
}

impl ThrottleConfig {
    /// Parses `LATENCY_MS[,MBIT_PER_S]`, e.g. `20,1000` for 20 ms and 1 Gbit/s.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let ms: f64 = parts
            .next()
            .unwrap_or("")
            .trim()
            .parse()
            .map_err(|_| format!("bad latency in {s:?}"))?;
        let bandwidth = match parts.next() {
            Some(m) => {
                let mbit: f64 = m
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad bandwidth in {s:?}"))?;
                if mbit <= 0.0 {
                    return Err(format!("bandwidth must be positive in {s:?}"));
                }
                Some((mbit * 1e6 / 8.0) as u64)
            }
            None => None,
        };
        if !(0.0..=60_000.0).contains(&ms) {
            return Err(format!("latency out of range in {s:?}"));
        }
        Ok(ThrottleConfig {
            latency: Duration::from_secs_f64(ms / 1000.0),
            bandwidth,
        })
    }
}

/// A [`BlobStore`] that delays requests as a remote link would.
#[derive(Debug)]
pub struct ThrottledStore {
    inner: Arc<dyn BlobStore>,
    config: ThrottleConfig,
    /// When the shared link is next free.
    link_free_at: Mutex<Instant>,
}

impl ThrottledStore {
    /// Slows `inner` down as `config` says.
    pub fn new(inner: Arc<dyn BlobStore>, config: ThrottleConfig) -> Self {
        ThrottledStore {
            inner,
            config,
            link_free_at: Mutex::new(Instant::now()),
        }
    }

    /// Waits the latency, then for `bytes` to cross the shared link.
    async fn transfer(&self, bytes: u64) {
        tokio::time::sleep(self.config.latency).await;
        if let Some(bw) = self.config.bandwidth {
            let done = {
                let mut free = self.link_free_at.lock();
                let start = (*free).max(Instant::now());
                *free = start + Duration::from_secs_f64(bytes as f64 / bw as f64);
                *free
            };
            tokio::time::sleep_until(done).await;
        }
    }
}

#[async_trait]
impl BlobStore for ThrottledStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.transfer(data.len() as u64).await;
        self.inner.put(key, data).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool, StoreError> {
        self.transfer(data.len() as u64).await;
        self.inner.put_if_absent(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let b = self.inner.get(key).await?;
        self.transfer(b.len() as u64).await;
        Ok(b)
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let b = self.inner.get_range(key, range).await?;
        self.transfer(b.len() as u64).await;
        Ok(b)
    }
    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        self.transfer(0).await;
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.transfer(0).await;
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.transfer(0).await;
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        format!(
            "{} (throttled {:?}, {:?} B/s)",
            self.inner.describe(),
            self.config.latency,
            self.config.bandwidth
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_link_specs() {
        let c = ThrottleConfig::parse("20,1000").unwrap();
        assert_eq!(c.latency, Duration::from_millis(20));
        assert_eq!(c.bandwidth, Some(125_000_000));
        assert_eq!(ThrottleConfig::parse("5").unwrap().bandwidth, None);
        assert!(ThrottleConfig::parse("x").is_err());
        assert!(ThrottleConfig::parse("5,0").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn bandwidth_is_shared_and_latency_added() {
        let inner = Arc::new(crate::ObjectStoreBackend::memory());
        inner
            .put("k", Bytes::from(vec![0u8; 1_000_000]))
            .await
            .unwrap();
        // 10 ms latency, 8 Mbit/s = 1 MB/s: two concurrent 1 MB reads take about 2 s.
        let t = ThrottledStore::new(inner, ThrottleConfig::parse("10,8").unwrap());
        let start = Instant::now();
        let (a, b) = tokio::join!(t.get("k"), t.get("k"));
        a.unwrap();
        b.unwrap();
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(2000) && took < Duration::from_millis(2100),
            "{took:?}"
        );
    }
}
