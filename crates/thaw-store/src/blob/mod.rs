//! The one storage trait every layer and wrapper of thaw speaks, its backends
//! ([`backend`], over the `object_store` crate), the wrappers that add one cross-cutting
//! behaviour each ([`wrap`]), and the conformance suite every backend passes
//! ([`conformance`]).

pub mod backend;
pub mod conformance;
pub mod open_files;
pub mod wrap;

use crate::error::StoreError;
use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::time::SystemTime;

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub last_modified: SystemTime,
}

/// A flat key-value object store. Keys are `/`-separated relative paths.
///
/// `put` is atomic: readers see the whole old object or the whole new one. `get_range`
/// returns exactly the bytes asked for or an error. Deleting a missing key succeeds.
#[async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// Writes an object whole (atomically replacing any old one).
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError>;
    /// Writes an object only if no object has `key`; returns whether it was written. The
    /// check and the write are one atomic step in the backend (`PutMode::Create`), so of
    /// two writers racing for a key exactly one wins. A retried create whose first attempt
    /// landed reports `false`: the object exists either way.
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool, StoreError>;
    /// Reads a whole object.
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;
    /// Reads exactly `range` of an object.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError>;
    /// An object's size and time, without its bytes.
    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError>;
    /// Every object whose key starts with `prefix/` (or everything, for `""`).
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;
    /// Removes an object; a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// A human-readable description, e.g. `file:///var/lib/thaw`.
    fn describe(&self) -> String;
    /// The directory holding the objects, for a plain local-directory store (wrappers
    /// that only count, retry or cache pass it on; one that models a remote or failing
    /// store does not). A reader then knows its chunks are already on a local disk.
    fn local_dir(&self) -> Option<std::path::PathBuf> {
        None
    }
}
