//! The one place where errors become errno values, with its table under test.

use thaw_store::{ChunkError, StoreError};

/// Why a filesystem operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such entry")]
    NotFound,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("not a symbolic link")]
    NotASymlink,
    #[error("no such extended attribute")]
    NoXattr,
    /// The image has no extended attributes at all: telling the kernel so (ENOSYS) makes
    /// it stop asking, where every "no such attribute" would cost a round trip.
    #[error("the image has no extended attributes")]
    NoXattrsInImage,
    #[error("buffer of {given} bytes is smaller than the {needed} needed")]
    BufferTooSmall { given: u32, needed: usize },
    #[error("the image is read-only")]
    ReadOnly,
    #[error("unknown file handle")]
    BadHandle,
    #[error("read timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error(transparent)]
    Chunk(#[from] std::sync::Arc<ChunkError>),
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
        FsError::Timeout(_) => libc::EIO,
        FsError::Chunk(e) => match &**e {
            ChunkError::Store(StoreError::NotFound { .. }) => libc::EIO,
            _ => libc::EIO,
        },
    };
    fuser::Errno::from_i32(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use thaw_core::{ChunkId, PackId};

    #[test]
    fn errno_table() {
        let integrity = ChunkError::Integrity {
            chunk: ChunkId::of(b"c"),
            pack: PackId::of(b"p"),
            reason: "bad".into(),
        };
        let down = ChunkError::Store(StoreError::Deadline {
            op: "get_range",
            key: "k".into(),
            after: Duration::from_secs(1),
            attempts: 3,
            last: "down".into(),
        });
        let missing_pack = ChunkError::Store(StoreError::NotFound {
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
            (FsError::BadHandle, libc::EBADF),
            (FsError::Timeout(Duration::from_secs(1)), libc::EIO),
            (FsError::Chunk(Arc::new(integrity)), libc::EIO),
            (FsError::Chunk(Arc::new(down)), libc::EIO),
            (FsError::Chunk(Arc::new(missing_pack)), libc::EIO),
            (
                FsError::Chunk(Arc::new(ChunkError::UnknownChunk(ChunkId::of(b"u")))),
                libc::EIO,
            ),
        ];
        for (err, code) in table {
            assert_eq!(errno_of(&err), fuser::Errno::from_i32(code), "{err}");
        }
    }
}
