//! The few file system calls std does not wrap: mknod, and timestamps without following
//! symlinks, through rustix (no `unsafe`). Everything else uses std and the `xattr` crate.

use rustix::fs::{AtFlags, FileType, Mode, Timestamps, CWD};
use std::io;
use std::path::Path;
use thaw_core::Timestamp;

/// Creates a device node, FIFO or socket. `mode` includes the file type bits.
pub fn mknod(path: &Path, mode: u32, rdev: u64) -> io::Result<()> {
    let kind = FileType::from_raw_mode(mode);
    let perms = Mode::from_raw_mode(mode & 0o7777);
    rustix::fs::mknodat(CWD, path, kind, perms, rdev).map_err(io::Error::from)
}

/// Sets atime and mtime (both to `mtime`) without following a symlink.
pub fn set_times_nofollow(path: &Path, mtime: Timestamp) -> io::Result<()> {
    let ts = rustix::fs::Timespec {
        tv_sec: mtime.sec,
        tv_nsec: i64::from(mtime.nsec),
    };
    let times = Timestamps {
        last_access: ts,
        last_modification: ts,
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(io::Error::from)
}
