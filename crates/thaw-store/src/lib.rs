//! thaw's chunk store: packs of compressed chunks over an object store, verified reads
//! through memory and disk caches, and images, tags and traces on top.
//!
//! The crate is laid out by concern:
//! - [`blob`]: the one storage trait, [`BlobStore`], its backends (the `object_store`
//!   crate), the wrappers that add retry, counting, throttling and faults, and the
//!   conformance suite;
//! - [`pack`]: packs and their indexes, the writer, and every object key;
//! - [`read`]: the read path: memory and disk caches, the single-flight fetcher and the
//!   fetch scheduler, behind [`ChunkReader`];
//! - [`repo`]: the [`Repository`]: images, tags, traces and garbage collection.
//!
//! This crate knows nothing of file trees, FUSE or HTTP.

pub mod blob;
mod buffers;
pub mod error;
pub mod pack;
pub mod read;
pub mod repo;

pub use blob::backend::{open_store, ObjectStoreBackend};
pub use blob::{BlobStore, ObjectInfo};
pub use error::{ReadError, RepoError, StoreError};
pub use pack::store::PackStore;
pub use pack::writer::{PackWriter, WriterConfig, WriterStats};
pub use read::policy::{FetchAround, FetchPolicyStats};
pub use read::reader::{ChunkReader, ReaderConfig};
pub use read::schedule::{FetchClass, SchedulerConfig};
pub use read::stats::{CacheUsage, PrefetchProgress, ReaderStats};
pub use repo::{ImageDocuments, Repository};
