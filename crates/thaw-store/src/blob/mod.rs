//! The one storage trait every layer and wrapper of thaw speaks, its backends
//! ([`backend`], over the `object_store` crate), the wrappers that add one cross-cutting
//! behaviour each ([`wrap`]), and the conformance suite every backend passes
//! ([`conformance`]).

pub mod backend;
pub mod conformance;
pub mod wrap;

use crate::error::StoreError;
use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::time::SystemTime;

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified: SystemTime,
}

/// A flat key-value object store. Keys are `/`-separated relative paths.
///
/// `put` is atomic: readers see the whole old object or the whole new one. `get_range`
/// returns exactly the bytes asked for or an error. Deleting a missing key succeeds.
#[async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError>;
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError>;
    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError>;
    /// Every object whose key starts with `prefix/` (or everything, for `""`).
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// A human-readable description, e.g. `file:///var/lib/thaw`.
    fn describe(&self) -> String;
}
