//! Local cache tiers for decompressed, verified chunks.

mod direct;
mod disk;
mod memory;

pub use disk::DiskCache;
pub use memory::MemoryCache;
