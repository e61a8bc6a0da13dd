//! The read side: FUSE op → chunk cache (memory, then disk) → fetcher → packs → blob
//! store, each entered once. [`reader::ChunkReader`] is the front; [`fetcher::Fetcher`]
//! owns the single-flight table ([`flight`]) and the [`schedule::FetchScheduler`].

pub mod cache;
pub mod fetcher;
pub mod flight;
pub mod histogram;
pub mod inline;
pub mod policy;
mod prefetch;
pub mod reader;
pub mod schedule;
pub mod stats;
pub mod whole;
