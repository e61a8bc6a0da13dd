//! The one place where errors become errno values, with its table under test.

use thaw_store::error::ReadError;

/// Why a filesystem operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such entry")]
    /// No such inode or directory entry (ENOENT).
    NotFound,
    #[error("not a directory")]
    /// A directory operation on something else (ENOTDIR).
    NotADirectory,
    #[error("is a directory")]
    /// A read of a directory (EISDIR).
    IsADirectory,
    #[error("not a symbolic link")]
    /// readlink of something else (EINVAL).
    NotASymlink,
    #[error("no such extended attribute")]
    /// No such extended attribute (ENODATA).
    NoXattr,
    /// The image has no extended attributes at all: telling the kernel so (ENOSYS) makes
    /// it stop asking, where every "no such attribute" would cost a round trip.
    #[error("the image has no extended attributes")]
    NoXattrsInImage,
    #[error("buffer of {given} bytes is smaller than the {needed} needed")]
    /// The caller's buffer cannot hold the answer (ERANGE).
    BufferTooSmall {
        /// The caller's buffer size.
        given: u32,
        /// The size needed.
        needed: usize,
    },
    #[error("the image is read-only")]
    /// A write, or an open for writing (EROFS).
    ReadOnly,
    /// An ioctl: the image's files are plain files with no device behind them (ENOTTY, as
    /// a regular file on a disk filesystem answers `FS_IOC_GETFLAGS` and the like it
    /// does not support).
    #[error("no ioctl on an image file")]
    NoIoctl,
    /// A flush: nothing is ever written, so there is nothing to flush, and telling the
    /// kernel so (ENOSYS) makes it stop sending one on every close.
    #[error("nothing to flush on a read-only image")]
    NothingToFlush,
    /// An opendir: a directory's listing needs no per-open state (it is read by offset
    /// from the immutable manifest), and telling the kernel so (ENOSYS) makes it open
    /// directories itself, with no opendir or releasedir round trip, from then on.
    #[error("directories are listed without an open")]
    StatelessDirectories,
    /// An open once the mount serves a workload reading most of the image from the
    /// kernel's caches: telling the kernel (ENOSYS) makes it open files itself, with no
    /// open or release round trip, for the rest of the mount's life.
    #[error("files are read without an open")]
    OpensNotNeeded,
    #[error("unknown file handle")]
    /// A read through a handle or inode that cannot be read (EBADF).
    BadHandle,
    /// A chunk is shorter than the extent that names it, or missing from a read's
    /// chunks: the image and the store disagree.
    #[error("the chunk of the extent at {extent} is shorter than the extent")]
    ShortChunk {
        /// The extent's offset in its file.
        extent: u64,
    },
    #[error("read timed out after {0:?}")]
    /// The bytes did not arrive within the read timeout (EIO).
    Timeout(std::time::Duration),
    #[error(transparent)]
    /// The chunk could not be read and verified (EIO).
    Read(#[from] std::sync::Arc<ReadError>),
}

/// Maps an error to the errno the kernel returns to the process.
///
/// Everything that means "the bytes could not be produced" (store down, retries used
/// up, deadline passed, integrity failure) is `EIO`: a program must never see wrong
/// bytes, and it cannot act on finer distinctions anyway.
pub fn errno_of(err: &FsError) -> fuser::Errno {
    let code = match err {
        FsError::NotFound => libc::ENOENT,
        FsError::NotADirectory => libc::ENOTDIR,
        FsError::IsADirectory => libc::EISDIR,
        FsError::NotASymlink => libc::EINVAL,
        FsError::NoXattr => libc::ENODATA,
        FsError::NoXattrsInImage => libc::ENOSYS,
        FsError::BufferTooSmall { .. } => libc::ERANGE,
        FsError::ReadOnly => libc::EROFS,
        FsError::BadHandle => libc::EBADF,
        FsError::NoIoctl => libc::ENOTTY,
        FsError::NothingToFlush => libc::ENOSYS,
        FsError::StatelessDirectories => libc::ENOSYS,
        FsError::OpensNotNeeded => libc::ENOSYS,
        FsError::Timeout(_) | FsError::ShortChunk { .. } => libc::EIO,
        FsError::Read(_) => libc::EIO,
    };
    fuser::Errno::from_i32(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use thaw_core::{ChunkId, PackId};
    use thaw_store::error::StoreError;

    #[test]
    fn errno_table() {
        let integrity = ReadError::Integrity {
            chunk: ChunkId::of(b"c"),
            pack: PackId::of(b"p"),
            reason: "bad".into(),
        };
        let fetch = |source: StoreError| ReadError::Fetch {
            chunk: ChunkId::of(b"c"),
            pack: PackId::of(b"p"),
            source: Arc::new(source),
        };
        let down = fetch(StoreError::Deadline {
            op: "get_range",
            key: "k".into(),
            after: Duration::from_secs(1),
            attempts: 3,
            last: "down".into(),
        });
        let missing_pack = fetch(StoreError::NotFound {
            key: "packs/x.pack".into(),
        });
        let table: Vec<(FsError, i32)> = vec![
            (FsError::NotFound, libc::ENOENT),
            (FsError::NotADirectory, libc::ENOTDIR),
            (FsError::IsADirectory, libc::EISDIR),
            (FsError::NotASymlink, libc::EINVAL),
            (FsError::NoXattr, libc::ENODATA),
            (FsError::NoXattrsInImage, libc::ENOSYS),
            (
                FsError::BufferTooSmall {
                    given: 1,
                    needed: 2,
                },
                libc::ERANGE,
            ),
            (FsError::ReadOnly, libc::EROFS),
            (FsError::NothingToFlush, libc::ENOSYS),
            (FsError::StatelessDirectories, libc::ENOSYS),
            (FsError::OpensNotNeeded, libc::ENOSYS),
            (FsError::BadHandle, libc::EBADF),
            (FsError::Timeout(Duration::from_secs(1)), libc::EIO),
            (FsError::ShortChunk { extent: 0 }, libc::EIO),
            (FsError::Read(Arc::new(integrity)), libc::EIO),
            (FsError::Read(Arc::new(down)), libc::EIO),
            (FsError::Read(Arc::new(missing_pack)), libc::EIO),
            (
                FsError::Read(Arc::new(ReadError::UnknownChunk(ChunkId::of(b"u")))),
                libc::EIO,
            ),
            (
                FsError::Read(Arc::new(ReadError::Abandoned(ChunkId::of(b"a")))),
                libc::EIO,
            ),
        ];
        for (err, code) in table {
            assert_eq!(errno_of(&err), fuser::Errno::from_i32(code), "{err}");
        }
    }
}
