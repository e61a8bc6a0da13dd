//! thaw's format: chunk ids, content-defined chunking, image manifests and pack indexes.
//!
//! This crate does no IO. It turns bytes into typed values and back, and it validates
//! everything it decodes: bad input is a [`FormatError`], never a panic, and no length
//! field makes it allocate more than the input it was given.

pub mod chunker;
pub mod codec;
pub mod config;
pub mod error;
pub mod id;
pub mod manifest;
pub mod pack;
pub mod tag;
pub mod trace;

pub use chunker::{Chunker, ChunkerConfig};
pub use config::ImageConfig;
pub use error::FormatError;
pub use id::{ChunkId, ImageId, PackId};
pub use manifest::{
    ChunkInfo, DirEntry, Extent, Inode, InodeKind, Manifest, Metadata, Timestamp, Xattr, ROOT_INODE,
};
pub use pack::{Compression, PackEntry, PackIndex};

/// The largest chunk the format accepts (the chunker's own maximum is lower).
pub const MAX_CHUNK_LEN: u32 = 16 * 1024 * 1024;
