//! thaw's lazy FUSE filesystem: an image from the chunk store, mounted read-only, that
//! fetches only the chunks a process reads (through the store's memory and disk caches),
//! with optional overlayfs on top for writes.
//!
//! Knows FUSE and mounting; knows nothing of HTTP or JSON. Every error becomes an errno
//! in exactly one place, [`errno::errno_of`].

pub mod errno;
pub mod files;
mod fs;
mod inodes;
pub mod mount;
pub mod opens;
pub mod passthrough;
mod reads;
pub mod registry;
pub mod session;
pub mod stats;
pub mod takeover;
mod trace;

pub use fs::{FsConfig, ThawFs};
pub use mount::{mount, unmount, MountHandle, MountOptions, DEFAULT_KERNEL_READAHEAD};
pub use stats::{FsStats, PassthroughSnapshot, StatsSnapshot};
