//! Local cache tiers for decompressed, verified chunks.

mod buffers;
mod disk;
mod memory;

pub use disk::DiskCache;
pub use memory::MemoryCache;
