//! thaw's chunk store: packs of compressed chunks over an object store, verified reads
//! through memory and disk caches, and images and tags on top.
//!
//! Everything talks to storage through one small trait, [`BlobStore`]. Retry, metrics,
//! throttling and fault injection are wrappers around it ([`wrap`]); the backends in
//! [`backend`] adapt the `object_store` crate. This crate knows nothing of FUSE or HTTP.

pub mod backend;
pub mod blob;
pub mod conformance;
pub mod error;
pub mod packs;
pub mod read;
pub mod repo;
pub mod wrap;
pub mod writer;

pub use backend::{open_store, ObjectStoreBackend};
pub use blob::{BlobStore, ObjectInfo};
pub use error::{ReadError, RepoError, StoreError};
pub use packs::PackStore;
pub use read::reader::{ChunkReader, ReaderConfig};
pub use read::schedule::{FetchClass, SchedulerConfig};
pub use read::stats::{CacheUsage, PrefetchProgress, ReaderStats};
pub use repo::Repository;
pub use writer::{PackWriter, WriterConfig, WriterStats};
